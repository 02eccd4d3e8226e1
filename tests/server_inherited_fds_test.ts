/**
 * A mount's server and its FUSE keeper outlive the `mount` command, so they must not hold
 * descriptors the command inherited from its caller: `flock LOCK erofs-oci mount …` would keep
 * the lock for as long as the mount lives (a benchmark's lock was held that way for 15 min).
 */
import assert from "node:assert/strict";
import { FIXTURES, path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox, runningKeepersOf, serverPids } from "./_support/mounts.ts";

/** The targets of `pid`'s open descriptors (through /proc, as root). */
function openFiles(pid: number): string[] {
  const out: string[] = [];
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      out.push(Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`));
    } catch { /* closed meanwhile */ }
  }
  return out;
}

Deno.test({
  name: "mount run with an inherited descriptor (flock's lock): neither server nor keeper holds it",
  ignore: requires(root(), path("/dev/fuse"), path("/usr/bin/flock")),
  async fn() {
    const sandbox = await mountSandbox();
    const lock = `${sandbox.target}.lock`;
    try {
      Deno.writeTextFileSync(lock, "");
      // flock(1) runs the command with the lock's descriptor open (not close-on-exec).
      const mounted = await new Deno.Command("flock", {
        args: [
          lock,
          `${REPO_ROOT}/scripts/erofs-oci-dev`,
          "mount",
          `${FIXTURES}/basic.erofs`,
          sandbox.target,
          "--backend",
          "fuse",
        ],
        env: sandbox.env,
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert(mounted.success, new TextDecoder().decode(mounted.stderr));
      const [server] = serverPids(sandbox.runtimeDir);
      const keepers = runningKeepersOf(sandbox.runtimeDir);
      assert(server, "the mount's server");
      assert.equal(keepers.length, 1, sandbox.serverLogs());
      for (const pid of [server, ...keepers]) {
        assert(!openFiles(pid).includes(lock), `pid ${pid} holds ${lock}`);
      }
      // And the lock is free while the mount lives.
      const taken = await new Deno.Command("flock", { args: ["--nonblock", lock, "true"] })
        .output();
      assert(taken.success, "the lock is free");
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      await Deno.remove(lock).catch(() => {});
    }
  },
});
