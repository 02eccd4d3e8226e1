/**
 * The disk cache across a crash (kernel NBD, in the VM): after the server of a mount is killed
 * with SIGKILL, the server `reattach` starts reads every byte the dead one fetched from the
 * disk cache — zero layer GETs, answered by the device's reader thread — and the reader gets the
 * exact bytes.
 */
import assert from "node:assert/strict";
import { PEER_BIN } from "../_support/requires.ts";
import { startRegistry } from "../_support/registry.ts";
import { assertSuccess, runCli } from "../_support/cli.ts";
import { mountSandbox, pidAlive, serverPids } from "../_support/mounts.ts";
import { NOT_IN_VM } from "../_support/vm.ts";
import { startFaultProxy } from "../_support/fault_proxy.ts";
import { pushImage } from "../_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE } from "../_support/oci_fixtures.ts";

const FILE_BYTES = 8 << 20;

async function sha256sum(path: string): Promise<string> {
  const out = await new Deno.Command("sha256sum", { args: [path], stdout: "piped" }).output();
  assert.ok(out.success, `sha256sum ${path}`);
  return new TextDecoder().decode(out.stdout).split(" ")[0];
}

Deno.test({
  name: "vm disk cache: reattach after kill -9 re-reads what was fetched with zero layer GETs",
  ignore: NOT_IN_VM,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "disk-cache-reattach-" });
    await using registry = await startRegistry({ auth: "none" });
    const tree = `${work}/tree`;
    Deno.mkdirSync(tree);
    const data = new Uint8Array(FILE_BYTES);
    for (let at = 0; at < data.length; at += 65536) {
      crypto.getRandomValues(data.subarray(at, at + 65536));
    }
    Deno.writeFileSync(`${tree}/big.bin`, data);
    const built = await new Deno.Command(`${PEER_BIN}/mkfs.erofs`, {
      args: ["-T1700000000", "--all-root", `${work}/big.erofs`, tree],
    }).output();
    assert.ok(built.success);
    const expected = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", data)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    const pushed = await pushImage(registry, "dc/crash", "v1", [
      { bytes: Deno.readFileSync(`${work}/big.erofs`), mediaType: EROFS_MEDIA_TYPE },
    ]);
    const layerDigest = pushed.layers[0].digest;
    await using proxy = await startFaultProxy(registry.host, []);
    const layerGets = () =>
      proxy.requests.filter((r) => r.method === "GET" && r.path.endsWith(`/blobs/${layerDigest}`))
        .length;
    const sandbox = await mountSandbox();
    try {
      assertSuccess(
        await runCli(
          [
            "mount",
            `${proxy.host}/dc/crash:v1`,
            sandbox.target,
            "--plain-http",
            "--backend",
            "nbd",
          ],
          { env: sandbox.env, timeoutMs: 120_000 },
        ),
      );
      assert.equal(await sha256sum(`${sandbox.target}/big.bin`), expected);
      const [pid] = serverPids(sandbox.runtimeDir);
      Deno.kill(pid, "SIGKILL");
      while (pidAlive(pid)) await new Promise((r) => setTimeout(r, 50));

      const before = layerGets();
      assertSuccess(
        await runCli(["reattach", sandbox.target], { env: sandbox.env, timeoutMs: 120_000 }),
      );
      await new Deno.Command("sh", { args: ["-c", "echo 3 > /proc/sys/vm/drop_caches"] }).output();
      assert.equal(await sha256sum(`${sandbox.target}/big.bin`), expected);
      assert.equal(layerGets() - before, 0, "the new server read everything from the disk cache");
      // Read by the device's reader thread from the cache file (lib/nbd/reader_worker.ts), not
      // through the main thread.
      const listed = await runCli(["list", "--json"], { env: sandbox.env });
      assertSuccess(listed);
      const layers = JSON.parse(listed.stdout)[0]?.layers;
      assert.ok(layers?.[0]?.directReads > 0, `no direct reads: ${JSON.stringify(layers)}`);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});
