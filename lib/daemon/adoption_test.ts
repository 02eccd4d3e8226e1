import assert from "node:assert/strict";
import { madeFrom, recordOrParent } from "./adoption.ts";
import type { MountEntry } from "../sys/mountinfo.ts";

/**
 * A command that writes its record and exits right after the first of the server's two reads
 * (the server preempted, or in a garbage collection, between them on a loaded host).
 */
function recordsAndExitsBetweenReads() {
  const world = { recorded: false, alive: true };
  const read = (key: "recorded" | "alive") => () => {
    const value = world[key];
    world.recorded = true;
    world.alive = false;
    return value;
  };
  return { parentAlive: read("alive"), recorded: read("recorded") };
}

Deno.test("recordOrParent: a record written just before the command exited is seen", () => {
  // CI (oci_broken_reply_test, parallel run): read as "not recorded" then "parent gone", and
  // the server detached the mount `mount` had just recorded and reported (exit 0).
  const { parentAlive, recorded } = recordsAndExitsBetweenReads();
  assert.notEqual(recordOrParent(parentAlive, recorded), "orphaned");
});

Deno.test("recordOrParent: recorded, still waiting, or orphaned", () => {
  assert.equal(recordOrParent(() => true, () => true), "recorded");
  assert.equal(recordOrParent(() => false, () => true), "recorded");
  assert.equal(recordOrParent(() => true, () => false), "waiting");
  assert.equal(recordOrParent(() => false, () => false), "orphaned");
});

const RUN = "/run/erofs-oci/mounts/aaaa/";
const OTHER = "/run/erofs-oci/mounts/bbbb/";

function entry(fsType: string, source: string, superOptions = "ro"): MountEntry {
  return {
    id: 900,
    parentId: 1,
    major: 0,
    minor: 99,
    mountPoint: "/mnt/app",
    options: "ro,nosuid,nodev",
    fsType,
    source,
    superOptions,
  };
}

Deno.test("madeFrom: only mounts of this mount's exports or layer dirs are its own", () => {
  const exports = [`${RUN}fuse-0/blob`, "/dev/nbd3"];
  assert.ok(madeFrom(entry("erofs", `${RUN}fuse-0/blob`), RUN, exports));
  assert.ok(madeFrom(entry("erofs", "/dev/nbd3"), RUN, exports));
  assert.ok(!madeFrom(entry("erofs", `${OTHER}fuse-0/blob`), RUN, exports), "another mount's");
  assert.ok(!madeFrom(entry("erofs", "/dev/nbd4"), RUN, exports));
  assert.ok(!madeFrom(entry("tmpfs", "tmpfs"), RUN, exports));
  const overlay = (lower: string) =>
    entry("overlay", "erofs-oci", `ro,lowerdir=${lower},redirect_dir=nofollow,metacopy=off`);
  assert.ok(madeFrom(overlay(`${RUN}layer-1:${RUN}layer-0`), RUN, exports));
  assert.ok(!madeFrom(overlay(`${OTHER}layer-1:${OTHER}layer-0`), RUN, exports));
  // An overlay's source names its mount: relative lower dirs (100+ layers, or a runtime dir
  // with ',' in it) of another mount's overlay are not this one's.
  const named = (source: string) =>
    entry("overlay", source, "ro,lowerdir=layer-1:layer-0,redirect_dir=nofollow");
  assert.ok(madeFrom(named("erofs-oci:0123abcd"), RUN, exports, "0123abcd"));
  assert.ok(!madeFrom(named("erofs-oci:99999999"), RUN, exports, "0123abcd"));
});
