/**
 * A FUSE mount whose server is held (lib/test_pause.ts) once its keeper runs: the window
 * between the keeper starting and the mount being ready, for tests that kill the server there.
 */
import assert from "node:assert/strict";
import { TEST_PAUSE_ENV } from "../../lib/test_pause.ts";
import { type CliResult, runCli } from "./cli.ts";
import { mountServersOf, runningKeepersOf } from "./mounts.ts";
import { FIXTURES } from "./requires.ts";
import { waitFor } from "./wait.ts";

/** `mount basic.erofs TARGET --backend fuse`, its server paused at "fuse-keeper-started". */
export function mountPausedAtKeeper(
  sandbox: { target: string; env: Record<string, string> },
): Promise<CliResult> {
  return runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
    env: { ...sandbox.env, [TEST_PAUSE_ENV]: "fuse-keeper-started" },
    timeoutMs: 90_000,
  });
}

/** Waits for the paused mount's keeper; returns the pid of its one (paused) server. */
export async function pausedServerOf(runtimeDir: string): Promise<number> {
  await waitFor("the keeper", () => runningKeepersOf(runtimeDir).length > 0);
  const servers = mountServersOf(runtimeDir);
  assert.equal(servers.length, 1, "one paused server");
  return servers[0];
}
