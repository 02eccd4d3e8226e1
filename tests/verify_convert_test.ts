/**
 * `convert` writes a chunk-digest table per EROFS layer, names it on the layer descriptor and
 * lists it in an artifact referring to the image; the converted image mounts with
 * `--require-verified` (real docker-registry, FUSE).
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { getManifest, pushImage } from "./_support/oci_raw.ts";
import { manifestOf, mountSandbox } from "./_support/mounts.ts";

const TAR = "application/vnd.oci.image.layer.v1.tar";

Deno.test({
  name: "convert: each EROFS layer gets a bound chunk-digest table; the image mounts verified",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry"), command("python3")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const tar = Deno.readFileSync(`${FIXTURES}/layer.tar`);
    await pushImage(registry, "src/app", "v1", [{ bytes: tar, mediaType: TAR }]);
    const sandbox = await mountSandbox();
    const env = {
      ...sandbox.env,
      EROFS_OCI_CACHE_DIR: `${sandbox.runtimeDir}-cache`,
      EROFS_OCI_STATE_DIR: `${sandbox.runtimeDir}-state`,
    };
    const cli = (args: string[]) => runCli(args, { env, timeoutMs: 120_000 });
    try {
      assertSuccess(
        await cli(["convert", `${registry.host}/src/app:v1`, `${registry.host}/dst/app:v1`]),
      );
      const manifest = (await getManifest(registry, "dst/app", "v1")).json as {
        layers: { annotations?: Record<string, string> }[];
      };
      assert.match(
        manifest.layers[0].annotations?.["io.github.erofs-oci.chunk-digests"] ?? "",
        /^sha256:[0-9a-f]{64}$/,
      );
      const inspected = await cli(["inspect", `${registry.host}/dst/app:v1`, "--json"]);
      assertSuccess(inspected);
      assert.equal(JSON.parse(inspected.stdout).layers[0].chunkTable.bound, true);
      const mounted = await cli([
        "mount",
        `${registry.host}/dst/app:v1`,
        sandbox.target,
        "--backend",
        "fuse",
        "--require-verified",
      ]);
      assertSuccess(mounted);
      assert.doesNotMatch(mounted.stderr, /not verified|not bound/);
      // Every file reads through the verified source.
      assert.match(await manifestOf(sandbox.target), /\S/);
      let files = 0;
      const walk = async (dir: string) => {
        for await (const entry of Deno.readDir(dir)) {
          if (entry.isDirectory) await walk(`${dir}/${entry.name}`);
          else if (entry.isFile) {
            await Deno.readFile(`${dir}/${entry.name}`);
            files++;
          }
        }
      };
      await walk(sandbox.target);
      assert(files > 0, "the converted image has files");
      assertSuccess(await cli(["umount", sandbox.target]));
    } finally {
      await sandbox.cleanup();
      await Deno.remove(env.EROFS_OCI_CACHE_DIR, { recursive: true }).catch(() => {});
      await Deno.remove(env.EROFS_OCI_STATE_DIR, { recursive: true }).catch(() => {});
    }
  },
});
