/**
 * A new NBD device's partition scan (its first open, part of the attach) reads the image head:
 * 4 KiB pages 0, 1 and 3. A list made by `push` holds that head, so the scan waits for the
 * listed metadata to be pinned and is answered from it: no GET of the layer's first chunk before
 * the mount is ready (under TCG that GET and its check took ~0.9 s of the attach). The CLI's own
 * superblock read (EROFS_SUPER_END bytes) is the only layer GET before ready.
 */
import assert from "node:assert/strict";
import { startFaultProxy } from "../_support/fault_proxy.ts";
import { assertSuccess, runCli } from "../_support/cli.ts";
import { mountSandbox } from "../_support/mounts.ts";
import { NOT_IN_VM } from "../_support/vm.ts";
import { pushWithTables, setup, SMALL_TEXT } from "../_support/verify_image.ts";
import { EROFS_SUPER_END } from "../../lib/erofs/superblock.ts";

/** Epoch ms of the first `label` mark in an EROFS_OCI_TIMING file (lib/timing.ts). */
function markTime(timingFile: string, label: string): number {
  for (const line of Deno.readTextFileSync(timingFile).split("\n")) {
    const fields = line.split(" ");
    if (fields[0] === "timing" && fields.slice(2, -2).join(" ") === label) {
      return Number(fields[fields.length - 2]);
    }
  }
  throw new Error(`no "${label}" mark in ${timingFile}`);
}

Deno.test({
  name: "vm nbd: the partition scan reads the pinned head, no layer GET before ready",
  ignore: NOT_IN_VM,
  async fn() {
    await using s = await setup();
    const cli = (args: string[], env: Record<string, string> = {}) =>
      runCli(args, { env, timeoutMs: 180_000 });
    const layer = await pushWithTables(s, "scan/head");
    await using proxy = await startFaultProxy(s.registry.host, []);
    const sandbox = await mountSandbox();
    const timing = `${sandbox.runtimeDir}-timing.txt`;
    const env = { ...sandbox.env, EROFS_OCI_TIMING: timing };
    try {
      assertSuccess(
        await cli([
          "mount",
          `${proxy.host}/scan/head:v1`,
          sandbox.target,
          "--plain-http",
          "--backend",
          "nbd",
        ], env),
      );
      const readyMs = markTime(timing, "server: ready");
      const layerGets = proxy.requests.filter((r) =>
        r.method === "GET" && r.path.endsWith(`/blobs/${layer.digest}`) && r.timeMs < readyMs
      );
      const beyondSuperblock = layerGets.filter((r) => {
        const m = /^bytes=(\d+)-(\d+)$/.exec(r.range ?? "");
        return !m || Number(m[2]) + 1 > EROFS_SUPER_END;
      });
      assert.deepEqual(
        beyondSuperblock.map((r) => r.range),
        [],
        `layer GETs before ready: ${JSON.stringify(layerGets)}\n${sandbox.serverLogs()}`,
      );
      assert.match(sandbox.serverLogs(), /metadata prefetch, listed: /);
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), SMALL_TEXT);
      assertSuccess(await cli(["umount", sandbox.target], env));
    } finally {
      await sandbox.cleanup();
      await Deno.remove(timing).catch(() => {});
    }
  },
});
