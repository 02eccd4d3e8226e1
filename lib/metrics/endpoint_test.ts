import assert from "node:assert/strict";
import { type MetricsEndpoint, serveMetrics } from "./endpoint.ts";

async function scrape(port: number, host = "127.0.0.1"): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const hostLine = host ? `Host: ${host}\r\n` : "";
    await conn.write(new TextEncoder().encode(`GET /metrics HTTP/1.1\r\n${hostLine}\r\n`));
    return await new Response(conn.readable).text();
  } catch (error) {
    return `failed: ${(error as Error).message}`;
  }
}

Deno.test("metrics endpoint: 70 connections that never send a request do not lock scrapes out", async () => {
  const endpoint = serveMetrics(
    { transport: "tcp", hostname: "127.0.0.1", port: 0 },
    () => Promise.resolve("erofs_oci_up 1\n"),
  );
  const port = Number(endpoint.address.slice(endpoint.address.lastIndexOf(":") + 1));
  const idle: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 70; i++) idle.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    await new Promise((resolve) => setTimeout(resolve, 1200));
    const answered = await scrape(port);
    assert.match(answered, /^HTTP\/1\.1 200 OK\r\n[\s\S]*erofs_oci_up 1\n$/);
    // A head sent a byte at a time is still one request.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    for (const byte of new TextEncoder().encode("GET / HTTP/1.0\n\n")) {
      await conn.write(new Uint8Array([byte]));
    }
    assert.match(await new Response(conn.readable).text(), /^HTTP\/1\.1 200 OK/);
  } finally {
    for (const conn of idle) {
      try {
        conn.close();
      } catch { /* closed by the endpoint */ }
    }
    await endpoint.shutdown();
  }
});

function portOf(endpoint: MetricsEndpoint): number {
  return Number(endpoint.address.slice(endpoint.address.lastIndexOf(":") + 1));
}

Deno.test("metrics endpoint: scrapes within the reuse window share one render", async () => {
  let renders = 0;
  let fail = true;
  let release: () => void = () => {};
  let held: Promise<void> | undefined;
  const endpoint = serveMetrics(
    { transport: "tcp", hostname: "127.0.0.1", port: 0 },
    async () => {
      renders++;
      await held;
      // The first render fails: a failure is not reused.
      if (fail) {
        fail = false;
        throw new Error("a mount's server did not answer");
      }
      return `erofs_oci_render ${renders}\n`;
    },
    60_000, // longer than the test: only what it does decides what is rendered
  );
  const port = portOf(endpoint);
  try {
    assert.match(await scrape(port), /^HTTP\/1\.1 500 /);
    assert.equal(renders, 1);
    // Three at once while the render runs: they wait for that one.
    held = new Promise((resolve) => release = resolve);
    const concurrent = [scrape(port), scrape(port), scrape(port)];
    while (renders < 2) await new Promise((resolve) => setTimeout(resolve, 10));
    release();
    for (const answered of await Promise.all(concurrent)) {
      assert.match(answered, /^HTTP\/1\.1 200 OK\r\n[\s\S]*erofs_oci_render 2\n$/);
    }
    // Later scrapes within the window get the same text, rendered once.
    assert.match(await scrape(port), /erofs_oci_render 2\n$/);
    assert.equal(renders, 2);
  } finally {
    release();
    await endpoint.shutdown();
  }
});

Deno.test("metrics endpoint: a TCP scrape for a host name other than this host's is refused", async () => {
  const endpoint = serveMetrics(
    { transport: "tcp", hostname: "127.0.0.1", port: 0 },
    () => Promise.resolve("erofs_oci_up 1\n"),
  );
  const port = portOf(endpoint);
  try {
    // A page whose name was made to resolve to 127.0.0.1 (DNS rebinding).
    for (
      const host of [
        "rebind.example",
        `rebind.example:${port}`,
        `127.0.0.1.evil.example`,
        // Anyone may point a name under their own domain that starts with this host's name.
        `${Deno.hostname()}.rebind.example`,
        `${Deno.hostname()}.rebind.example:${port}`,
      ]
    ) {
      assert.match(await scrape(port, host), /^HTTP\/1\.1 403 /, host);
    }
    for (
      const host of [
        `127.0.0.1:${port}`,
        `[::1]:${port}`,
        "localhost",
        `LocalHost:${port}`,
        Deno.hostname(),
        "", // no Host header (HTTP/1.0)
      ]
    ) {
      assert.match(await scrape(port, host), /^HTTP\/1\.1 200 OK/, host || "no Host");
    }
  } finally {
    await endpoint.shutdown();
  }
});
