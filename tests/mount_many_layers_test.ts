/**
 * Images with many layers: 150 (more than mount(2)'s one-page option string holds as absolute
 * lower dirs under the runtime dir: overlayfs got a cut path and the mount failed with ENOENT)
 * mount; more than an overlay here can stack are refused before anything is mounted (1000
 * layers took 80 s of exports and layer mounts to fail).
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, describe, runCli } from "./_support/cli.ts";
import { mountSandbox, mountsBelow, serverPids } from "./_support/mounts.ts";
import { writeOciLayout } from "./_support/oci_layout_writer.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";
import { withTempDir } from "./_support/temp_dir.ts";

Deno.test({
  name: "mount of 150 layers works; more than an overlay stacks is refused up front",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () =>
    withTempDir("erofs-oci-many-layers-", async (work) => {
      const layer = await Deno.readFile(`${FIXTURES}/layer1.erofs`);
      await writeOciLayout(
        `${work}/many`,
        Array.from({ length: 150 }, () => ({ bytes: layer, mediaType: EROFS_MEDIA_TYPE })),
      );
      await writeOciLayout(
        `${work}/too-many`,
        Array.from({ length: 600 }, () => ({ bytes: layer, mediaType: EROFS_MEDIA_TYPE })),
      );
      const sandbox = await mountSandbox();
      try {
        const mounted = await runCli(["mount", `oci:${work}/many:v1`, sandbox.target], {
          env: sandbox.env,
          timeoutMs: 300_000,
        });
        assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
        assert.match(mounted.stdout, /150 layers/);
        assert.ok([...Deno.readDirSync(sandbox.target)].length > 0, "the merged tree is there");
        assertSuccess(
          await runCli(["umount", sandbox.target], { env: sandbox.env, timeoutMs: 300_000 }),
        );
        assert.deepEqual(mountsBelow(sandbox.target), []);

        const refused = await runCli(["mount", `oci:${work}/too-many:v1`, sandbox.target], {
          env: sandbox.env,
          timeoutMs: 120_000,
        });
        assertCliError(refused, 1, /has 600 layers: an overlay here stacks at most \d+/);
        assert.deepEqual(mountsBelow(sandbox.target), []);
        assert.deepEqual(serverPids(sandbox.runtimeDir), [], "no server left");
      } finally {
        await sandbox.cleanup();
      }
    }),
});
