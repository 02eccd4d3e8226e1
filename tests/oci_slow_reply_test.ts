/**
 * A registry or token server that drips its reply (a few KiB/s: enough for the stall rule) is
 * given up at the operation's deadline with one line, instead of keeping inspect or mount
 * waiting for most of an hour (a 3 MiB padded manifest at 1200 B/s: 44 min); a blob download
 * that is slow but keeps coming is not cut by it, and a big reply that brings a MiB per
 * deadline earns a fresh one.
 *
 * The stall time is 2 s here (its checks run every 0.5 s) and each client's deadline about a
 * second, so that each case takes seconds; a case that is still waiting after SETTLE_MS fails.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGetOf, isManifestGet, startFaultProxy } from "./_support/fault_proxy.ts";
import { pushImage, uploadBlob } from "./_support/oci_raw.ts";
import { patternBytes } from "./_support/memory_source.ts";
import { withTempDir } from "./_support/temp_dir.ts";
import { settledWithin } from "./_support/wait.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { fetchManifest } from "../lib/oci/resolve.ts";
import { readLimited } from "../lib/oci/auth.ts";
import { fetchTable } from "../lib/verify/table_artifact.ts";
import { OciError } from "../lib/errors.ts";
import { setStallMs } from "../lib/oci/stall_watch.ts";

// Not through the environment: CLIs that tests running beside this one start would inherit it.
setStallMs(2_000);

const ignore = requires(command("docker-registry"));
const SETTLE_MS = 10_000;
const MIB = 1 << 20;

/** What `run` ended with within SETTLE_MS; still running then: aborted, and a failure. */
async function settled<T>(run: (signal: AbortSignal) => Promise<T>): Promise<
  { value?: T; error?: unknown; ms: number }
> {
  const aborts = new AbortController();
  const startedMs = performance.now();
  const outcome = run(aborts.signal).then(
    (value) => ({ value, ms: performance.now() - startedMs }),
    (error) => ({ error, ms: performance.now() - startedMs }),
  );
  const first = await settledWithin(outcome, SETTLE_MS);
  if (first === undefined) {
    aborts.abort();
    await outcome;
    assert.fail(`still waiting on a dripped reply after ${SETTLE_MS / 1000} s`);
  }
  return first;
}

function assertOneLine(error: unknown, pattern: RegExp): void {
  assert.ok(error instanceof OciError, `not an OciError: ${error}`);
  assert.match(error.message, pattern);
  assert.ok(!error.message.includes("\n") && error.message.length < 300, error.message);
}

Deno.test({
  name: "slow reply: a manifest padded to 3 MiB and dripped is given up at the deadline",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    await pushImage(registry, "slow/app", "v1", [{
      bytes: new Uint8Array(patternBytes(4096, 1)),
      mediaType: "application/vnd.erofs",
    }]);
    // 128 KiB/s: passes the stall rule (32 KiB per 2 s), 3 MiB take 24 s.
    await using proxy = await startFaultProxy(registry.host, [{
      match: isManifestGet,
      fault: { kind: "drip", bytes: 32 << 10, everyMs: 250, padTo: 3 * MIB },
    }]);
    const client = new RegistryClient(proxy.host, { plainHttp: true, deadlineMs: 1000 });
    const result = await settled((signal) => fetchManifest(client, "slow/app", "v1", signal));
    assertOneLine(
      result.error,
      /^registry 127\.0\.0\.1:\d+ sent its reply to GET \/v2\/slow\/app\/manifests\/v1 too slowly: gave up after \d+ s \(\d+ bytes in\)$/,
    );
    assert.ok(result.ms < 5_000, `took ${result.ms} ms`);
    assert.equal(proxy.requests.filter((r) => r.path.includes("/manifests/")).length, 1);
  },
});

Deno.test({
  name: "slow reply: a dripped chunk-table blob is given up at the deadline",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const bytes = new Uint8Array(patternBytes(2 * MIB, 2));
    const blob = await uploadBlob(registry, "slow/table", bytes, "application/octet-stream");
    // 128 KiB/s: a MiB takes 8 s, so no fresh deadline is earned.
    await using proxy = await startFaultProxy(registry.host, [{
      match: isBlobGetOf(blob.digest),
      fault: { kind: "drip", bytes: 32 << 10, everyMs: 250 },
    }]);
    const client = new RegistryClient(proxy.host, { plainHttp: true, deadlineMs: 1000 });
    const layer = { digest: blob.digest, sizeBytes: 1 };
    const result = await settled((signal) =>
      fetchTable(client, "slow/table", blob.digest, layer, signal)
    );
    assertOneLine(
      result.error,
      /^registry 127\.0\.0\.1:\d+ sent its reply to GET \/v2\/slow\/table\/blobs\/sha256:[0-9a-f]{64} too slowly/,
    );
    assert.ok(result.ms < 5_000, `took ${result.ms} ms`);
  },
});

