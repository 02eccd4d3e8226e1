/**
 * Ctrl-C (SIGINT) while `trace` runs its command: the command is stopped, the temporary mount
 * (overlay, layer and FUSE mounts, server, keeper) and its directory are removed, no trace is
 * written, exit 130. Before, trace died at once and left all of it mounted and serving.
 */
import assert from "node:assert/strict";
import { assertCliError, describe, runCli, startCli, stopCli } from "./_support/cli.ts";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import {
  mountSandbox,
  mountsBelow,
  mountServersOf,
  pidAlive,
  runningKeepersOf,
  serverPids,
} from "./_support/mounts.ts";
import { startRegistry } from "./_support/registry.ts";
import { exists, waitFor } from "./_support/wait.ts";

Deno.test({
  name: "SIGINT during trace: command stopped, temporary mount and dir removed, no trace",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const image = `${registry.host}/trace-interrupt/app:v1`;
    const pushed = await runCli(["push", image, `${FIXTURES}/basic.erofs`, "--plain-http"]);
    assert.equal(pushed.code, 0, describe(pushed));
    const sandbox = await mountSandbox();
    const output = `${sandbox.runtimeDir}-trace.json`;
    const pidFile = `${sandbox.runtimeDir}-cmd.pid`;
    const tracing = startCli(
      [
        "trace",
        image,
        "-o",
        output,
        "--backend",
        "fuse",
        "--plain-http",
        "--",
        "sh",
        "-c",
        `echo $$ > ${pidFile}; exec sleep 30`,
      ],
      sandbox.env,
    );
    let traceRoot: string | undefined;
    let commandPid: number | undefined;
    try {
      await waitFor(
        "the command under trace",
        () => exists(pidFile) && serverPids(sandbox.runtimeDir).length > 0,
      );
      commandPid = Number(Deno.readTextFileSync(pidFile).trim());
      traceRoot = JSON.parse(
        Deno.readTextFileSync(
          `${sandbox.runtimeDir}/mounts/${
            [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)][0].name
          }/state.json`,
        ),
      ).target;
      tracing.child.kill("SIGINT");
      const result = await tracing.result;
      // stderr holds trace's own lines (backend, unmounted) before the error: the last counts.
      const lines = result.stderr.trimEnd().split("\n");
      assertCliError({ ...result, stderr: lines[lines.length - 1] }, 130, /trace interrupted/);
      assert(!pidAlive(commandPid), `the command (pid ${commandPid}) was stopped`);
      assert(!exists(output), "no trace written");
      assert.deepEqual(mountsBelow(traceRoot!), [], "the trace's mount is gone");
      assert(!exists(traceRoot!.replace(/\/root$/, "")), "its temporary dir is gone");
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), []);
      assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), []);
    } finally {
      await stopCli(tracing);
      if (commandPid !== undefined && pidAlive(commandPid)) Deno.kill(commandPid, "SIGKILL");
      if (traceRoot && mountsBelow(traceRoot).length) {
        await new Deno.Command("umount", { args: ["-l", traceRoot] }).output();
        await Deno.remove(traceRoot.replace(/\/root$/, ""), { recursive: true }).catch(() => {});
      }
      for (const file of [output, pidFile]) await Deno.remove(file).catch(() => {});
      await sandbox.cleanup();
    }
  },
});
