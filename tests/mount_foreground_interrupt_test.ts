/**
 * `mount --foreground` stopped the way a foreground program is (Ctrl-C to its process group,
 * SIGTERM to it): DIR is unmounted and the server stopped, nothing left. Before, the server
 * took the terminal's Ctrl-C itself, stopped (its FUSE file still busy under DIR) and the CLI
 * returned, leaving DIR mounted on a FUSE file nobody served (`list`: dead).
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import {
  mountSandbox,
  mountsBelow,
  mountServersOf,
  runningKeepersOf,
  serverPids,
} from "./_support/mounts.ts";
import { waitFor } from "./_support/wait.ts";

for (const how of ["SIGINT to the process group", "SIGTERM to the CLI"] as const) {
  Deno.test({
    name: `mount --foreground, ${how}: DIR unmounted, server stopped, nothing left`,
    ignore: requires(root(), path("/dev/fuse"), command("setsid")),
    async fn() {
      const sandbox = await mountSandbox();
      // Its own session and process group, as a terminal gives a foreground job.
      const child = new Deno.Command("setsid", {
        args: [
          `${REPO_ROOT}/scripts/erofs-oci-dev`,
          "mount",
          `${FIXTURES}/basic.erofs`,
          sandbox.target,
          "--backend",
          "fuse",
          "--foreground",
        ],
        env: sandbox.env,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const running = child.output();
      try {
        await waitFor("the mount", () => serverPids(sandbox.runtimeDir).length > 0);
        await waitFor("DIR mounted", () => mountsBelow(sandbox.target).length > 0);
        if (how === "SIGTERM to the CLI") Deno.kill(child.pid, "SIGTERM");
        else Deno.kill(-child.pid, "SIGINT");
        // A server left running holds the CLI's stderr: the output would never end.
        let timer: ReturnType<typeof setTimeout> | undefined;
        const out = await Promise.race([
          running,
          new Promise<never>((_, reject) =>
            timer = setTimeout(() => reject(new Error("the CLI's output never ended")), 30_000)
          ),
        ]).finally(() => clearTimeout(timer));
        const stderr = new TextDecoder().decode(out.stderr);
        const stdout = new TextDecoder().decode(out.stdout);
        assert.equal(out.code, 0, `exit ${out.code}\n${stdout}\n${stderr}`);
        assert.match(stdout + stderr, /unmounted /);
        assert.deepEqual(mountsBelow(sandbox.target), [], "DIR is unmounted");
        assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
        assert.deepEqual(mountServersOf(sandbox.runtimeDir), []);
        assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), []);
        assert.deepEqual(serverPids(sandbox.runtimeDir), [], "no state left");
      } finally {
        for (const pid of [-child.pid, ...mountServersOf(sandbox.runtimeDir)]) {
          try {
            Deno.kill(pid, "SIGKILL");
          } catch { /* exited */ }
        }
        await running.catch(() => {});
        await sandbox.cleanup();
      }
    },
  });
}