Deno.test({
  name: "slow reply: a reply read whole that brings a MiB per deadline is read to its end",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const bytes = new Uint8Array(patternBytes(3 * MIB, 3));
    const blob = await uploadBlob(registry, "slow/big", bytes, "application/octet-stream");
    // 1 MiB/s against a 1.5 s deadline: 3 s in all, a fresh deadline per MiB.
    await using proxy = await startFaultProxy(registry.host, [{
      match: isBlobGetOf(blob.digest),
      fault: { kind: "drip", bytes: 256 << 10, everyMs: 250 },
    }]);
    const client = new RegistryClient(proxy.host, { plainHttp: true, deadlineMs: 1500 });
    const result = await settled(async (signal) => {
      const response = await client.request({
        method: "GET",
        path: `/v2/slow/big/blobs/${blob.digest}`,
        scope: "repository:slow/big:pull",
        signal,
      });
      return await readLimited(response, 4 * MIB);
    });
    assert.equal(result.error, undefined, String(result.error));
    assert.deepEqual(result.value, bytes);
    assert.ok(result.ms > 2_000, `the drip took only ${result.ms} ms: no test of the renewal`);
  },
});

Deno.test({
  name: "slow reply: a blob download that is slow but keeps coming outlives the deadline",
  ignore,
  fn: () =>
    withTempDir("erofs-oci-slow-download-", async (dir) => {
      await using registry = await startRegistry({ auth: "none" });
      const bytes = new Uint8Array(patternBytes(320 << 10, 4));
      const blob = await uploadBlob(registry, "slow/blob", bytes, "application/octet-stream");
      // 128 KiB/s for 320 KiB: 2.5 s against a 1 s deadline, less than a MiB.
      await using proxy = await startFaultProxy(registry.host, [{
        match: isBlobGetOf(blob.digest),
        fault: { kind: "drip", bytes: 32 << 10, everyMs: 250 },
      }]);
      const client = new RegistryClient(proxy.host, { plainHttp: true, deadlineMs: 1000 });
      const result = await settled((signal) =>
        client.downloadBlob("slow/blob", blob.digest, `${dir}/blob`, {
          expectedSizeBytes: bytes.length,
          signal,
        })
      );
      assert.equal(result.error, undefined, String(result.error));
      assert.ok(result.ms > 1_500, `the drip took only ${result.ms} ms: no test of the deadline`);
      assert.deepEqual(await Deno.readFile(`${dir}/blob`), bytes);
      assert.equal(proxy.blobGets(blob.digest).length, 1, "one GET, not cut and resumed");
    }),
});

Deno.test("slow reply: a token server dripping its reply is given up at the deadline", async () => {
  const aborts = new AbortController();
  // A MiB of spaces (the reply limit) at 128 KiB/s: 8 s, passing the stall rule.
  await using tokenServer = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => {
      let sent = 0;
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (sent > 0) await new Promise((resolve) => setTimeout(resolve, 250));
          if (aborts.signal.aborted || sent >= MIB) return controller.close();
          controller.enqueue(new Uint8Array(32 << 10).fill(0x20));
          sent += 32 << 10;
        },
      });
      return new Response(body, { headers: { "content-type": "application/json" } });
    },
  );
  const realm = `http://127.0.0.1:${tokenServer.addr.port}/token`;
  await using registry = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () =>
      new Response("{}", {
        status: 401,
        headers: { "www-authenticate": `Bearer realm="${realm}",service="reg"` },
      }),
  );
  const client = new RegistryClient(`127.0.0.1:${registry.addr.port}`, { deadlineMs: 1000 });
  try {
    const result = await settled((signal) =>
      client.request({
        method: "GET",
        path: "/v2/app/manifests/latest",
        scope: "repository:app:pull",
        signal,
      })
    );
    assertOneLine(
      result.error,
      /^token server 127\.0\.0\.1:\d+ sent its reply too slowly: gave up after \d+ s/,
    );
    assert.ok(result.ms < 5_000, `took ${result.ms} ms`);
  } finally {
    aborts.abort();
    client.close();
  }
});
