import assert from "node:assert/strict";
import { recordOrParent } from "./adoption.ts";

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
