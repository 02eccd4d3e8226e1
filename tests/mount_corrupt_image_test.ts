/**
 * An EROFS file whose magic is right but whose body is cut short: the kernel refuses it with
 * EBADMSG ("Bad message"), which alone tells a user nothing; the hint now says the image is
 * corrupt or truncated. The failed mount leaves nothing behind.
 */
import assert from "node:assert/strict";
import { assertCliError, describe, runCli } from "./_support/cli.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { mountSandbox, mountsBelow, mountServersOf, runningKeepersOf } from "./_support/mounts.ts";

Deno.test({
  name: "mount of a truncated EROFS file: 'corrupt or truncated' hint, nothing left",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const truncated = `${sandbox.runtimeDir}-truncated.erofs`;
      const whole = await Deno.readFile(`${FIXTURES}/basic.erofs`);
      await Deno.writeFile(truncated, whole.subarray(0, 3000)); // the superblock, not the root
      try {
        const result = await runCli(
          ["mount", truncated, sandbox.target, "--backend", "fuse"],
          { env: sandbox.env },
        );
        assertCliError(result, 1, /cannot mount EROFS/);
        assert.match(result.stderr, /hint: the image is corrupt or truncated/, describe(result));
        assert.deepEqual(mountsBelow(sandbox.target), []);
        assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
        assert.deepEqual(mountServersOf(sandbox.runtimeDir), []);
        assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), []);
      } finally {
        await Deno.remove(truncated);
      }
    } finally {
      await sandbox.cleanup();
    }
  },
});
