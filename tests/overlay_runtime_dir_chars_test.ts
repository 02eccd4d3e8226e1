/**
 * A runtime directory whose path holds a character overlayfs reads specially in its options
 * (',' between options, ':' between lower dirs, '\' escaping): the layers' mount points are
 * under it, and every multi-layer mount failed, after its server had started, with "cannot use
 * a path containing …" naming an internal path. The lower dirs go by their names only now.
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import {
  expectedManifest,
  killMountServersOf,
  manifestOf,
  mountSandbox,
  mountsBelow,
} from "./_support/mounts.ts";
import { writeOciLayout } from "./_support/oci_layout_writer.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";

Deno.test({
  name:
    "a runtime dir with ',' ':' and '\\' in its path: a three-layer overlay mounts and unmounts",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    const runtimeDir = `${base}/run a,b:c\\d`;
    const env = { ...sandbox.env, EROFS_OCI_RUNTIME_DIR: runtimeDir };
    try {
      const layers = [];
      for (const name of ["layer1", "layer2", "layer3"]) {
        layers.push({
          bytes: await Deno.readFile(`${FIXTURES}/${name}.erofs`),
          mediaType: EROFS_MEDIA_TYPE,
        });
      }
      await writeOciLayout(`${base}/layout`, layers);
      assertSuccess(
        await runCli(
          ["mount", `oci:${base}/layout:v1`, sandbox.target, "--backend", "fuse"],
          { env, timeoutMs: 60_000 },
        ),
      );
      assert.equal(
        (await manifestOf(sandbox.target)).split("\n").slice(1).join("\n"),
        expectedManifest("merged.txt").split("\n").slice(1).join("\n"),
      );
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
      assert.deepEqual(mountsBelow(base), []);
    } finally {
      for (const dir of mountsBelow(base).reverse()) {
        await new Deno.Command("umount", { args: ["-l", dir], stderr: "null" }).output();
      }
      killMountServersOf(runtimeDir);
      await sandbox.cleanup();
    }
  },
});
