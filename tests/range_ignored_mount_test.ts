/**
 * A registry (here a proxy in front of one) that ignores Range and answers every blob GET with
 * 200 and the whole layer. `mount --fetch-all` completes a layer in 8 MiB runs, and each run
 * was a GET that downloaded the layer from byte 0 up to the run: (size / 8 MiB) × size / 2 bytes
 * (3× a 40 MiB layer). A body the host sent whole is now read on by the next run
 * (lib/oci/open_bodies.ts): the layer comes over about once, the reads through the mount give
 * the right bytes, and the user is told once that the host ignores Range.
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

const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  path(`${PEER_BIN}/mkfs.erofs`),
);

const FILES = 5;
const FILE_BYTES = 8 << 20;
const WARNING = /ignores Range requests: reads download from the start of the layer/g;

/** A layer of FILES random files pushed, behind a proxy that drops the Range of its GETs. */
async function rangeIgnoringLayer(work: string) {
  const registry = await startRegistry({ auth: "none" });
  const { image, offsets, digest, proxy } = await (async () => {
    const { image, offsets } = await randomFilesImage(work, FILES, FILE_BYTES);
    const pushed = await pushImage(registry, "ri/layer", "v1", [
      { bytes: image, mediaType: EROFS_MEDIA_TYPE },
    ]);
    const digest = pushed.layers[0].digest;
    const proxy = await startFaultProxy(registry.host, [
      { match: isBlobGetOf(digest), fault: { kind: "ignore-range" } },
    ]);
    return { image, offsets, digest, proxy };
  })().catch(async (error) => {
    await registry.stop();
    throw error;
  });
  return {
    image,
    digest,
    proxy,
    /** Bytes the proxy sent for the layer's GETs so far, and how many GETs. */
    sent: () => {
      const gets = proxy.blobGets(digest);
      return { bytes: gets.reduce((sum, r) => sum + r.bytesSent, 0), gets: gets.length };
    },
    /** Throws unless file `i` of the mount at `target` holds the image's bytes of it. */
    checkFile: async (target: string, i: number) => {
      const read = await Deno.readFile(`${target}/file${i}`);
      const want = image.subarray(offsets[i], offsets[i] + FILE_BYTES);
      assert(read.length === FILE_BYTES && read.every((b, at) => b === want[at]), `file${i}`);
    },
    [Symbol.asyncDispose]: async () => {
      await proxy.stop();
      await registry.stop();
    },
  };
}

/** Says what the host sent for the layer and checks it stayed within `ratio` of its size. */
function assertSentAtMost(
  sent: { bytes: number; gets: number },
  layerBytes: number,
  ratio: number,
  what: string,
): void {
  const times = (sent.bytes / layerBytes).toFixed(2);
  console.log(
    `${what}: ${sent.bytes} bytes of a ${layerBytes}-byte layer in ${sent.gets} GETs (${times}×)`,
  );
  assert(sent.bytes <= ratio * layerBytes, `${what}: ${times}× the layer in ${sent.gets} GETs`);
}

Deno.test({
  name: "mount --fetch-all behind a host that ignores Range fetches the layer about once",
  ignore,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-range-ignored-" });
    await using layer = await rangeIgnoringLayer(work);
    const { digest } = layer;
    const sandbox = await mountSandbox();
    const cacheDir = `${work}/cache`;
    const presentShare = () => {
      const name = [...Deno.readDirSync(`${cacheDir}/blobs`)].map((e) => e.name)
        .find((n) => n.startsWith(digest.replace(":", "-")) && n.endsWith(".map"));
      if (!name) return 0;
      const map = Deno.readFileSync(`${cacheDir}/blobs/${name}`);
      return map.filter((b) => b === 1).length / map.length;
    };
    try {
      assertSuccess(
        await runCli(
          ["mount", `${layer.proxy.host}/ri/layer:v1`, sandbox.target, "--plain-http"].concat(
            ["--backend", "fuse", "--fetch-all"],
          ),
          { env: { ...sandbox.env, EROFS_OCI_CACHE_DIR: cacheDir }, timeoutMs: 60_000 },
        ),
      );
      try {
        let share = 0;
        const done = () => share === 1 && /bytes local/.test(sandbox.serverLogs());
        for (let waited = 0; waited < 60_000 && !done(); waited += 200) {
          await new Promise((r) => setTimeout(r, 200));
          share = presentShare();
        }
        const logs = sandbox.serverLogs();
        assert.equal(share, 1, `the whole layer is local (${share}); ${logs}`);
        assertSentAtMost(layer.sent(), layer.image.length, 1.2, "--fetch-all");
        assert.equal(logs.match(WARNING)?.length, 1, logs);
        // The files read through the mount are the image's (from the disk cache now).
        for (let i = 0; i < FILES; i++) await layer.checkFile(sandbox.target, i);
      } finally {
        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      }
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "lazy reads in order behind a host that ignores Range go on in one body",
  ignore,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-range-ignored-lazy-" });
    await using layer = await rangeIgnoringLayer(work);
    const sandbox = await mountSandbox();
    try {
      assertSuccess(
        await runCli(
          ["mount", `${layer.proxy.host}/ri/layer:v1`, sandbox.target, "--plain-http"].concat(
            ["--backend", "fuse"],
          ),
          { env: { ...sandbox.env, EROFS_OCI_CACHE_DIR: `${work}/cache` }, timeoutMs: 60_000 },
        ),
      );
      try {
        for (let i = 0; i < FILES; i++) await layer.checkFile(sandbox.target, i);
        assertSentAtMost(layer.sent(), layer.image.length, 1.5, "reading every file once");
        assert.equal(sandbox.serverLogs().match(WARNING)?.length, 1, sandbox.serverLogs());
      } finally {
        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      }
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});
