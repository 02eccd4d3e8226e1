/**
 * RegistryClient against small misbehaving HTTP servers on loopback: the exact protocol faults
 * (ignored ranges, cut bodies, short 206s, 5xx, redirects, expiring tokens) that a real registry
 * only shows now and then. The CLI tests in tests/ run the same client against docker-registry.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { OciError } from "../errors.ts";
import { RegistryClient } from "./client.ts";
import { digestOf } from "./digest.ts";
import { RegistryBlob } from "./registry_blob.ts";
import { readLimited } from "./auth.ts";

const BLOB = new Uint8Array(300_000).map((_, i) => (i * 7 + (i >> 8)) & 0xff);
const DIGEST = digestOf(BLOB);
const BLOB_PATH = `/v2/app/blobs/${DIGEST}`;

interface Seen {
  path: string;
  range: string | null;
  authorization: string | null;
}

/** A loopback HTTP server; `handle` gets each request and the log of those before it. */
function serve(handle: (request: Request, seen: Seen[]) => Response | Promise<Response>) {
  const seen: Seen[] = [];
  const server = Deno.serve(
    {
      hostname: "127.0.0.1",
      port: 0,
      onListen: () => {},
      onError: () => new Response(null, { status: 599 }),
    },
    (request) => {
      const url = new URL(request.url);
      const entry = {
        path: url.pathname + url.search,
        range: request.headers.get("range"),
        authorization: request.headers.get("authorization"),
      };
      seen.push(entry);
      return handle(request, seen);
    },
  );
  return {
    host: `127.0.0.1:${server.addr.port}`,
    seen,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

function parseRange(header: string | null): [number, number] | undefined {
  const m = header && /^bytes=(\d+)-(\d*)$/.exec(header);
  if (!m) return undefined;
  return [Number(m[1]), m[2] === "" ? BLOB.length - 1 : Math.min(Number(m[2]), BLOB.length - 1)];
}

/** A 206 for the requested range, optionally cut after `cutAfter` body bytes. */
function partial(request: Request, cutAfter?: number, lastOverride?: number): Response {
  const [first, requestedLast] = parseRange(request.headers.get("range"))!;
  const last = lastOverride ?? requestedLast;
  const body = BLOB.slice(first, last + 1);
  const headers = {
    "content-range": `bytes ${first}-${last}/${BLOB.length}`,
    "content-length": String(body.length),
  };
  if (cutAfter === undefined) return new Response(body, { status: 206, headers });
  return new Response(cutStream(body, cutAfter), { status: 206, headers });
}

/** A body stream that sends `cutAfter` bytes and then fails, which aborts the connection. */
function cutStream(body: Uint8Array, cutAfter: number): ReadableStream<Uint8Array> {
  return new ReadableStream({
    async start(controller) {
      controller.enqueue(body.slice(0, cutAfter));
      await new Promise((r) => setTimeout(r, 30));
      controller.error(new Error("cut"));
    },
  });
}

function client(host: string, options: ConstructorParameters<typeof RegistryClient>[1] = {}) {
  return new RegistryClient(host, { deadlineMs: 10_000, ...options });
}

Deno.test("readBlobRange: one ranged GET, exact bytes", async () => {
  await using server = serve((request) => partial(request));
  const bytes = await client(server.host).readBlobRange("app", DIGEST, 1000, 5000);
  assert.deepEqual(bytes, BLOB.slice(1000, 6000));
  assert.deepEqual(server.seen, [{
    path: BLOB_PATH,
    range: "bytes=1000-5999",
    authorization: null,
  }]);
  assert.deepEqual(await client(server.host).readBlobRange("app", DIGEST, 5, 0), new Uint8Array(0));
});

Deno.test("readBlobRange: a 200 that ignores the range is skipped to the offset", async () => {
  await using server = serve(() => new Response(BLOB, { status: 200 }));
  const bytes = await client(server.host).readBlobRange("app", DIGEST, 250_000, 1234);
  assert.deepEqual(bytes, BLOB.slice(250_000, 251_234));
  await assert.rejects(
    client(server.host).readBlobRange("app", DIGEST, BLOB.length - 10, 20),
    /beyond the end/,
  );
});

Deno.test("readBlobRange: a cut body is resumed from the bytes received", async () => {
  await using server = serve((request, seen) =>
    partial(request, seen.length === 1 ? 70_000 : undefined)
  );
  const bytes = await client(server.host).readBlobRange("app", DIGEST, 10_000, 200_000);
  assert.deepEqual(bytes, BLOB.slice(10_000, 210_000));
  assert.equal(server.seen.length, 2);
  const resumedAt = parseRange(server.seen[1].range)![0];
  assert.ok(resumedAt > 10_000 && resumedAt <= 80_000, `resumed at ${resumedAt}`);
  assert.equal(parseRange(server.seen[1].range)![1], 209_999);
});

Deno.test("readBlobRange: a short 206 is continued, 5xx retried", async () => {
  await using server = serve((request, seen) => {
    if (seen.length <= 2) return new Response("busy", { status: 503 });
    const [first] = parseRange(request.headers.get("range"))!;
    return partial(request, undefined, first + 999); // 1000 bytes per answer
  });
  const bytes = await client(server.host).readBlobRange("app", DIGEST, 0, 3500);
  assert.deepEqual(bytes, BLOB.slice(0, 3500));
  assert.deepEqual(server.seen.map((s) => s.range), [
    "bytes=0-3499",
    "bytes=0-3499",
    "bytes=0-3499",
    "bytes=1000-3499",
    "bytes=2000-3499",
    "bytes=3000-3499",
  ]);
});

Deno.test("readBlobRange: errors are one-line OciErrors, never short data", async () => {
  await using notFound = serve(() => new Response("{}", { status: 404 }));
  await assert.rejects(client(notFound.host).readBlobRange("app", DIGEST, 0, 10), (e: unknown) => {
    assert.ok(e instanceof OciError);
    assert.match(e.message, /blob not found: 127\.0\.0\.1:\d+\/app@sha256:[0-9a-f]{64} \(404\)/);
    assert.equal(e.status, 404);
    return true;
  });
  await using badRange = serve(() =>
    new Response(BLOB.slice(0, 10), {
      status: 206,
      headers: { "content-range": "bytes 5-14/300000" },
    })
  );
  await assert.rejects(client(badRange.host).readBlobRange("app", DIGEST, 0, 10), /Content-Range/);
  await using alwaysCut = serve((request) => partial(request, 0));
  await assert.rejects(
    client(alwaysCut.host, { maxAttempts: 3 }).readBlobRange("app", DIGEST, 0, 1000),
    /only 0 of 1000 bytes/,
  );
  await using always500 = serve(() => new Response("no", { status: 500 }));
  await assert.rejects(
    client(always500.host, { maxAttempts: 2 }).readBlobRange("app", DIGEST, 0, 10),
    /answered 500/,
  );
  await using tooFar = serve(() => new Response(null, { status: 416 }));
  await assert.rejects(client(tooFar.host).readBlobRange("app", DIGEST, 0, 10), /beyond the end/);
  await assert.rejects(
    client("127.0.0.1:1", { maxAttempts: 2 }).readBlobRange("app", DIGEST, 0, 10),
    /cannot reach registry 127\.0\.0\.1:1/,
  );
  // Reached, with headers too large to read: not "cannot reach".
  await using bigHead = serve(() =>
    new Response("{}", { headers: { "x-big": "a".repeat(1 << 20) } })
  );
  await assert.rejects(
    client(bigHead.host, { maxAttempts: 2 }).readBlobRange("app", DIGEST, 0, 10),
    /^OciError: registry 127\.0\.0\.1:\d+ sent a reply that cannot be read: message head is too large$/,
  );
});

Deno.test("readBlobRange: property: any mix of faults still gives the exact bytes", async () => {
  // Each answer is chosen by the server from a generated script: exact 206, short 206, a 200
  // ignoring the range, a cut body or a 503.
  type Answer = "exact" | "short" | "whole" | "cut" | "busy";
  let script: Answer[] = [];
  await using server = serve((request) => {
    const answer = script.shift() ?? "exact";
    const [first, last] = parseRange(request.headers.get("range"))!;
    switch (answer) {
      case "exact":
        return partial(request);
      case "short":
        return partial(request, undefined, first + Math.floor((last - first) / 2));
      case "whole":
        return new Response(BLOB, { status: 200 });
      case "cut":
        return partial(request, Math.floor((last - first + 1) / 3));
      case "busy":
        return new Response(null, { status: 503 });
    }
  });
  const c = client(server.host, { maxAttempts: 20 });
  await fc.assert(
    fc.asyncProperty(
      fc.nat(BLOB.length - 1).chain((offset) =>
        fc.tuple(
          fc.constant(offset),
          fc.integer({ min: 1, max: Math.min(60_000, BLOB.length - offset) }),
        )
      ),
      fc.array(fc.constantFrom<Answer>("exact", "short", "whole", "cut", "busy"), { maxLength: 4 }),
      async ([offset, length], answers) => {
        script = [...answers];
        const bytes = await c.readBlobRange("app", DIGEST, offset, length);
        assert.equal(bytes.length, length);
        assert.deepEqual(bytes, BLOB.slice(offset, offset + length));
      },
    ),
    { numRuns: 40 },
  );
});

/** A token server + registry pair speaking the distribution token protocol. */
function tokenAuth(options: { expiresIn?: number; password?: string } = {}) {
  let issued = 0;
  const valid = new Set<string>();
  const tokenServer = serve((request) => {
    const expected = `Basic ${btoa(`user:${options.password ?? "pw"}`)}`;
    if (request.headers.get("authorization") !== expected) {
      return new Response("no", { status: 401 });
    }
    const token = `t${++issued}`;
    valid.add(token);
    return Response.json({ token, expires_in: options.expiresIn });
  });
  return { tokenServer, valid, issued: () => issued };
}

function bearerRegistry(
  tokenServerHost: string,
  valid: Set<string>,
  answer: (request: Request) => Response,
) {
  return serve((request) => {
    const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
    if (!token || !valid.has(token)) {
      return new Response("{}", {
        status: 401,
        headers: {
          "www-authenticate":
            `Bearer realm="http://${tokenServerHost}/token",service="reg",scope="repository:app:pull"`,
        },
      });
    }
    return answer(request);
  });
}

Deno.test("auth: Bearer token per scope, refreshed when it expires or is rejected", async () => {
  const { tokenServer, valid, issued } = tokenAuth({ expiresIn: 1 });
  await using _tokens = tokenServer;
  await using registry = bearerRegistry(tokenServer.host, valid, (request) => partial(request));
  const c = client(registry.host, { credentials: { username: "user", password: "pw" } });
  const blob = new RegistryBlob(c, "app", {
    index: 0,
    digest: DIGEST,
    sizeBytes: BLOB.length,
    mediaType: "x",
  });
  assert.deepEqual(await blob.read(0, 100), BLOB.slice(0, 100));
  assert.deepEqual(await blob.read(100, 100), BLOB.slice(100, 200));
  assert.equal(issued(), 1, "token reused within its lifetime");
  await new Promise((r) => setTimeout(r, 1100));
  assert.deepEqual(await blob.read(200, 100), BLOB.slice(200, 300));
  assert.equal(issued(), 2, "expired token renewed");
  // The registry forgets its tokens (restart): the next read gets a 401 and re-authenticates.
  valid.clear();
  assert.deepEqual(await blob.read(300, 100), BLOB.slice(300, 400));
  assert.equal(issued(), 3);
  assert.equal(blob.requests, 4);
  assert.equal(blob.bytesFetched, 400);
  const tokenQuery = new URL(`http://x${tokenServer.seen[0].path}`).searchParams;
  assert.equal(tokenQuery.get("service"), "reg");
  assert.deepEqual(tokenQuery.getAll("scope"), ["repository:app:pull"]);
  await blob.close();
});

Deno.test("redirects: no Authorization to another host; the target is reused until it fails", async () => {
  const { tokenServer, valid } = tokenAuth({ expiresIn: 300 });
  await using _tokens = tokenServer;
  let storageDown = false;
  await using storage = serve((request) =>
    storageDown ? new Response("expired", { status: 403 }) : partial(request)
  );
  await using registry = bearerRegistry(tokenServer.host, valid, () =>
    new Response(null, {
      status: 307,
      headers: { location: `http://${storage.host}/blob?sig=1` },
    }));
  const c = client(registry.host, { credentials: { username: "user", password: "pw" } });
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(
      await c.readBlobRange("app", DIGEST, i * 100, 100),
      BLOB.slice(i * 100, i * 100 + 100),
    );
  }
  // 401, then one redirect; the next two reads go straight to the storage URL.
  assert.equal(registry.seen.length, 2);
  assert.equal(storage.seen.length, 3);
  assert.ok(storage.seen.every((s) => s.authorization === null && s.path === "/blob?sig=1"));
  // The pre-signed URL expires: fall back to the registry, which redirects again.
  storageDown = true;
  await assert.rejects(c.readBlobRange("app", DIGEST, 0, 10), /403/);
  assert.equal(registry.seen.length, 3);
  storageDown = false;
  assert.deepEqual(await c.readBlobRange("app", DIGEST, 0, 10), BLOB.slice(0, 10));
});

Deno.test("--insecure: HTTPS that fails falls back to plain HTTP once", async () => {
  await using server = serve((request) => partial(request));
  const strict = client(server.host, { plainHttp: false, maxAttempts: 1 });
  await assert.rejects(strict.readBlobRange("app", DIGEST, 0, 10), /cannot reach registry/);
  const insecure = client(server.host, { plainHttp: false, insecure: true });
  assert.deepEqual(await insecure.readBlobRange("app", DIGEST, 0, 10), BLOB.slice(0, 10));
  assert.equal(insecure.origin, `http://${server.host}`);
});

Deno.test("auth: wrong credentials and missing credentials are one-line 401 errors", async () => {
  const { tokenServer } = tokenAuth({ password: "right" });
  await using _tokens = tokenServer;
  await using registry = serve(() =>
    new Response("{}", {
      status: 401,
      headers: {
        "www-authenticate": `Bearer realm="http://${tokenServer.host}/token",service="reg"`,
      },
    })
  );
  const wrong = client(registry.host, { credentials: { username: "user", password: "wrong" } });
  await assert.rejects(wrong.readBlobRange("app", DIGEST, 0, 10), (e: unknown) => {
    assert.ok(e instanceof OciError);
    assert.match(e.message, /rejected the given credentials \(401\)/);
    assert.ok(!e.message.includes("wrong"));
    return true;
  });
  await using basic = serve((request) =>
    request.headers.get("authorization") === `Basic ${btoa("user:pw")}`
      ? partial(request)
      : new Response("{}", { status: 401, headers: { "www-authenticate": 'Basic realm="r"' } })
  );
  const env = { DOCKER_CONFIG: "/nonexistent" };
  const old = Deno.env.get("DOCKER_CONFIG");
  Deno.env.set("DOCKER_CONFIG", env.DOCKER_CONFIG);
  try {
    await assert.rejects(
      client(basic.host).readBlobRange("app", DIGEST, 0, 10),
      /requires authentication \(401\)/,
    );
  } finally {
    if (old === undefined) Deno.env.delete("DOCKER_CONFIG");
    else Deno.env.set("DOCKER_CONFIG", old);
  }
  const before = basic.seen.length;
  const good = client(basic.host, { credentials: { username: "user", password: "pw" } });
  assert.deepEqual(await good.readBlobRange("app", DIGEST, 0, 10), BLOB.slice(0, 10));
  assert.deepEqual(await good.readBlobRange("app", DIGEST, 10, 10), BLOB.slice(10, 20));
  // Basic is sent up front after the first challenge: 3 requests for 2 reads.
  assert.equal(basic.seen.length - before, 3);
  await assert.rejects(
    client(basic.host, { credentials: { username: "user", password: "nope" } })
      .readBlobRange("app", DIGEST, 0, 10),
    /rejected the given credentials \(401\)/,
  );
});

Deno.test("downloadBlob: verified, resumed after a cut, nothing left on a mismatch", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-download-" });
  try {
    await using server = serve((request, seen) => {
      if (request.headers.has("range")) return partial(request);
      return new Response(seen.length === 1 ? cutStream(BLOB, 100_000) : BLOB, {
        status: 200,
        headers: { "content-length": String(BLOB.length) },
      });
    });
    const progress: number[] = [];
    const out = `${dir}/blob`;
    const result = await client(server.host).downloadBlob("app", DIGEST, out, {
      expectedSizeBytes: BLOB.length,
      onProgress: (done) => progress.push(done),
    });
    assert.equal(result.sizeBytes, BLOB.length);
    assert.deepEqual(await Deno.readFile(out), BLOB);
    assert.equal(progress.at(-1), BLOB.length);
    const resumed = parseRange(server.seen[1].range)![0];
    assert.ok(resumed > 0 && resumed <= 100_000, `resumed at ${resumed}`);

    const corrupt = BLOB.slice();
    corrupt[12345] ^= 1;
    await using bad = serve(() => new Response(corrupt));
    await assert.rejects(
      client(bad.host).downloadBlob("app", DIGEST, `${dir}/bad`),
      new RegExp(`${DIGEST} failed verification`),
    );
    await assert.rejects(
      client(server.host).downloadBlob("app", DIGEST, `${dir}/size`, { expectedSizeBytes: 5 }),
      /manifest says 5/,
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["blob"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readLimited: a document over its bound is refused naming host and path", async () => {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const big = new Uint8Array(5000);
    // Declared, or only found out while reading (no Content-Length).
    if (new URL(req.url).pathname.endsWith("/declared")) return new Response(big);
    return new Response(new Blob([big]).stream());
  });
  try {
    for (const name of ["declared", "streamed"]) {
      const response = await fetch(`http://127.0.0.1:${server.addr.port}/v2/app/manifests/${name}`);
      await assert.rejects(
        readLimited(response, 1000),
        (error: unknown) =>
          error instanceof OciError &&
          new RegExp(
            `^127\\.0\\.0\\.1:\\d+ sent more than 1000 bytes for /v2/app/manifests/${name}: refused$`,
          )
            .test(error.message),
      );
    }
  } finally {
    await server.shutdown();
  }
});

Deno.test("blob reads: a reply with a Content-Encoding is refused, not taken for the blob", async () => {
  const blob = new Uint8Array(10_000).map((_, i) => i & 0xff);
  const digest = digestOf(blob);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const [, a, b] = /^bytes=(\d+)-(\d+)$/.exec(req.headers.get("range") ?? "") ?? [];
    const headers: Record<string, string> = { "content-encoding": "gzip" };
    if (a === undefined) return new Response(blob, { headers });
    headers["content-range"] = `bytes ${a}-${b}/${blob.length}`;
    return new Response(blob.slice(Number(a), Number(b) + 1), { status: 206, headers });
  });
  try {
    const client = new RegistryClient(`127.0.0.1:${server.addr.port}`, { plainHttp: true });
    const refused = (error: unknown) =>
      error instanceof OciError && /with Content-Encoding: gzip/.test(error.message);
    await assert.rejects(client.readBlobRange("app", digest, 0, 100), refused);
    const dir = await Deno.makeTempDir();
    try {
      await assert.rejects(client.downloadBlob("app", digest, `${dir}/out`), refused);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  } finally {
    await server.shutdown();
  }
});

