/**
 * `mount --foreground` stopped the way a foreground program is (Ctrl-C to its process group,
 * SIGTERM to it): DIR is unmounted and the server stopped, nothing left. Before, the server
 * took the terminal's Ctrl-C itself, stopped (its FUSE file still busy under DIR) and the CLI
 * returned, leaving DIR mounted on a FUSE file nobody served (`list`: dead).
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import {
  mountSandbox,
  mountsBelow,
  mountServersOf,
  runningKeepersOf,
  serverPids,
} from "./_support/mounts.ts";
import { waitFor } from "./_support/wait.ts";
import { startForegroundMount } from "./_support/output_stream.ts";

const cases = [
  { how: "SIGINT to the process group", when: "once mounted" },
  { how: "SIGTERM to the CLI", when: "once mounted" },
  // What systemd's stop does (KillMode=control-group): the server gets it too.
  { how: "SIGTERM to the process group", when: "once mounted" },
  // DIR is mounted a moment before the CLI's mount is complete. A SIGTERM in between was caught
  // by the mount's own interrupt scope, which nobody read any more: the CLI then waited forever,
  // DIR still mounted. Now it is undone (exit 130) or, once complete, unmounted (exit 0).
  { how: "SIGTERM to the CLI", when: "as DIR appears" },
] as const;

for (const { how, when } of cases) {
  Deno.test({
    name: `mount --foreground, ${how} ${when}: DIR unmounted, server stopped, nothing left`,
    ignore: requires(root(), path("/dev/fuse"), command("setsid")),
    async fn() {
      const sandbox = await mountSandbox();
      const { child, stdout, running, cleanUp } = startForegroundMount(sandbox, "fuse");
      try {
        if (when === "once mounted") {
          await stdout.wait(/^mounted /m);
        } else {
          await waitFor("DIR mounted", () => mountsBelow(sandbox.target).length > 0);
        }
        if (how === "SIGTERM to the CLI") Deno.kill(child.pid, "SIGTERM");
        else if (how === "SIGTERM to the process group") Deno.kill(-child.pid, "SIGTERM");
        else Deno.kill(-child.pid, "SIGINT");
        // A server left running holds the CLI's stderr: the output would never end.
        let timer: ReturnType<typeof setTimeout> | undefined;
        const [status, out, err] = await Promise.race([
          running,
          new Promise<never>((_, reject) =>
            timer = setTimeout(() => reject(new Error("the CLI's output never ended")), 30_000)
          ),
        ]).finally(() => clearTimeout(timer));
        const said = `exit ${status.code}\n${out}\n${err}`;
        if (when === "once mounted" || status.code === 0) {
          assert.equal(status.code, 0, said);
          assert.match(out + err, /unmounted /, said);
        } else {
          assert.equal(status.code, 130, said);
          assert.match(err, /mount interrupted: nothing is left mounted/, said);
        }
        assert.deepEqual(mountsBelow(sandbox.target), [], "DIR is unmounted");
        assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
        assert.deepEqual(mountServersOf(sandbox.runtimeDir), []);
        assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), []);
        assert.deepEqual(serverPids(sandbox.runtimeDir), [], "no state left");
      } finally {
        await cleanUp();
        await sandbox.cleanup();
      }
    },
  });
}
