/**
 * 429 Too Many Requests with Retry-After from a real docker-registry behind the fault proxy:
 * the pause is honoured and shared by every client of the host (a mount server has one client
 * per layer), and a pause longer than the operation's deadline fails at once in one line.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import { type FaultProxy, isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { OciError } from "../lib/errors.ts";
import { setTextLogSink } from "../lib/log.ts";

const ignore = requires(command("docker-registry"));

/** basic.erofs pushed as the one layer of rl:v1: its bytes and its digest. */
async function pushBasic(registry: TestRegistry): Promise<{ bytes: Uint8Array; digest: string }> {
  const { bytes } = await loadFixture("basic.erofs");
  const pushed = await pushImage(registry, "rl", "v1", [{ bytes, mediaType: EROFS_MEDIA_TYPE }]);
  return { bytes, digest: pushed.layers[0].digest };
}

/** rl:v1 in a registry behind a fault proxy that answers its layer's GETs 429 (see below). */
interface RateLimited extends AsyncDisposable {
  readonly proxy: FaultProxy;
  readonly bytes: Uint8Array;
  readonly digest: string;
}

/**
 * A registry holding pushBasic's image behind a fault proxy whose GETs of the layer are answered
 * 429 with each of `retryAfters` in turn, once each. Disposing it stops the proxy, then the
 * registry.
 */
async function startRateLimited(...retryAfters: string[]): Promise<RateLimited> {
  const registry = await startRegistry({ auth: "none" });
  try {
    const { bytes, digest } = await pushBasic(registry);
    const proxy = await startFaultProxy(
      registry.host,
      retryAfters.map((retryAfter) => ({
        match: isBlobGetOf(digest),
        fault: { kind: "status", status: 429, retryAfter },
        times: 1,
      })),
    );
    return {
      proxy,
      bytes,
      digest,
      async [Symbol.asyncDispose]() {
        try {
          await proxy[Symbol.asyncDispose]();
        } finally {
          await registry[Symbol.asyncDispose]();
        }
      },
    };
  } catch (error) {
    await registry[Symbol.asyncDispose]();
    throw error;
  }
}

Deno.test({
  name: "429: Retry-After pauses every client of the host, then the reads succeed",
  ignore,
  async fn() {
    await using limited = await startRateLimited("2");
    const { proxy, bytes, digest } = limited;
    const options = { hostsConfigDir: false } as const;
    const first = new RegistryClient(proxy.host, options);
    const second = new RegistryClient(proxy.host, options);
    const one = first.readBlobRange("rl", digest, 0, 4096);
    while (!proxy.requests.some((r) => r.status === 429)) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const limitedAt = proxy.requests.find((r) => r.status === 429)!.timeMs;
    // Let the first client take the 429 in (the proxy logs it before the client reads it).
    await new Promise((r) => setTimeout(r, 200));
    // Another client (another layer of the same mount) must not hammer the host meanwhile.
    const two = second.readBlobRange("rl", digest, 4096, 4096);
    assert.deepEqual(await one, bytes.subarray(0, 4096));
    assert.deepEqual(await two, bytes.subarray(4096, 8192));
    const after = proxy.requests.filter((r) =>
      isBlobGetOf(digest)({ ...r, headers: new Headers() })
    )
      .filter((r) => r.status !== 429);
    assert.equal(after.length, 2, JSON.stringify(proxy.requests));
    for (const r of after) {
      assert(r.timeMs - limitedAt >= 1_900, `a GET ${r.timeMs - limitedAt} ms after the 429`);
    }
  },
});

Deno.test({
  name: "429: a pause of seconds is told once (a silent wait looks hung), a short one is not",
  ignore,
  async fn() {
    await using limited = await startRateLimited("1", "7");
    const { proxy, bytes, digest } = limited;
    const warnings: string[] = [];
    setTextLogSink((level, text) => level === "warn" && warnings.push(text));
    try {
      const client = new RegistryClient(proxy.host, { hostsConfigDir: false });
      assert.deepEqual(await client.readBlobRange("rl", digest, 0, 4096), bytes.subarray(0, 4096));
    } finally {
      setTextLogSink(undefined);
    }
    assert.deepEqual(warnings, [
      `registry ${proxy.host} is rate limiting requests (429): waiting 7 s before trying again`,
    ]);
  },
});

Deno.test({
  name: "429: a Retry-After beyond the deadline fails at once with one line",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const { digest } = await pushBasic(registry);
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGetOf(digest), fault: { kind: "status", status: 429, retryAfter: "120" } },
    ]);
    const client = new RegistryClient(proxy.host, { hostsConfigDir: false, deadlineMs: 5_000 });
    const started = Date.now();
    await assert.rejects(client.readBlobRange("rl", digest, 0, 4096), (error) => {
      assert(error instanceof OciError, String(error));
      assert.match(error.message, /rate limiting requests \(429\): retry after 120 s/);
      assert(!error.message.includes("\n"));
      return true;
    });
    assert(Date.now() - started < 1_500, `gave up after ${Date.now() - started} ms`);
    assert.equal(proxy.hits(0), 1, "no second request into the pause");
  },
});

Deno.test({
  name: "429 at a mirror: the next host answers at once, the mirror is left alone meanwhile",
  ignore,
  async fn() {
    await using upstream = await startRegistry({ auth: "none" });
    await using mirror = await startRegistry({ auth: "none" });
    const { bytes, digest } = await pushBasic(upstream);
    await pushBasic(mirror);
    await using up = await startFaultProxy(upstream.host, []);
    await using mir = await startFaultProxy(mirror.host, [
      { match: isBlobGetOf(digest), fault: { kind: "status", status: 429, retryAfter: "60" } },
    ]);
    const configDir = await Deno.makeTempDir({ prefix: "erofs-oci-certs.d-" });
    try {
      Deno.mkdirSync(`${configDir}/${up.host}`);
      Deno.writeTextFileSync(
        `${configDir}/${up.host}/hosts.toml`,
        `[host."http://${mir.host}"]\n  capabilities = ["pull"]\n`,
      );
      const client = new RegistryClient(up.host, { hostsConfigDir: configDir });
      const started = Date.now();
      assert.deepEqual(await client.readBlobRange("rl", digest, 0, 4096), bytes.subarray(0, 4096));
      assert.deepEqual(
        await client.readBlobRange("rl", digest, 4096, 4096),
        bytes.subarray(4096, 8192),
      );
      assert(Date.now() - started < 3_000, `took ${Date.now() - started} ms`);
      assert.equal(mir.hits(0), 1, "one 429 from the mirror, then it is left alone");
      const upstreamGets = up.requests.filter((r) =>
        isBlobGetOf(digest)({ ...r, headers: new Headers() })
      );
      assert.equal(upstreamGets.length, 2);
    } finally {
      await Deno.remove(configDir, { recursive: true });
    }
  },
});
