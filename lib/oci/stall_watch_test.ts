/**
 * A registry that stops sending (a hung peer, a dead connection nobody reset) no longer holds
 * a read forever: the attempt is given up after EROFS_OCI_REGISTRY_STALL_S without a byte,
 * asked again, and the read completes with the right bytes.
 */
import assert from "node:assert/strict";
import { RegistryClient } from "./client.ts";
import { digestOf } from "./digest.ts";
import { setTextLogSink } from "../log.ts";
import { OciError } from "../errors.ts";
import { setStallMs } from "./stall_watch.ts";
import { serveStallingBlob } from "../../tests/_support/stalling_blob_server.ts";

const BLOB = new Uint8Array(200_000).map((_, i) => (i * 13 + (i >> 9)) & 0xff);
const DIGEST = digestOf(BLOB);

/** Serves BLOB's ranges; the first request does what `first` says, the others answer. */
function registry(first: "no-reply" | "stop-mid-body") {
  let requests = 0;
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    requests++;
    const [, a, b] = /^bytes=(\d+)-(\d+)$/.exec(req.headers.get("range") ?? "")!;
    const body = BLOB.slice(Number(a), Number(b) + 1);
    const headers = {
      "content-range": `bytes ${a}-${b}/${BLOB.length}`,
      "content-length": String(body.length),
    };
    if (requests > 1) return new Response(body, { status: 206, headers });
    if (first === "no-reply") await released; // headers never come (until the test ends)
    return new Response(
      new ReadableStream({
        async start(controller) {
          controller.enqueue(body.slice(0, 1000));
          await released; // then nothing more
          controller.close();
        },
      }),
      { status: 206, headers },
    );
  });
  return {
    host: `127.0.0.1:${server.addr.port}`,
    requests: () => requests,
    async [Symbol.asyncDispose]() {
      release();
      await server.shutdown();
    },
  };
}

for (const first of ["no-reply", "stop-mid-body"] as const) {
  Deno.test(`registry stall (${first}): the attempt is given up after the stall time, asked again, said once`, async () => {
    const warnings: string[] = [];
    setTextLogSink((level, text) => level === "warn" && warnings.push(text));
    setStallMs(1000);
    try {
      await using server = registry(first);
      const client = new RegistryClient(server.host, { deadlineMs: 20_000, plainHttp: true });
      const startedMs = Date.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const bytes = await Promise.race([
        client.readBlobRange("app", DIGEST, 5000, 100_000),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error("the read waited 10 s")), 10_000);
        }),
      ]).finally(() => clearTimeout(timer));
      assert.deepEqual(bytes, BLOB.slice(5000, 105_000));
      assert.equal(server.requests(), 2);
      assert(Date.now() - startedMs < 10_000, "given up after about a second, not waited out");
      assert.equal(warnings.length, 1, warnings.join("\n"));
      assert.match(
        warnings[0],
        first === "no-reply"
          ? /sent no reply to a GET of sha256:[0-9a-f]{64} for 1 s; asking again/
          // "sent only": the 1000 bytes came late enough to count in the watched second.
          : /(stopped sending for 1 s|sent only 1000 bytes in 1 s) \(GET of sha256:[0-9a-f]{64}, 1000 of 100000 bytes in\); asking again/,
      );
      client.close?.();
    } finally {
      setStallMs(undefined);
      setTextLogSink(undefined);
    }
  });
}

Deno.test("registry stall: a wait the registry asked for (429, Retry-After) is no stall", async () => {
  const warnings: string[] = [];
  setTextLogSink((level, text) => level === "warn" && warnings.push(text));
  setStallMs(1000);
  let requests = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    requests++;
    if (requests === 1) {
      return new Response("slow down", { status: 429, headers: { "retry-after": "3" } });
    }
    const [, a, b] = /^bytes=(\d+)-(\d+)$/.exec(req.headers.get("range") ?? "")!;
    return new Response(BLOB.slice(Number(a), Number(b) + 1), {
      status: 206,
      headers: { "content-range": `bytes ${a}-${b}/${BLOB.length}` },
    });
  });
  try {
    const client = new RegistryClient(`127.0.0.1:${server.addr.port}`, {
      deadlineMs: 20_000,
      plainHttp: true,
    });
    assert.deepEqual(await client.readBlobRange("app", DIGEST, 0, 1000), BLOB.slice(0, 1000));
    assert.equal(requests, 2, "the 429, then the answer: no stalled attempt in between");
    assert.deepEqual(warnings, []);
  } finally {
    await server.shutdown();
    setStallMs(undefined);
    setTextLogSink(undefined);
  }
});

