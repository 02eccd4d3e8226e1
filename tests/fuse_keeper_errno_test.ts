/**
 * Ending a FUSE keeper when no pidfd can be had: out of descriptors (EMFILE) it was taken for
 * a keeper already gone, and left running with the mount's FUSE connections. Only ESRCH means
 * gone; anything else is an error the caller reports.
 */
import assert from "node:assert/strict";
import { REPO_ROOT } from "./_support/requires.ts";
import { pidAlive } from "./_support/mounts.ts";

Deno.test("endKeeper out of descriptors: an error, not a keeper taken for gone", async () => {
  const keeper = new Deno.Command("sleep", { args: ["600"], stdout: "null" }).spawn();
  try {
    const out = await new Deno.Command(`${REPO_ROOT}/tools/bin/deno`, {
      args: ["run", "-A", `${REPO_ROOT}/tests/_support/end_keeper_child.ts`, String(keeper.pid)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const said = new TextDecoder().decode(out.stdout).trim();
    assert(out.success, new TextDecoder().decode(out.stderr));
    assert.match(said, /pidfd_open .*Too many open files/);
    assert(pidAlive(keeper.pid), "the keeper still runs (nothing signalled it)");
  } finally {
    keeper.kill("SIGKILL");
    await keeper.status;
  }
});

Deno.test("endKeeper of a process that is gone: returns quietly", async () => {
  const gone = new Deno.Command("true").spawn();
  await gone.status;
  const { endKeeper } = await import("../lib/daemon/fuse_recovery.ts");
  // Not a keeper should the pid have been reused: nothing is signalled either way.
  await endKeeper({ pid: gone.pid }, () => false);
});
