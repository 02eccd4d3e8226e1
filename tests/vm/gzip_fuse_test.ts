/**
 * An ordinary tar+gzip layer over the FUSE backend in the VM: on 6.1 EROFS goes through a loop
 * device on the FUSE file, and (before 6.4) the layer is served in the 4 KiB layout
 * (lib/gzip/aligned_tar.ts); the mounted tree equals the fixture's expected manifest.
 */
import assert from "node:assert/strict";
import { FIXTURES } from "../_support/requires.ts";
import { startRegistry } from "../_support/registry.ts";
import { assertSuccess, describe, runCli } from "../_support/cli.ts";
import { manifestOf, mountSandbox, mountsBelow } from "../_support/mounts.ts";
import { dropCaches, NOT_IN_VM } from "../_support/vm.ts";
import { pushImage } from "../_support/oci_raw.ts";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const LONG = { timeoutMs: 300_000 };

Deno.test({
  name: "vm gzip: a tar.gz layer over FUSE (loop device) through its pushed index equals the tree",
  ignore: NOT_IN_VM,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-vm-gzip-fuse-" });
    try {
      await using registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
      const gz = await Deno.readFile(`${FIXTURES}/big-multi.tar.gz`);
      await pushImage(registry, "gz/fuse", "v1", [{ bytes: gz, mediaType: GZIP_LAYER }]);
      const ref = `${registry.host}/gz/fuse:v1`;
      assertSuccess(await runCli(["index", ref, "--push", "--timestamp", "1700000000"], LONG));
      const sandbox = await mountSandbox();
      const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: `${work}/state` };
      try {
        const mounted = await runCli(["mount", "--backend", "fuse", ref, sandbox.target], {
          env,
          ...LONG,
        });
        assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
        await dropCaches();
        // The writer gives tar roots 0755 where mkfs.erofs gives 0777 (build_tar_test.ts).
        const want = Deno.readTextFileSync(`${FIXTURES}/expected/big.meta.txt`)
          .replace(/^\.\td\t0777\t/, ".\td\t0755\t");
        assert.equal(await manifestOf(sandbox.target), want);
        assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
        assert.deepEqual(mountsBelow(sandbox.target), []);
      } finally {
        await sandbox.cleanup();
      }
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
