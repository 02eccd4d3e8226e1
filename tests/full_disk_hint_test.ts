/**
 * A full file system's hint names the options of the command that choose where it writes, and
 * no options a command does not have: `mount` with its runtime dir on a full tmpfs was told to
 * "write elsewhere (-o, --tmpdir)" (its -o is mount options; it has no --tmpdir).
 */
import assert from "node:assert/strict";
import { FIXTURES, requires, root } from "./_support/requires.ts";
import { assertCliError, runCli } from "./_support/cli.ts";
import { mountSandbox, mountsBelow } from "./_support/mounts.ts";

/** A tmpfs at a new directory, filled to its last block. */
async function fullTmpfs(): Promise<{ dir: string; [Symbol.asyncDispose](): Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-full-" });
  const mounted = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", dir],
  }).output();
  assert(mounted.success, "mount tmpfs");
  const filler = await Deno.open(`${dir}/filler`, { write: true, create: true });
  try {
    for (;;) await filler.write(new Uint8Array(4096));
  } catch {
    /* full */
  } finally {
    filler.close();
  }
  return {
    dir,
    async [Symbol.asyncDispose]() {
      await new Deno.Command("umount", { args: ["-l", dir] }).output();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test({
  name: "full disk: mount's runtime dir full: a hint without -o/--tmpdir, nothing left mounted",
  ignore: requires(root()),
  async fn() {
    await using full = await fullTmpfs();
    const sandbox = await mountSandbox();
    try {
      Deno.mkdirSync(sandbox.target, { recursive: true });
      const result = await runCli(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
        { env: { ...sandbox.env, EROFS_OCI_RUNTIME_DIR: full.dir }, timeoutMs: 60_000 },
      );
      assertCliError(result, 1, /No space left on device/);
      assert.match(result.stderr, /hint: free space there \(or inodes: `df -i`\)$/m, result.stderr);
      assert.deepEqual(mountsBelow(sandbox.target), [], "nothing left mounted");
    } finally {
      await sandbox.cleanup();
    }
  },
});
