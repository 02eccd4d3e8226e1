/**
 * Paths a user named are printed with their control characters escaped (`\x1b`, `\x0a`), as
 * list, umount and errors print them: mount's "mounted … at DIR" line and cache's header wrote
 * them raw (an escape sequence acted on the terminal, a newline split the line).
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { mountSandbox } from "./_support/mounts.ts";

Deno.test({
  name: "mount's line and cache's header escape control characters of the paths they print",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    const target = `${base}/e\x1b[31mred\nX`;
    Deno.mkdirSync(target);
    try {
      const mounted = await runCli([
        "mount",
        `${FIXTURES}/basic.erofs`,
        target,
        "--backend",
        "fuse",
      ], {
        env: sandbox.env,
        timeoutMs: 60_000,
      });
      assertSuccess(mounted);
      const line = mounted.stdout.trimEnd();
      assert.ok(![...line].some((c) => c.charCodeAt(0) < 0x20), JSON.stringify(line));
      assert.ok(line.includes("/e\\x1b[31mred\\x0aX"), line);
      assertSuccess(await runCli(["umount", target], { env: sandbox.env }));

      const cacheDir = `${base}/cache\tdir`;
      const listed = await runCli(["cache"], {
        env: { ...sandbox.env, EROFS_OCI_CACHE_DIR: cacheDir },
      });
      assertSuccess(listed);
      assert.ok(listed.stdout.startsWith(`${base}/cache\\x09dir: `), listed.stdout);
    } finally {
      // The sandbox's clean-up looks under its own mount point only.
      await runCli(["umount", "--all"], { env: sandbox.env }).catch(() => {});
      await sandbox.cleanup();
    }
  },
});