Deno.test("downloadBlob: asks for identity; an error reply's encoding does not hide its status", async () => {
  const seen: (string | null)[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    seen.push(req.headers.get("accept-encoding"));
    // A proxy that gzips its JSON error replies.
    return new Response(
      new Blob(['{"errors":[{"code":"BLOB_UNKNOWN"}]}']).stream().pipeThrough(
        new CompressionStream("gzip"),
      ),
      { status: 404, headers: { "content-encoding": "gzip" } },
    );
  });
  const dir = await Deno.makeTempDir();
  try {
    const client = new RegistryClient(`127.0.0.1:${server.addr.port}`, { plainHttp: true });
    await assert.rejects(
      client.downloadBlob("app", digestOf(new Uint8Array(1)), `${dir}/out`),
      (error: unknown) => error instanceof OciError && /404|not found/i.test(error.message),
    );
    assert.deepEqual(seen, ["identity"]);
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("downloadBlob: partial files a crash left (over an hour old) are removed, recent ones kept", async () => {
  const blob = new Uint8Array(3000).map((_, i) => i & 0xff);
  const digest = digestOf(blob);
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response(blob),
  );
  const dir = await Deno.makeTempDir();
  try {
    const old = `${dir}/layer.erofs.0123abcd.partial`;
    const recent = `${dir}/layer.erofs.89abcdef.partial`;
    const other = `${dir}/other.erofs.0123abcd.partial`;
    for (const file of [old, recent, other]) Deno.writeFileSync(file, new Uint8Array(10));
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    Deno.utimeSync(old, twoHoursAgo, twoHoursAgo);
    Deno.utimeSync(other, twoHoursAgo, twoHoursAgo);
    const client = new RegistryClient(`127.0.0.1:${server.addr.port}`, { plainHttp: true });
    await client.downloadBlob("app", digest, `${dir}/layer.erofs`);
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(left, [
      "layer.erofs",
      "layer.erofs.89abcdef.partial",
      "other.erofs.0123abcd.partial",
    ]);
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("getDocument: broken bodies and 5xx share one attempt budget", async () => {
  // Every other reply is a 500 (retried inside request), the rest a body that breaks off
  // (retried by getDocument): each of getDocument's tries used to get maxAttempts of its own.
  await using server = serve((_request, seen) =>
    seen.length % 2 === 1
      ? new Response("no", { status: 500 })
      : new Response(cutStream(BLOB, 100), { headers: { "content-length": String(BLOB.length) } })
  );
  await assert.rejects(
    client(server.host, { maxAttempts: 4 }).getDocument(
      { method: "GET", path: "/v2/app/manifests/latest", scope: "repository:app:pull" },
      1 << 20,
    ),
    /broke off its reply to GET \/v2\/app\/manifests\/latest/,
  );
  assert.equal(server.seen.length, 4);
});