Deno.test("registry stall: any GET (a manifest) that gets no reply is asked again", async () => {
  setStallMs(1000);
  let requests = 0;
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async () => {
    if (++requests === 1) await released; // accepted, never answered (until the test ends)
    return Response.json({ schemaVersion: 2 });
  });
  try {
    const client = new RegistryClient(`127.0.0.1:${server.addr.port}`, {
      deadlineMs: 20_000,
      plainHttp: true,
    });
    const startedMs = Date.now();
    const response = await client.request({
      method: "GET",
      path: "/v2/app/manifests/v1",
      scope: "repository:app:pull",
    });
    assert.deepEqual(await response.json(), { schemaVersion: 2 });
    assert.equal(requests, 2);
    assert(Date.now() - startedMs < 10_000, "given up after about a second");
  } finally {
    release();
    await server.shutdown();
    setStallMs(undefined);
  }
});

Deno.test("registry stall: a download whose body stops is resumed with a Range request", async () => {
  setStallMs(1000);
  const { host, ranges, release, server } = serveStallingBlob(BLOB);
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-stall-pull-" });
  try {
    const client = new RegistryClient(host, { deadlineMs: 20_000, plainHttp: true });
    const startedMs = Date.now();
    await client.downloadBlob("app", DIGEST, `${dir}/out`);
    assert.deepEqual(await Deno.readFile(`${dir}/out`), BLOB);
    assert.deepEqual(ranges, ["", "bytes=1000-"], "resumed where the stalled body stopped");
    assert(Date.now() - startedMs < 15_000, "given up on the stalled body, not waited out");
  } finally {
    release();
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
    setStallMs(undefined);
  }
});

Deno.test("registry stall: a status no Response can carry (600) is one line, not a crash", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    for await (const conn of listener) {
      await conn.read(new Uint8Array(4096));
      await conn.write(new TextEncoder().encode("HTTP/1.1 600 Odd\r\ncontent-length: 0\r\n\r\n"));
      conn.close();
    }
  })();
  try {
    const client = new RegistryClient(`127.0.0.1:${(listener.addr as Deno.NetAddr).port}`, {
      deadlineMs: 5_000,
      plainHttp: true,
    });
    await assert.rejects(
      client.request({ method: "GET", path: "/v2/app/manifests/v1", scope: "repository:app:pull" }),
      (error: unknown) =>
        error instanceof OciError && /answered with HTTP status 600/.test(error.message),
    );
  } finally {
    listener.close();
    await serving.catch(() => {});
  }
});

Deno.test("registry stall: a token server that never answers is given up with one line", async () => {
  setStallMs(1000);
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  const tokens = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async () => {
    await released;
    return Response.json({ token: "t" });
  });
  const realm = `http://127.0.0.1:${tokens.addr.port}/token`;
  const registry = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () =>
      new Response("{}", {
        status: 401,
        headers: { "www-authenticate": `Bearer realm="${realm}",service="reg"` },
      }),
  );
  try {
    const client = new RegistryClient(`127.0.0.1:${registry.addr.port}`, {
      deadlineMs: 20_000,
      plainHttp: true,
    });
    const startedMs = Date.now();
    await assert.rejects(
      client.request({ method: "GET", path: "/v2/app/manifests/v1", scope: "repository:app:pull" }),
      (error: unknown) =>
        error instanceof OciError && /token server .* sent no reply for 1 s/.test(error.message),
    );
    assert(Date.now() - startedMs < 10_000, "given up, not waited out");
  } finally {
    release();
    await tokens.shutdown();
    await registry.shutdown();
    setStallMs(undefined);
  }
});

for (const mode of ["stall", "interrupt"] as const) {
  Deno.test(`registry ${mode} of a body being read works after garbage collections`, async () => {
    // A child with gc() exposed: fetch's own abort of a body in progress did not survive one.
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--v8-flags=--expose-gc",
        new URL("../../tests/_support/stall_gc_child.ts", import.meta.url).href,
        mode,
      ],
      env: { EROFS_OCI_REGISTRY_STALL_S: "1" },
      stdout: "piped",
      stderr: "piped",
    });
    const out = await child.output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert(out.success, stderr);
    const result = JSON.parse(new TextDecoder().decode(out.stdout));
    if (mode === "stall") {
      assert.equal(result.outcome, "complete", stderr);
      assert.deepEqual(result.ranges, ["", "bytes=1000-"], "resumed where the body stopped");
    } else {
      assert.match(result.outcome, /^failed: interrupted/, stderr);
      assert.deepEqual(result.ranges, [""]);
    }
    assert(result.ms < 10_000, `took ${result.ms} ms: waited for the peer instead`);
  });
}

