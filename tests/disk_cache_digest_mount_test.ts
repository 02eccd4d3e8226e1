/**
 * A layer without a chunk-digest table, mounted without --fetch-all, is hashed against its
 * digest once a cold read of every file has brought all of it into the disk cache. A registry
 * (here a proxy) that flips a byte of file data gets its bytes dropped from the cache with a
 * warning, instead of kept for every later mount of that registry; the next mount, served
 * honestly, fetches the layer again and reads the right bytes.
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { randomFilesImage } from "./_support/erofs_tree.ts";

const FILE_BYTES = 4 << 20;
const FILES = ["file0", "file1"];

/** The bytes of the layer's map file in `cacheDir` marked present (synced or written). */
function presentChunks(cacheDir: string, digest: string): number {
  const name = [...Deno.readDirSync(`${cacheDir}/blobs`)].map((entry) => entry.name)
    .find((n) => n.startsWith(digest.replace(":", "-")) && n.endsWith(".map"))!;
  return Deno.readFileSync(`${cacheDir}/blobs/${name}`).filter((b) => b === 1 || b === 2).length;
}

Deno.test({
  name:
    "disk cache: a table-less layer read whole with flipped bytes is dropped; the next mount fetches it again",
  ignore: requires(
    root(),
    path("/dev/fuse"),
    command("docker-registry"),
    path(`${PEER_BIN}/mkfs.erofs`),
  ),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-digest-mount-" });
    await using registry = await startRegistry({ auth: "none" });
    const { image, offsets } = await randomFilesImage(work, FILES.length, FILE_BYTES);
    const pushed = await pushImage(registry, "dc/flip", "v1", [
      { bytes: image, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const digest = pushed.layers[0].digest;
    let hostile = true;
    await using proxy = await startFaultProxy(registry.host, [
      {
        match: (request) => hostile && isBlobGetOf(digest)(request),
        fault: { kind: "corrupt", blobOffset: offsets[1] + 1000 },
      },
    ]);
    const sandbox = await mountSandbox();
    const cacheDir = sandbox.env.EROFS_OCI_CACHE_DIR;
    const mount = () =>
      runCli(
        ["mount", `${proxy.host}/dc/flip:v1`, sandbox.target, "--plain-http", "--backend", "fuse"],
        { env: sandbox.env, timeoutMs: 60_000 },
      );
    const umount = async () =>
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    try {
      assertSuccess(await mount());
      try {
        // A cold read of every file: what the registry sent reaches this first reader, or EIO
        // once the whole-blob check (which may finish first on a loaded machine: the mount's
        // background windows read ahead) has found the mismatch.
        for (const name of FILES) {
          await Deno.readFile(`${sandbox.target}/${name}`).catch((error) => {
            if ((error as { code?: string }).code !== "EIO") throw error;
          });
        }
        await sandbox.serverLogMatch(/do not match the digest/, 30_000);
        assert.equal(presentChunks(cacheDir, digest), 0, "no chunk kept for a later mount");
        const listed = JSON.parse((await runCli(["list", "--json"], { env: sandbox.env })).stdout);
        assert.equal(listed[0].layers[0].digestMismatch, true, JSON.stringify(listed[0]));
      } finally {
        await umount();
      }

      hostile = false;
      const getsBefore = proxy.blobGets(digest).length;
      assertSuccess(await mount());
      try {
        for (const name of FILES) {
          const read = await Deno.readFile(`${sandbox.target}/${name}`);
          const want = await Deno.readFile(`${work}/tree/${name}`);
          assert(read.length === want.length && read.every((b, i) => b === want[i]), name);
        }
        assert(proxy.blobGets(digest).length > getsBefore, "the layer is fetched again");
        await sandbox.serverLogMatch(/bytes cached, digest verified/, 30_000);
        assert(presentChunks(cacheDir, digest) > 0);
      } finally {
        await umount();
      }
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});
