/**
 * Replies that break once, from a real docker-registry behind the fault proxy (and its token
 * server): a connection reset in the middle of a manifest, config or chunk-table body, a token
 * server's 503, a 429 whose Retry-After says "a day" or "now". Each is asked again and the
 * command or read succeeds; before, `inspect` and `mount` ended in "internal error: error reading
 * a body from connection", a read failed with the token server's 503, the day-long 429 failed
 * every read for 10 minutes, and Retry-After: 0 brought back-to-back retries.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { freePort, startRegistry } from "./_support/registry.ts";
import { isBlobGetOf, isManifestGet, startFaultProxy } from "./_support/fault_proxy.ts";
import { getManifest, pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { CHUNK_TABLE_ANNOTATION } from "../lib/verify/chunk_table.ts";

const ignore = requires(command("docker-registry"));
const ignoreMount = requires(root(), path("/dev/fuse"), command("docker-registry"));

/** `basic.erofs` pushed by the CLI to `reference`, with its chunk table. */
async function pushWithTable(registryHost: string, reference: string) {
  assertSuccess(
    await runCli([
      "push",
      `${registryHost}/${reference}`,
      `${FIXTURES}/basic.erofs`,
      "--plain-http",
    ], {
      timeoutMs: 60_000,
    }),
  );
}

