/**
 * The mount server's process settings (lib/daemon/server_spawn.ts): glibc's mmap threshold
 * above the fetch path's read buffers whatever the CLI inherited (the launchers set 128 KiB
 * for the CLI); V8 without its JIT (no writable or anonymous executable memory in a root
 * process that parses registry bytes) and with its young generation capped, the caller's V8
 * flags after those.
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox, mountServersOf, writableExecutableMappings } from "./_support/mounts.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";

async function mountedServer(
  callerV8Flags: string | undefined,
  check: (pid: number, environ: string[]) => void,
) {
  const sandbox = await mountSandbox();
  try {
    const env: Record<string, string> = { ...sandbox.env, MALLOC_MMAP_THRESHOLD_: "131072" };
    if (callerV8Flags === undefined) delete env.DENO_V8_FLAGS;
    else env.DENO_V8_FLAGS = callerV8Flags;
    const result = await runCli(
      ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
      { env },
    );
    assertSuccess(result);
    const servers = mountServersOf(sandbox.runtimeDir);
    assert.equal(servers.length, 1, sandbox.serverLogs());
    check(servers[0], Deno.readTextFileSync(`/proc/${servers[0]}/environ`).split("\0"));
    assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
  } finally {
    await sandbox.cleanup();
  }
}

Deno.test({
  name:
    "mount: the server gets its own glibc mmap and trim thresholds, V8 without JIT, semispace cap",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    await mountedServer(undefined, (pid, environ) => {
      assert(environ.includes("MALLOC_MMAP_THRESHOLD_=524288"), environ.join(" "));
      assert(environ.includes("MALLOC_TRIM_THRESHOLD_=2097152"), environ.join(" "));
      const inherited = Deno.env.get("DENO_V8_FLAGS");
      const expected = `--jitless,--max-semi-space-size=1${inherited ? `,${inherited}` : ""}`;
      assert(environ.includes(`DENO_V8_FLAGS=${expected}`), environ.join(" "));
      // What the flag is for: nothing in the root server a JIT (or an exploit) writes code into.
      assert.deepEqual(writableExecutableMappings(pid), []);
    });
  },
});

Deno.test({
  name: "mount: V8 flags the caller set come after the server's own (the caller's win)",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    await mountedServer("--max-semi-space-size=2", (_pid, environ) => {
      assert(
        environ.includes("DENO_V8_FLAGS=--jitless,--max-semi-space-size=1,--max-semi-space-size=2"),
        environ.join(" "),
      );
    });
  },
});
