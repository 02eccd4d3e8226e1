/**
 * The mount server leaves the CLI's session itself (setsid first thing) instead of being
 * spawned `detached`, which made Deno fork the whole CLI: it must still end up in a session of
 * its own, apart from the `mount` that started it, so a hangup or Ctrl-C there never reaches it.
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox, mountServersOf } from "./_support/mounts.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";

/** Session id and process group id of `pid` (/proc/PID/stat fields 6 and 5). */
function sessionOf(pid: number | "self"): { sid: number; pgrp: number } {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { pgrp: Number(fields[2]), sid: Number(fields[3]) };
}

Deno.test({
  name: "mount: the server leads a session of its own, apart from the mount command's",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const result = await runCli(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
        { env: sandbox.env },
      );
      assertSuccess(result);
      const servers = mountServersOf(sandbox.runtimeDir);
      assert.equal(servers.length, 1, sandbox.serverLogs());
      const server = servers[0];
      const ours = sessionOf("self");
      const its = sessionOf(server);
      assert.equal(its.sid, server, `server ${server} is in session ${its.sid}, not its own`);
      assert.equal(its.pgrp, server, `server ${server} is in process group ${its.pgrp}`);
      assert.notEqual(its.sid, ours.sid);
      // By its own setsid (the request is in its initial environment), not a forking spawn.
      const environ = Deno.readTextFileSync(`/proc/${server}/environ`).split("\0");
      assert(environ.includes("EROFS_OCI_SERVER_NEW_SESSION=1"), "spawned with the request");
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
    }
  },
});