Deno.test({
  name: "broken reply: a manifest, config or chunk table cut off once is asked again",
  ignore: ignoreMount,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    await pushWithTable(registry.host, "br/app:v1");
    const manifest = (await getManifest(registry, "br/app", "v1")).json as {
      config: { digest: string };
      layers: { annotations?: Record<string, string> }[];
    };
    const table = manifest.layers[0].annotations?.[CHUNK_TABLE_ANNOTATION];
    assert(table, "the pushed layer names its chunk table");
    const rules = () => [
      { match: isManifestGet, fault: { kind: "reset", afterBytes: 20 } as const, times: 1 },
      {
        match: isBlobGetOf(manifest.config.digest),
        fault: { kind: "reset", afterBytes: 10 } as const,
        times: 1,
      },
      { match: isBlobGetOf(table), fault: { kind: "reset", afterBytes: 100 } as const, times: 1 },
    ];
    {
      await using proxy = await startFaultProxy(registry.host, rules());
      const inspected = await runCli(["inspect", `${proxy.host}/br/app:v1`, "--plain-http"]);
      assertSuccess(inspected);
      assert.equal(proxy.hits(0), 1, "the manifest was cut off once");
      assert.equal(proxy.hits(1), 1, "the config was cut off once");
    }
    await using proxy = await startFaultProxy(registry.host, rules());
    const sandbox = await mountSandbox();
    try {
      assertSuccess(
        await runCli(
          ["mount", `${proxy.host}/br/app:v1`, sandbox.target, "--plain-http", "--backend", "fuse"],
          { env: sandbox.env, timeoutMs: 60_000 },
        ),
      );
      try {
        assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      } finally {
        assertSuccess(
          await runCli(["umount", sandbox.target], { env: sandbox.env, timeoutMs: 30_000 }),
        );
      }
      assert.deepEqual([0, 1, 2].map((i) => proxy.hits(i)), [1, 1, 1], "each cut off once");
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "broken reply: one 503 from the token server, and the read still succeeds",
  ignore: requires(command("docker-registry"), command("openssl")),
  async fn() {
    await using registry = await startRegistry({ auth: "token" });
    const { bytes } = await loadFixture("basic.erofs");
    const pushed = await pushImage(registry, "tk", "v1", [{ bytes, mediaType: EROFS_MEDIA_TYPE }]);
    const tokens = registry.tokenServer!;
    const before = tokens.requests.length;
    tokens.failNext(1, 503, "1");
    const client = new RegistryClient(registry.host, {
      hostsConfigDir: false,
      credentials: { username: registry.username, password: registry.password },
    });
    const read = await client.readBlobRange("tk", pushed.layers[0].digest, 0, 4096);
    assert.deepEqual(read, bytes.subarray(0, 4096));
    const asked = tokens.requests.slice(before);
    assert.deepEqual(asked.map((r) => r.granted), [false, true], "a 503, then a token");
  },
});

/** basic.erofs as the one layer of rl:v1 behind a proxy applying `retryAfter` 429s `times`. */
async function rateLimited(retryAfter: string, times: number) {
  const registry = await startRegistry({ auth: "none" });
  const { bytes } = await loadFixture("basic.erofs");
  const pushed = await pushImage(registry, "rl", "v1", [{ bytes, mediaType: EROFS_MEDIA_TYPE }]);
  const digest = pushed.layers[0].digest;
  const proxy = await startFaultProxy(registry.host, [
    { match: isBlobGetOf(digest), fault: { kind: "status", status: 429, retryAfter }, times },
  ]);
  return {
    bytes,
    digest,
    proxy,
    [Symbol.asyncDispose]: async () => {
      await proxy.stop();
      await registry.stop();
    },
  };
}

Deno.test({
  name: "broken reply: a 429 asking for a day's pause is probed, and reads resume within a minute",
  ignore,
  async fn() {
    await using setup = await rateLimited("86400", 1);
    const client = new RegistryClient(setup.proxy.host, { hostsConfigDir: false });
    const startedMs = Date.now();
    const read = await client.readBlobRange("rl", setup.digest, 0, 4096);
    assert.deepEqual(read, setup.bytes.subarray(0, 4096));
    assert(Date.now() - startedMs < 58_000, `took ${Date.now() - startedMs} ms`);
    // The pause is over: the next read goes at once (no second probe interval).
    const next = await client.readBlobRange("rl", setup.digest, 4096, 4096);
    assert.deepEqual(next, setup.bytes.subarray(4096, 8192));
    assert.equal(setup.proxy.blobGets(setup.digest).length, 3, "the 429, the probe, the next");
  },
});

Deno.test({
  name: "broken reply: Retry-After: 0 still waits the retry backoff between attempts",
  ignore,
  async fn() {
    await using setup = await rateLimited("0", 3);
    const client = new RegistryClient(setup.proxy.host, { hostsConfigDir: false });
    const read = await client.readBlobRange("rl", setup.digest, 0, 4096);
    assert.deepEqual(read, setup.bytes.subarray(0, 4096));
    const gets = setup.proxy.blobGets(setup.digest);
    assert.equal(gets.length, 4);
    for (let i = 1; i < gets.length; i++) {
      // The first retry's backoff is 75 ms at least (100 ms less its jitter).
      const gapMs = gets[i].timeMs - gets[i - 1].timeMs;
      assert(gapMs >= 50, `retry ${i} came ${gapMs} ms after the 429 before it`);
    }
  },
});

Deno.test({
  name: "broken reply: a redirect target that refuses or denies is named, not the registry",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const { bytes } = await loadFixture("basic.erofs");
    const pushed = await pushImage(registry, "rd", "v1", [{ bytes, mediaType: EROFS_MEDIA_TYPE }]);
    const digest = pushed.layers[0].digest;
    const closedPort = freePort();
    await using proxy = await startFaultProxy(registry.host, [
      {
        match: isBlobGetOf(digest),
        fault: { kind: "location", status: 307, location: `http://127.0.0.1:${closedPort}/b` },
      },
    ]);
    const storage = proxy.redirectHost;
    // The proxy's own redirect target knows no such object: its 404 is the storage's answer.
    await using denying = await startFaultProxy(registry.host, [{
      match: isBlobGetOf(digest),
      fault: { kind: "location", status: 307, location: `http://${storage}/objects/none` },
    }]);
    const options = { hostsConfigDir: false, maxAttempts: 2 } as const;
    await assert.rejects(
      new RegistryClient(proxy.host, options).readBlobRange("rd", digest, 0, 4096),
      (error: Error) => {
        assert.match(
          error.message,
          new RegExp(
            `^cannot reach 127\\.0\\.0\\.1:${closedPort}, where registry ${proxy.host} ` +
              `redirected GET /v2/rd/blobs/${digest}: .*refused`,
          ),
        );
        return true;
      },
    );
    await assert.rejects(
      new RegistryClient(denying.host, options).readBlobRange("rd", digest, 0, 4096),
      (error: Error) => {
        assert.equal(
          error.message,
          `blob not found: ${denying.host}/rd@${digest} (404) by ${storage}, ` +
            `where registry ${denying.host} redirected the GET`,
        );
        return true;
      },
    );
  },
});
