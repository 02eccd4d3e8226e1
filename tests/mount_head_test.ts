/**
 * mountErofsFile's `head` (the superblock bytes the mount server sends with its ready message):
 * the check uses them instead of reading the file — wrong bytes refuse a good image before
 * anything is mounted, right ones mount it — and a mount through the CLI still checks them.
 */
import assert from "node:assert/strict";
import { mountErofsFile, unmountErofs } from "../lib/mount/erofs_file.ts";
import { EROFS_SUPER_END } from "../lib/erofs/superblock.ts";
import { FormatError } from "../lib/errors.ts";
import { FIXTURES, requires, root } from "./_support/requires.ts";
import { mountsBelow } from "./_support/mounts.ts";

Deno.test({
  name: "mount head: given superblock bytes are what is checked, not the file's",
  ignore: requires(root()),
  async fn() {
    const image = `${FIXTURES}/basic.erofs`;
    const target = await Deno.makeTempDir({ prefix: "erofs-oci-mount-head-" });
    try {
      const real = (await Deno.readFile(image)).slice(0, EROFS_SUPER_END);
      const zeros = new Uint8Array(EROFS_SUPER_END);
      await assert.rejects(
        () => mountErofsFile(image, target, { head: zeros }),
        (error) => error instanceof FormatError && /not an EROFS image/.test(error.message),
      );
      assert.deepEqual(mountsBelow(target), [], "nothing mounted after the refusal");
      await mountErofsFile(image, target, { head: real });
      try {
        assert.ok(Deno.readDirSync(target).next().done === false, "the image's root is listed");
      } finally {
        await unmountErofs(target);
      }
    } finally {
      for (const point of mountsBelow(target).reverse()) {
        await new Deno.Command("umount", { args: ["-l", point] }).output();
      }
      await Deno.remove(target, { recursive: true });
    }
  },
});
