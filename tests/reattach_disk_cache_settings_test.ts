/**
 * A server `reattach` starts keeps the mount's disk cache options: `reattach` runs with an
 * environment of its own (a systemd unit, another shell), and its server used to take the
 * disk cache settings from there. A `--no-disk-cache` mount then began filling the host's disk
 * cache after a crash, and `--fetch-all` stopped. Real FUSE mount, real registry, kill -9.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";
import { keeperPids, killKeepers, killServer } from "./_support/kill_mid_read.ts";

function cachedBlobFiles(cacheDir: string): string[] {
  try {
    return [...Deno.readDirSync(`${cacheDir}/blobs`)].map((entry) => entry.name);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
}

Deno.test({
  name:
    "reattach: the new server keeps the mount's --no-disk-cache, --disk-cache-size and cache dir",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry"), command("python3")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const fixture = await loadFixture("basic.erofs");
    await pushImage(registry, "rd/basic", "v1", [
      { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const sandbox = await mountSandbox();
    const cacheDir = sandbox.env.EROFS_OCI_CACHE_DIR;
    const elsewhere = `${cacheDir}-elsewhere`;
    let keepers: number[] = [];
    const stateOf = () => {
      const [id] = [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)].map((e) => e.name);
      return JSON.parse(Deno.readTextFileSync(`${sandbox.runtimeDir}/mounts/${id}/state.json`));
    };
    const mountKillReattach = async (options: string[]) => {
      assertSuccess(
        await runCli(
          ["mount", `${registry.host}/rd/basic:v1`, sandbox.target, "--plain-http"].concat(
            ["--backend", "fuse", ...options],
          ),
          { env: sandbox.env, timeoutMs: 60_000 },
        ),
      );
      keepers = keeperPids(sandbox.runtimeDir);
      await killServer(sandbox.runtimeDir);
      // reattach's own environment, as from a unit or another shell: another cache dir.
      const reattached = await runCli(["reattach", sandbox.target], {
        env: { ...sandbox.env, EROFS_OCI_CACHE_DIR: elsewhere },
        timeoutMs: 60_000,
      });
      assertSuccess(reattached);
      assert.match(reattached.stdout, /reattached/, sandbox.serverLogs());
      assert.equal(
        await manifestOf(sandbox.target),
        expectedManifest("basic.txt"),
        sandbox.serverLogs(),
      );
    };
    const umount = async () => {
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      killKeepers(keepers);
    };
    try {
      await mountKillReattach(["--no-disk-cache"]);
      const state = stateOf();
      await umount();
      assert.deepEqual(cachedBlobFiles(cacheDir), [], "nothing went to the disk cache");
      assert.deepEqual(state.diskCache, { dir: cacheDir, maxBytes: 0 });

      await mountKillReattach(["--disk-cache-size", "64M", "--disk-cache-keep-free", "0"]);
      assert.deepEqual(stateOf().diskCache, {
        dir: cacheDir,
        maxBytes: 64 << 20,
        keepFreeBytes: 0,
      });
      await umount();
      assert(cachedBlobFiles(cacheDir).length > 0, "on the mount's disk cache this time");
      assert.deepEqual(cachedBlobFiles(elsewhere), [], "not in reattach's");
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
      await Deno.remove(elsewhere, { recursive: true }).catch(() => {});
    }
  },
});
