/**
 * An idle mount costs no wake-ups: its FUSE reader thread blocks in poll() with no timeout (a
 * stop comes through a pipe) instead of waking five times a second, so a host with many mounts
 * left idle for days spends nothing on them. Counted with the kernel's per-thread voluntary
 * context switches of the mount's server.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox, serverPids } from "./_support/mounts.ts";

/** Voluntary context switches per thread of `pid` (thread id → count). */
function wakeUps(pid: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const status = Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/status`);
      counts.set(task.name, Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1]));
    } catch { /* thread ended */ }
  }
  return counts;
}

Deno.test({
  name: "idle FUSE mount: its server's threads wake at most a few times in 3 s (no polling)",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      assertSuccess(
        await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      const [server] = serverPids(sandbox.runtimeDir);
      assert(server, sandbox.serverLogs());
      // Read the tree once (the reader thread serves it), then leave the mount alone.
      for (const entry of Deno.readDirSync(sandbox.target)) assert.ok(entry.name);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const before = wakeUps(server);
      await new Promise((resolve) => setTimeout(resolve, 3000));
      const after = wakeUps(server);
      const woke = [...after].map(([tid, n]) => [tid, n - (before.get(tid) ?? 0)] as const);
      const total = woke.reduce((sum, [, n]) => sum + n, 0);
      // A reader polling every 200 ms alone made 15 here; the runtime's own timers a few.
      assert.ok(total <= 6, `wake-ups in 3 s per thread: ${JSON.stringify(woke)}`);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
    }
  },
});
