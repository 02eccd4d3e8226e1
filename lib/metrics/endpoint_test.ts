import assert from "node:assert/strict";
import { serveMetrics } from "./endpoint.ts";

async function scrape(port: number): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
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
