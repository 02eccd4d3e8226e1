/**
 * An OCI layout's tar+gzip layer over kernel NBD, in the VM: `mount --index-missing
 * oci:LAYOUT` indexes the layer from its blob file, serves it through the index (re-laid out
 * with 4 KiB blocks before Linux 6.4) and records a `TARINDEX_LOCAL <blob>` line; the server
 * killed with SIGKILL is brought back by `erofs-oci reattach` from that line and its companion,
 * and the file reads back with the exact bytes; umount leaves no line, mount or device.
 */
import assert from "node:assert/strict";
import { assertSuccess, describe, runCli } from "../_support/cli.ts";
import { mountSandbox, mountsBelow, pidAlive, serverPids } from "../_support/mounts.ts";
import { dropCaches, NOT_IN_VM } from "../_support/vm.ts";
import { bigTarGz } from "../_support/kill_mid_read.ts";
import { fileSha256, RECOVERY_DIR } from "../_support/peer_nbd.ts";
import { writeOciLayout } from "../_support/oci_layout_writer.ts";
import { withTempDir } from "../_support/temp_dir.ts";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const LONG = { timeoutMs: 300_000 };

function recoveryFiles(): string[] {
  try {
    return [...Deno.readDirSync(RECOVERY_DIR)].filter((e) => /^mountnbd_/.test(e.name))
      .map((e) => `${RECOVERY_DIR}/${e.name}`);
  } catch {
    return [];
  }
}

Deno.test({
  name:
    "vm layout tar: oci: tar.gz layer over NBD (--index-missing), kill -9, reattach, exact bytes",
  ignore: NOT_IN_VM,
  fn: () =>
    withTempDir("erofs-oci-vm-layout-tar-", async (work) => {
      const big = await bigTarGz(work, 8 << 20);
      const { layerPaths } = await writeOciLayout(`${work}/lay`, [
        { bytes: big.bytes, mediaType: GZIP_LAYER },
      ]);
      const sandbox = await mountSandbox();
      const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: `${work}/state` };
      try {
        const mounted = await runCli(
          ["mount", "--backend", "nbd", "--index-missing", `oci:${work}/lay:v1`, sandbox.target],
          { env, ...LONG },
        );
        assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
        const files = recoveryFiles();
        const line = files.find((f) => !f.endsWith(".json"));
        const companion = files.find((f) => f.endsWith(".json"));
        assert.ok(line && companion, `a recovery line and its companion: ${files}`);
        assert.equal(Deno.readTextFileSync(line).trim(), `TARINDEX_LOCAL ${layerPaths[0]}`);
        const extra = JSON.parse(Deno.readTextFileSync(companion));
        assert.ok(extra.tarIndex.meta.startsWith(`${work}/state/index/`), extra.tarIndex.meta);
        assert.match(extra.digest, /^sha256:[0-9a-f]{64}$/);

        const [pid] = serverPids(sandbox.runtimeDir);
        Deno.kill(pid, "SIGKILL");
        while (pidAlive(pid)) await new Promise((r) => setTimeout(r, 50));
        const reattached = await runCli(["reattach", sandbox.target], { env, ...LONG });
        assert.equal(reattached.code, 0, `${describe(reattached)}\n${sandbox.serverLogs()}`);
        assert.match(reattached.stdout, /reattached/);
        await dropCaches();
        assert.equal(await fileSha256(`${sandbox.target}/big.bin`), big.sha);

        assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
        assert.deepEqual(recoveryFiles(), []);
        assert.deepEqual(mountsBelow(sandbox.target), []);
      } finally {
        await sandbox.cleanup();
      }
    }),
});
