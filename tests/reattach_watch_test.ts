/**
 * `erofs-oci reattach --watch` on this host (FUSE): the server of a mount is killed with
 * SIGKILL while a 48 MiB read has a request in flight; the watcher notices within 2 s (pidfd),
 * starts a server that takes the connection over, and the reader finishes with the exact
 * sha256 with nobody running `reattach`. A clean `umount` is not undone by the watcher.
 */
import assert from "node:assert/strict";
import { path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox, mountsBelow, pidAlive, serverPids } from "./_support/mounts.ts";
import { keeperPids, killKeepers, killMidRead, withBigImage } from "./_support/kill_mid_read.ts";

/** A running `reattach --watch` whose output lines are collected. */
export interface Watcher {
  lines: string[];
  /** Resolves with the first line matching `pattern` (rejects after `timeoutMs`). */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<{ line: string; atMs: number }>;
  /** Forgets the lines seen so far. */
  clear(): void;
  stop(): Promise<void>;
}

export function startWatcher(env: Record<string, string>, cli?: string[]): Watcher {
  const [program, ...args] = cli ?? [`${REPO_ROOT}/scripts/erofs-oci-dev`];
  const child = new Deno.Command(program, {
    args: [...args, "reattach", "--watch"],
    env: { DOCKER_CONFIG: "/nonexistent/erofs-oci-test-docker-config", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: { line: string; atMs: number }[] = [];
  const pump = (async () => {
    let rest = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      rest += chunk;
      const parts = rest.split("\n");
      rest = parts.pop()!;
      for (const line of parts) lines.push({ line, atMs: Date.now() });
    }
  })();
  const stderr = new Response(child.stderr).text();
  return {
    get lines() {
      return lines.map((l) => l.line);
    },
    clear() {
      lines.length = 0;
    },
    async waitFor(pattern, timeoutMs = 120_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = lines.find((l) => pattern.test(l.line));
        if (found) return found;
        if (Date.now() > deadline) {
          throw new Error(`watcher never said ${pattern}: ${lines.map((l) => l.line).join("\n")}`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }, 10_000);
      await child.status;
      clearTimeout(timer);
      await pump.catch(() => {});
      const errors = await stderr;
      if (errors.trim()) console.log(`watcher stderr: ${errors}`);
    },
  };
}

Deno.test({
  name:
    "reattach --watch (FUSE): kill -9 mid-read, the reader finishes with exact bytes unattended",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    await withBigImage(async (registry, image, sha256, gate) => {
      assertSuccess(
        await runCli(["push", `${registry.host}/watch/big:v1`, image], { timeoutMs: 120_000 }),
      );
      const sandbox = await mountSandbox();
      let keepers: number[] = [];
      const watcher = startWatcher(sandbox.env);
      try {
        await watcher.waitFor(/watching/, 60_000);
        assertSuccess(
          await runCli(
            [
              "mount",
              `${gate.proxy.host}/watch/big:v1`,
              sandbox.target,
              "--backend",
              "fuse",
            ],
            { env: sandbox.env, timeoutMs: 60_000 },
          ),
        );
        keepers = keeperPids(sandbox.runtimeDir);
        // Give the watcher a scan to pick the new server up.
        await new Promise((r) => setTimeout(r, 1_500));

        {
          const { killedPid, killedAtMs, recoveredMs } = await killMidRead(
            sandbox.runtimeDir,
            gate,
            `${sandbox.target}/big.bin`,
            sha256,
            () => Promise.resolve(), // nobody reattaches: the watcher must
            { readerWaitsIn: "request_wait_answer" },
          );
          const noticed = await watcher.waitFor(new RegExp(`server ${killedPid} is gone`));
          const reactionMs = noticed.atMs - killedAtMs;
          console.log(`noticed in ${reactionMs} ms, reader done ${recoveredMs} ms after the kill`);
          assert.ok(reactionMs < 2_000, `the watcher took ${reactionMs} ms to notice`);
          await watcher.waitFor(/reattached: new server pid/);
          const [serverPid] = serverPids(sandbox.runtimeDir);
          assert.notEqual(serverPid, killedPid);
          assert.ok(pidAlive(serverPid));
          await new Promise((r) => setTimeout(r, 1_500)); // the watcher picks it up
          watcher.clear();
        }

        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
        await new Promise((r) => setTimeout(r, 2_500));
        assert.deepEqual(mountsBelow(sandbox.target), [], "the watcher did not revive the mount");
        assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
        assert.ok(!watcher.lines.some((l) => /reattaching/.test(l)), watcher.lines.join("\n"));
        assert.ok(!keepers.some(pidAlive), "keeper gone");
      } finally {
        await watcher.stop();
        await sandbox.cleanup();
        killKeepers(keepers);
      }
    });
  },
});
