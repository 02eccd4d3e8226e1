/**
 * The mount server's memory settings (lib/daemon/server_spawn.ts): glibc's mmap threshold
 * above the fetch path's read buffers whatever the CLI inherited (the launchers set 128 KiB
 * for the CLI), V8's young generation capped unless the caller chose V8 flags.
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox, mountServersOf } from "./_support/mounts.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";

Deno.test({
  name: "mount: the server gets its own glibc mmap and trim thresholds, and V8's semispace cap",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const env = { ...sandbox.env, MALLOC_MMAP_THRESHOLD_: "131072" };
      delete (env as Record<string, string>).DENO_V8_FLAGS;
      const result = await runCli(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
        { env },
      );
      assertSuccess(result);
      const servers = mountServersOf(sandbox.runtimeDir);
      assert.equal(servers.length, 1, sandbox.serverLogs());
      const environ = Deno.readTextFileSync(`/proc/${servers[0]}/environ`).split("\0");
      assert(environ.includes("MALLOC_MMAP_THRESHOLD_=524288"), environ.join(" "));
      assert(environ.includes("MALLOC_TRIM_THRESHOLD_=2097152"), environ.join(" "));
      if (Deno.env.get("DENO_V8_FLAGS") === undefined) {
        assert(environ.includes("DENO_V8_FLAGS=--max-semi-space-size=1"), environ.join(" "));
      }
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
    }
  },
});
