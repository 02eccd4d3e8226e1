/**
 * The mount id `mount` records for its target (newMountOn) is that of the mount on the target,
 * also when another mount was made meanwhile beside it on the same file system: tests mount
 * in sibling directories of /tmp all the time in a parallel run. The last new mount under the
 * same parent was taken before, so `umount` of one unmounted the other and left its own
 * (trace_interrupt_test: "the trace's mount is gone"; trace_memory_cache_test: a trace cut
 * short when its mount vanished under the command). Also when the target's mount got the id of
 * a mount that ended meanwhile: the kernel hands freed ids out again at once, and an "id not
 * there before" rule then found nothing (CI: umount by a swapped path refused).
 */
import assert from "node:assert/strict";
import { requires, root } from "./_support/requires.ts";
import { mountsBelow } from "./_support/mounts.ts";
import { checkMountTarget, newMountOn, releaseMountTarget } from "../lib/mount/target_dir.ts";
import { findMount } from "../lib/sys/mountinfo.ts";

async function mountTmpfs(dir: string): Promise<void> {
  const out = await new Deno.Command("mount", { args: ["-t", "tmpfs", "erofs-oci-test", dir] })
    .output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
}

Deno.test({
  name: "newMountOn: a mount made beside the target meanwhile is not taken for the target's",
  ignore: requires(root()),
  async fn() {
    const base = await Deno.makeTempDir({ prefix: "erofs-oci-new-mount-" });
    const ours = `${base}/ours`, beside = `${base}/beside`;
    Deno.mkdirSync(ours);
    Deno.mkdirSync(beside);
    const target = checkMountTarget(ours);
    try {
      await mountTmpfs(ours);
      // Made after ours, before ours is looked up: newer, and under the same parent mount.
      await mountTmpfs(beside);
      const besideId = findMount(beside)!.id;
      assert.equal(findMount(beside)!.parentId, target.identity.mountId, "same parent mount");
      assert.equal(
        newMountOn(target, { fsType: "tmpfs", source: "erofs-oci-test" })?.id,
        findMount(ours)!.id,
      );
      assert.notEqual(
        newMountOn(target, { fsType: "tmpfs", source: "erofs-oci-test" })?.id,
        besideId,
      );
    } finally {
      releaseMountTarget(target);
      for (const dir of [ours, beside]) {
        if (mountsBelow(dir).length) {
          await new Deno.Command("umount", { args: ["-l", dir] }).output();
        }
      }
      await Deno.remove(base, { recursive: true });
    }
  },
});

Deno.test({
  name: "newMountOn: the target's mount is found when it got the id of a mount that just ended",
  ignore: requires(root()),
  async fn() {
    const base = await Deno.makeTempDir({ prefix: "erofs-oci-new-mount-" });
    const ours = `${base}/ours`, spare = `${base}/spare`;
    Deno.mkdirSync(ours);
    Deno.mkdirSync(spare);
    const target = checkMountTarget(ours);
    try {
      await mountTmpfs(spare); // there when `mount` looked at the mounts before its own
      const spareId = findMount(spare)!.id;
      await new Deno.Command("umount", { args: [spare] }).output();
      await mountTmpfs(ours);
      const oursId = findMount(ours)!.id;
      console.log(`spare had id ${spareId}, ours got ${oursId}`);
      assert.equal(newMountOn(target, { fsType: "tmpfs", source: "erofs-oci-test" })?.id, oursId);
    } finally {
      releaseMountTarget(target);
      for (const dir of [ours, spare]) {
        if (mountsBelow(dir).length) {
          await new Deno.Command("umount", { args: ["-l", dir] }).output();
        }
      }
      await Deno.remove(base, { recursive: true });
    }
  },
});
