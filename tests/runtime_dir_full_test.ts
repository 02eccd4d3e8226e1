/**
 * A runtime dir (a tmpfs) out of inodes at each step of a mount's start: the error names the
 * file it could not make and says the dir has no free inodes. Before, the control socket's
 * refusal came without a path ("No space left on device", hint "free space there"), and a
 * server that could not open its log died unheard ("exited (code 1) before it was ready").
 * Each failed start leaves nothing mounted and no server running.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { describe, runCli } from "./_support/cli.ts";
import { killMountServersOf, mountSandbox, mountsBelow, serverPids } from "./_support/mounts.ts";

Deno.test({
  name: "runtime dir out of inodes: the mount fails naming the file and the missing inodes",
  ignore: requires(root(), path("/dev/fuse"), path(`${FIXTURES}/layer1.erofs`, "fixtures")),
  async fn() {
    const sandbox = await mountSandbox();
    const tmpfs = `${sandbox.runtimeDir}-tmpfs`;
    Deno.mkdirSync(tmpfs, { mode: 0o700 });
    const env = { ...sandbox.env, EROFS_OCI_RUNTIME_DIR: tmpfs };
    const failures: string[] = [];
    try {
      // From too few inodes for anything to enough for the whole start: every step in turn.
      for (let inodes = 2; inodes <= 16; inodes++) {
        const mounted = await new Deno.Command("mount", {
          args: ["-t", "tmpfs", "-o", `size=1m,mode=0700,nr_inodes=${inodes}`, "tmpfs", tmpfs],
        }).output();
        assert.ok(mounted.success, "tmpfs mounted");
        try {
          const result = await runCli(
            ["mount", "--backend", "fuse", `${FIXTURES}/layer1.erofs`, sandbox.target],
            { env, timeoutMs: 60_000 },
          );
          if (result.code === 0) {
            const unmounted = await runCli(["umount", sandbox.target], { env });
            assert.equal(unmounted.code, 0, describe(unmounted));
            continue;
          }
          failures.push(result.stderr);
          assert.equal(result.code, 1, describe(result));
          assert.doesNotMatch(result.stderr, /before it was ready/, describe(result));
          assert.match(result.stderr, new RegExp(`${tmpfs}\\S*: No space left on device`));
          assert.match(result.stderr, /has no free inodes|inodes: `df -i`/, describe(result));
          assert.deepEqual(mountsBelow(sandbox.target), [], describe(result));
          assert.deepEqual(serverPids(tmpfs), [], describe(result));
        } finally {
          killMountServersOf(tmpfs);
          await runCli(["umount", sandbox.target], { env }).catch(() => {});
          await new Deno.Command("umount", { args: [tmpfs] }).output();
        }
      }
      // Both steps that failed unheard or without a path are among those seen.
      assert.ok(failures.some((e) => /server log/.test(e)), failures.join("\n"));
      assert.ok(failures.some((e) => /control socket/.test(e)), failures.join("\n"));
    } finally {
      await sandbox.cleanup();
      await Deno.remove(tmpfs, { recursive: true }).catch(() => {});
    }
  },
});
