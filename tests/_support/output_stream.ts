import { waitFor } from "./wait.ts";
import { FIXTURES, REPO_ROOT } from "./requires.ts";
import { type MountSandbox, mountServersOf } from "./mounts.ts";

/**
 * Text the process writes, as it comes; `wait` resolves at the first output matching `pattern`
 * and fails when the output ends without it, or after `timeoutMs` (waitFor's default: 30 s).
 */
export function collect(stream: ReadableStream<Uint8Array>) {
  let text = "";
  let ended = false;
  const done = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
    ended = true;
    return text;
  })();
  return {
    done,
    wait: async (pattern: RegExp, timeoutMs?: number) => {
      await waitFor(`output matching ${pattern}`, () => pattern.test(text) || ended, timeoutMs);
      if (!pattern.test(text)) throw new Error(`the output ended without ${pattern}:\n${text}`);
    },
  };
}

/**
 * `erofs-oci mount basic.erofs DIR --backend BACKEND --foreground` in a session and process
 * group of its own (as a terminal gives a foreground job; the group's id is `child.pid`), its
 * output collected. `cleanUp` (for a finally block) SIGKILLs the group and the sandbox's servers
 * and waits for the output to end.
 */
export function startForegroundMount(sandbox: MountSandbox, backend: "fuse" | "nbd") {
  const child = new Deno.Command("setsid", {
    args: [
      `${REPO_ROOT}/scripts/erofs-oci-dev`,
      "mount",
      `${FIXTURES}/basic.erofs`,
      sandbox.target,
      "--backend",
      backend,
      "--foreground",
    ],
    env: sandbox.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout = collect(child.stdout);
  const stderr = collect(child.stderr);
  const running = Promise.all([child.status, stdout.done, stderr.done]);
  return {
    child,
    stdout,
    stderr,
    running,
    async cleanUp(): Promise<void> {
      for (const pid of [-child.pid, ...mountServersOf(sandbox.runtimeDir)]) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* exited */ }
      }
      await running.catch(() => {});
    },
  };
}
