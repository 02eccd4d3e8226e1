/**
 * An EROFS layer with 512-byte blocks (`mkfs.erofs -b512`) mounted through kernel NBD: the
 * device must get 512-byte blocks (EROFS refuses a block smaller than the device's), chosen
 * from the superblock `mount` checked (the erofsBlockBytes of its spec) without a read of the
 * layer before CONNECT. The tree is read back exactly, cold.
 *
 * Linux mounts 512-byte EROFS blocks from 6.4 on only: this file runs in the
 * VM_KERNEL=backports boot (the `_kernel64` suffix, scripts/vm/run-tests.sh).
 */
import assert from "node:assert/strict";
import { PEER_BIN } from "../_support/requires.ts";
import { startRegistry } from "../_support/registry.ts";
import { assertSuccess, runCli } from "../_support/cli.ts";
import { mountSandbox } from "../_support/mounts.ts";
import { pushImage } from "../_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE } from "../_support/oci_fixtures.ts";
import { dropCaches, NOT_IN_VM } from "../_support/vm.ts";
import { kernelHasSubpageBlocks, kernelRelease } from "../../lib/mount/tar_layout.ts";

Deno.test({
  name: "vm nbd: an EROFS layer of 512-byte blocks mounts with 512-byte device blocks",
  ignore: NOT_IN_VM,
  async fn() {
    assert.ok(
      kernelHasSubpageBlocks(),
      `kernel ${kernelRelease()} mounts no 512-byte EROFS blocks (Linux >= 6.4)`,
    );
    const work = await Deno.makeTempDir({ prefix: "small-blocks-" });
    await using registry = await startRegistry({ auth: "none" });
    const sandbox = await mountSandbox();
    try {
      const tree = `${work}/tree`;
      Deno.mkdirSync(`${tree}/etc`, { recursive: true });
      const data = new Uint8Array(3 << 20);
      for (let at = 0; at < data.length; at += 65536) {
        crypto.getRandomValues(data.subarray(at, at + 65536));
      }
      Deno.writeFileSync(`${tree}/data.bin`, data);
      Deno.writeTextFileSync(`${tree}/etc/hostname`, "small-blocks\n");
      const built = await new Deno.Command(`${PEER_BIN}/mkfs.erofs`, {
        args: ["-b512", "-T1700000000", "--all-root", `${work}/small.erofs`, tree],
        stderr: "piped",
      }).output();
      assert.ok(built.success, new TextDecoder().decode(built.stderr));
      await pushImage(registry, "small/blocks", "v1", [
        { bytes: Deno.readFileSync(`${work}/small.erofs`), mediaType: EROFS_MEDIA_TYPE },
      ]);
      const mounted = await runCli(
        [
          "mount",
          `${registry.host}/small/blocks:v1`,
          sandbox.target,
          "--plain-http",
          "--backend",
          "nbd",
        ],
        { env: sandbox.env, timeoutMs: 120_000 },
      );
      assertSuccess(mounted);
      try {
        const device = mounted.stdout.match(/nbd\d+/)?.[0];
        assert.ok(device, mounted.stdout);
        assert.equal(
          Deno.readTextFileSync(`/sys/block/${device}/queue/logical_block_size`).trim(),
          "512",
        );
        await dropCaches();
        assert.deepEqual(Deno.readFileSync(`${sandbox.target}/data.bin`), data);
        assert.equal(Deno.readTextFileSync(`${sandbox.target}/etc/hostname`), "small-blocks\n");
      } finally {
        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      }
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});
