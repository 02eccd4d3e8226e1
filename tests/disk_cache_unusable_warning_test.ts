/**
 * A disk cache directory that cannot be used (here: EROFS_OCI_CACHE_DIR names a regular file)
 * is one warning in the CLI's format, `erofs-oci: warning: …`; it was printed as bare text.
 * The mount goes on with the memory cache.
 */
import assert from "node:assert/strict";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { startRegistry } from "./_support/registry.ts";

Deno.test({
  name: "mount with an unusable disk cache dir: an 'erofs-oci: warning:' line, mounted anyway",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const image = `${registry.host}/cache-warning/app:v1`;
    assertSuccess(await runCli(["push", image, `${FIXTURES}/basic.erofs`, "--plain-http"]));
    const sandbox = await mountSandbox();
    const notADir = `${sandbox.runtimeDir}-cache-file`;
    try {
      await Deno.writeTextFile(notADir, "x");
      const env = { ...sandbox.env, EROFS_OCI_CACHE_DIR: notADir };
      const result = await runCli(
        ["mount", image, sandbox.target, "--backend", "fuse", "--plain-http"],
        { env },
      );
      assertSuccess(result);
      assert.match(
        result.stderr,
        /^erofs-oci: warning: disk cache .* unusable \(/m,
        describe(result),
      );
      assert.doesNotMatch(result.stderr, /^disk cache/m, describe(result));
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
    } finally {
      await Deno.remove(notADir).catch(() => {});
      await sandbox.cleanup();
    }
  },
});
