/**
 * A failed or interrupted blob upload cancels its upload session on the registry (DELETE of
 * the upload location, OCI distribution spec): before, the session stayed open and the bytes
 * sent so far stayed in the registry's `_uploads/` area (up to 177 MB per interrupted run),
 * until the registry's own purge days later. Real docker-registry, behind the fault proxy.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import {
  assertCliError,
  describe,
  runCli,
  startCli,
  type StartedCli,
  stopCli,
} from "./_support/cli.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { loadFixture } from "./_support/oci_fixtures.ts";
import { waitFor } from "./_support/wait.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { blobExists, uploadBlob } from "../lib/oci/blob_upload.ts";
import { setStallMs } from "../lib/oci/stall_watch.ts";

const ignore = requires(command("docker-registry"));

/**
 * The upload sessions the registry holds open for `repository`: the ones in its storage's
 * `_uploads/` with their `data` (the bytes sent so far) or `startedat`. A cancelled one goes
 * but for its `hashstates/` (docker-registry 2.8 leaves those).
 */
function openUploads(registry: TestRegistry, repository: string): string[] {
  const dir = `${registry.storageDir}/docker/registry/v2/repositories/${repository}/_uploads`;
  let sessions: string[];
  try {
    sessions = [...Deno.readDirSync(dir)].map((entry) => entry.name);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
  return sessions.filter((id) =>
    ["data", "startedat"].some((name) => {
      try {
        Deno.lstatSync(`${dir}/${id}/${name}`);
        return true;
      } catch {
        return false;
      }
    })
  );
}

const isUploadPut = (r: { method: string; path: string }) =>
  r.method === "PUT" && r.path.includes("/blobs/uploads/");

Deno.test({
  name: "upload cancel: a refused PUT sends DELETE for its session; the error stays the PUT's",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    // The proxy answers the closing PUT itself: the registry's session stays open unless the
    // client cancels it.
    await using proxy = await startFaultProxy(registry.host, [
      { match: isUploadPut, fault: { kind: "status", status: 400 } },
    ]);
    const layer = await loadFixture("basic.erofs");
    const pushed = await runCli([
      "push",
      `${proxy.host}/cancel/refused:v1`,
      layer.path,
      "--plain-http",
    ]);
    assertCliError(pushed, 1, /refused .*basic\.erofs: digest or size mismatch \(400\)/);
    const deletes = proxy.requests.filter((r) =>
      r.method === "DELETE" && r.path.includes("/blobs/uploads/")
    );
    assert.equal(deletes.length, 1, describe(pushed));
    assert.equal(deletes[0].status, 204, "the registry cancelled the session");
    assert.deepEqual(openUploads(registry, "cancel/refused"), [], "no upload session left");
  },
});

