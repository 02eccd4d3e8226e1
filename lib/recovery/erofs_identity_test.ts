/**
 * The identity reattach compares must be what the real kernel reports: images made by
 * erofs-utils are loop-mounted read-only and statfs'd, and their superblocks parsed.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, requires, root } from "../../tests/_support/requires.ts";
import { EROFS_SUPER_OFFSET } from "../erofs/superblock.ts";
import {
  identityDifferences,
  identityOfImage,
  mountedIdentity,
  rootInodeRange,
} from "./erofs_identity.ts";
import { readMountInfo } from "../sys/mountinfo.ts";

const ignore = requires(root(), command("mount"), command("losetup"));

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** identityOfImage with the root inode, read from `bytes` as reattach reads it from a blob. */
function identityOf(bytes: Uint8Array, what: string) {
  const { offset, length } = rootInodeRange(bytes);
  return identityOfImage(bytes, what, bytes.subarray(offset, offset + length));
}

Deno.test({
  name: "erofs identity: statfs of a mounted image equals its superblock; other images differ",
  ignore,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-identity-" });
    const mnt = `${dir}/mnt`;
    await Deno.mkdir(mnt);
    let mounted = false;
    try {
      const image = `${dir}/basic.erofs`;
      await Deno.copyFile(`${FIXTURES}/basic.erofs`, image);
      await run("mount", ["-t", "erofs", "-o", "ro,loop", image, mnt]);
      mounted = true;
      const entry = readMountInfo().findLast((m) => m.mountPoint === mnt)!;
      assert.ok(entry, "mount listed");
      const seen = mountedIdentity(entry.source);
      assert.ok(seen, `identity of ${entry.source}`);
      assert.equal(seen.mountPoint, mnt);
      const bytes = Deno.readFileSync(image);
      const same = identityOf(bytes, "basic.erofs");
      assert.deepEqual(identityDifferences(seen.identity, same), []);
      assert.ok(seen.identity.rootMtimeMs?.length, "root mtime from stat");
      assert.equal(seen.identity.blocks, 342n);
      assert.equal(seen.identity.inodes, 331n);
      assert.notEqual(seen.identity.fsid, undefined, "this kernel reports the UUID in f_fsid");

      const lz4 = identityOf(Deno.readFileSync(`${FIXTURES}/basic-lz4.erofs`), "basic-lz4");
      assert.deepEqual(
        identityDifferences(seen.identity, lz4).filter((d) => d !== "build time"),
        ["UUID", "blocks 342 → 290"],
      );
      // Only the UUID differs: still another image.
      const otherUuid = bytes.slice();
      otherUuid[EROFS_SUPER_OFFSET + 48] ^= 0x5a;
      assert.deepEqual(identityDifferences(seen.identity, identityOf(otherUuid, "uuid")), ["UUID"]);
      // Only the build time differs (a rebuild of the same tree): the root mtime tells.
      const rebuilt = bytes.slice();
      new DataView(rebuilt.buffer).setBigUint64(EROFS_SUPER_OFFSET + 24, 1_800_000_000n, true);
      assert.deepEqual(
        identityDifferences(seen.identity, identityOf(rebuilt, "rebuilt")),
        ["build time"],
      );
      assert.equal(mountedIdentity("/dev/nbd-not-mounted"), undefined);
    } finally {
      if (mounted) await run("umount", [mnt]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