Deno.test("registry stall: a body dripping a few bytes a second counts as stalled", async () => {
  setStallMs(1000);
  const controllers = new Set<ReadableStreamDefaultController<Uint8Array>>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, () => {
    let timer: ReturnType<typeof setInterval>;
    return new Response(
      new ReadableStream<Uint8Array>({
        start(controller) {
          controllers.add(controller);
          // A byte every 100 ms: never 1 s without one, and never done.
          timer = setInterval(() => {
            try {
              controller.enqueue(new Uint8Array([0x20]));
            } catch {
              clearInterval(timer); // the client went
            }
          }, 100);
        },
        cancel() {
          clearInterval(timer);
        },
      }),
      { headers: { "content-type": "application/json" } },
    );
  });
  try {
    const client = new RegistryClient(`127.0.0.1:${server.addr.port}`, {
      deadlineMs: 20_000,
      plainHttp: true,
    });
    const startedMs = Date.now();
    const response = await client.request({
      method: "GET",
      path: "/v2/app/manifests/v1",
      scope: "repository:app:pull",
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const failure = await Promise.race([
      response.arrayBuffer().then(() => undefined, (error) => error),
      new Promise((resolve) => timer = setTimeout(() => resolve("still dripping at 10 s"), 10_000)),
    ]);
    clearTimeout(timer);
    assert(failure instanceof OciError, String(failure));
    assert.match(failure.message, /^127\.0\.0\.1:\d+ sent only \d+ bytes in 1 s$/);
    assert(Date.now() - startedMs < 5_000, `took ${Date.now() - startedMs} ms`);
  } finally {
    for (const controller of controllers) {
      try {
        controller.close();
      } catch { /* already ended */ }
    }
    await server.shutdown();
    setStallMs(undefined);
  }
});

Deno.test("registry stall: slow but never silent small replies are no stall", async () => {
  setStallMs(1000);
  const body = new TextEncoder().encode(JSON.stringify({ schemaVersion: 2, pad: "x".repeat(560) }));
  const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
  // Headers after 0.9 s, the body 0.6 s later: no gap of a stall time, and far fewer bytes
  // than a window asks of a large body (the wait for the headers is not the body's).
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async () => {
    await pause(900);
    return new Response(
      new ReadableStream<Uint8Array>({
        async start(controller) {
          await pause(600);
          controller.enqueue(body);
          controller.close();
        },
      }),
      { headers: { "content-length": String(body.length) } },
    );
  });
  try {
    const client = new RegistryClient(`127.0.0.1:${server.addr.port}`, {
      deadlineMs: 20_000,
      plainHttp: true,
    });
    const response = await client.request({
      method: "GET",
      path: "/v2/app/manifests/v1",
      scope: "repository:app:pull",
    });
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), body);
  } finally {
    await server.shutdown();
    setStallMs(undefined);
  }
});

Deno.test("registry stall: a body that keeps coming too slowly to finish is given up at the deadline", async () => {
  const warnings: string[] = [];
  setTextLogSink((level, text) => level === "warn" && warnings.push(text));
  setStallMs(1000);
  const big = new Uint8Array(1 << 20);
  const stop = new AbortController();
  // 40 KiB/s: enough for the stall rule's 32 KiB per second, 25 s for the MiB asked for.
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () =>
      new Response(
        new ReadableStream({
          async pull(controller) {
            await new Promise((resolve) => setTimeout(resolve, 100));
            if (stop.signal.aborted) controller.close();
            else controller.enqueue(new Uint8Array(4096));
          },
        }),
        {
          status: 206,
          headers: {
            "content-range": `bytes 0-${big.length - 1}/${big.length}`,
            "content-length": String(big.length),
          },
        },
      ),
  );
  try {
    const client = new RegistryClient(`127.0.0.1:${server.addr.port}`, {
      deadlineMs: 1500,
      plainHttp: true,
    });
    const startedMs = Date.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    await assert.rejects(
      Promise.race([
        client.readBlobRange("app", digestOf(big), 0, big.length),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error("the read went on for 10 s")), 10_000);
        }),
      ]).finally(() => clearTimeout(timer)),
      (error: Error) =>
        error instanceof OciError && /only \d+ of 1048576 bytes/.test(error.message),
    );
    assert(Date.now() - startedMs < 8_000);
    assert.match(warnings.join("\n"), /sent only \d+ bytes in \d+ s/);
    client.close?.();
  } finally {
    stop.abort();
    await server.shutdown();
    setStallMs(undefined);
    setTextLogSink(undefined);
  }
});