Deno.test({
  name: "upload cancel: SIGINT mid-push (chunked) cancels the session; exit 130 with one line",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    // The second PATCH (after 8 MiB went up) is held at the proxy: the push is mid-upload.
    await using proxy = await startFaultProxy(registry.host, [{
      match: (r) => r.method === "PATCH" && !/^0-/.test(r.headers.get("content-range") ?? ""),
      fault: { kind: "delay", ms: 60_000 },
    }]);
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-upload-cancel-" });
    let pushing: StartedCli | undefined;
    try {
      // basic.erofs followed by random bytes: still starts like an EROFS image.
      const basic = await loadFixture("basic.erofs");
      const big = new Uint8Array(8 * 1024 * 1024 + 12_345);
      big.set(basic.bytes);
      for (let at = basic.bytes.length; at < big.length; at += 65_536) {
        crypto.getRandomValues(big.subarray(at, Math.min(at + 65_536, big.length)));
      }
      await Deno.writeFile(`${dir}/big.erofs`, big);
      pushing = startCli([
        "push",
        `${proxy.host}/cancel/big:v1`,
        `${dir}/big.erofs`,
        "--plain-http",
      ]);
      await waitFor("the second PATCH at the proxy", () => proxy.hits(0) > 0, 30_000);
      assert.equal(openUploads(registry, "cancel/big").length, 1, "a session is open");
      pushing.child.kill("SIGINT");
      const result = await pushing.result;
      assert.deepEqual(openUploads(registry, "cancel/big"), [], "no upload session left");
      assert.equal(result.code, 130, describe(result));
      assert.match(result.stderr, /^erofs-oci: push interrupted: .* was not pushed completely$/m);
      assert.doesNotMatch(result.stderr, /\n\s+at /, "no stack trace");
      assert.ok(
        proxy.requests.some((r) => r.method === "DELETE" && r.path.includes("/blobs/uploads/")),
        describe(result),
      );
    } finally {
      await stopCli(pushing);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "upload: a registry silent after a PUT's body is asked again, then given up with one line (it hung for good)",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    // Small: a body gets time to be sent at 8 KiB/s on top of the stall time (1 s + 0.5 s here).
    const layer = await loadFixture("layer2.erofs");
    const env = { EROFS_OCI_REGISTRY_STALL_S: "1" };
    {
      // Silent once: the closing PUT is sent again and the push completes.
      await using proxy = await startFaultProxy(registry.host, [
        { match: isUploadPut, fault: { kind: "delay", ms: 600_000 }, times: 1 },
      ]);
      const pushed = await runCli(
        ["push", `${proxy.host}/silent/once:v1`, layer.path, "--plain-http"],
        { env, timeoutMs: 120_000 },
      );
      assert.equal(pushed.code, 0, describe(pushed));
      // One closing PUT per upload session, and one more: the one sent again.
      const sessions = proxy.requests.filter((r) =>
        r.method === "POST" && r.path.includes("/blobs/uploads/")
      );
      assert.equal(
        proxy.requests.filter(isUploadPut).length,
        sessions.length + 1,
        describe(pushed),
      );
    }
    // Silent for good: given up, and the session cancelled.
    await using proxy = await startFaultProxy(registry.host, [
      { match: isUploadPut, fault: { kind: "delay", ms: 600_000 } },
    ]);
    const pushed = await runCli(
      ["push", `${proxy.host}/silent/always:v1`, layer.path, "--plain-http"],
      { env, timeoutMs: 120_000 },
    );
    assertCliError(
      pushed,
      1,
      /stopped answering \(PUT .*\/blobs\/uploads\/.*, no reply for \d+ s\)/,
    );
    assert.ok(
      proxy.requests.some((r) => r.method === "DELETE" && r.path.includes("/blobs/uploads/")),
      describe(pushed),
    );
  },
});

Deno.test({
  name: "upload: a closing PUT whose reply was lost, sent again, finds the blob committed: pushed",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    // The registry commits the blob at the first PUT; its reply never comes back, and the PUT
    // sent again finds the session gone (404).
    await using proxy = await startFaultProxy(registry.host, [
      { match: isUploadPut, fault: { kind: "lose-reply" }, times: 1 },
    ]);
    const layer = await loadFixture("layer2.erofs");
    const pushed = await runCli(
      ["push", `${proxy.host}/lost/reply:v1`, layer.path, "--plain-http"],
      { env: { EROFS_OCI_REGISTRY_STALL_S: "1" }, timeoutMs: 120_000 },
    );
    assert.equal(pushed.code, 0, describe(pushed));
    const puts = proxy.requests.filter(isUploadPut);
    assert.deepEqual(puts.slice(0, 2).map((r) => r.status), [0, 404], describe(pushed));
    assert.deepEqual(openUploads(registry, "lost/reply"), [], "no upload session left");
  },
});

Deno.test({
  name:
    "upload: a chunk whose reply was lost is not resent into a session the registry moved on: the upload starts again",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    // The first chunk's PATCH reaches the registry; its reply (with the session's next
    // location) never comes back. Sent again to the old location, docker-registry answers 404.
    await using proxy = await startFaultProxy(registry.host, [
      {
        match: (r) => r.method === "PATCH" && r.path.includes("/blobs/uploads/"),
        fault: { kind: "lose-reply" },
        times: 1,
      },
    ]);
    const layer = await loadFixture("basic.erofs");
    const client = new RegistryClient(proxy.host, { plainHttp: true });
    setStallMs(1_000);
    try {
      await uploadBlob(client, "resume/chunks", {
        path: layer.path,
        digest: layer.digest,
        sizeBytes: layer.bytes.length,
        mediaType: "application/octet-stream",
      }, { chunkSizeBytes: 16 * 1024, monolithicMaxBytes: 0 });
    } finally {
      setStallMs(undefined);
      client.close();
    }
    const sessions = proxy.requests.filter((r) => r.method === "POST");
    assert.equal(sessions.length, 2, "one session, then one more from the first byte");
    const direct = new RegistryClient(registry.host, { plainHttp: true });
    assert.equal(await blobExists(direct, "resume/chunks", layer.digest), true);
    direct.close();
    // (The first session stays open on the registry: its DELETE needs the location the lost
    // reply carried. docker-registry purges such sessions itself.)
  },
});
