/**
 * Recorded prefetch on a memory-only cache (`--no-disk-cache`), through a real mount (FUSE
 * backend, real docker-registry behind a counting proxy, an image made by mkfs.erofs 1.9.3):
 * the trace touches six 2 MiB chunks, more than an 8 MiB cache holds next to the mount's own
 * reads. The prefetch pins the traced pages (lib/trace/pinned_target.ts), so the application's
 * reads make zero layer GETs and the mount fetches far less than the chunks. Through the cache
 * (before) the first traced chunks were evicted by the later ones and fetched again. The
 * prefetch asks for the traced pages in one multi-range GET (RegistryBlob.readRanges).
 * Pushed by `erofs-oci push` (a chunk-digest table with 64 KiB subchunk digests) the prefetch
 * fetches each traced page's subchunk, not its 1 MiB table chunk, checks it, and `list` says
 * what came; a flipped byte in a traced page never reaches the application.
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { type Fault, isBlobGet, startFaultProxy } from "./_support/fault_proxy.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage, sha256Digest } from "./_support/oci_raw.ts";
import { layerAfterTracePrefetch, type TracedLayer } from "./_support/trace_wait.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { randomFilesImage } from "./_support/erofs_tree.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  path(`${PEER_BIN}/mkfs.erofs`),
);

const MIB = 1 << 20;
const SUBCHUNK = 64 << 10;
const FILES = 6;
const FILE_BYTES = 2 * MIB;
const CACHE_SIZE = "8M";

/** The first page of each file: six reads in six different cache chunks. */
const readHeads = (root: string) =>
  Array.from({ length: FILES }, (_, i) => `head -c 4096 ${root}/file${i} > /dev/null`).join(
    " && ",
  );

/** What the mount's GETs of the layer asked for: each range's [first, last]. */
const spans = (range: string) =>
  range.slice(6).split(",").map((span) => span.split("-").map(Number));

const rangeBytes = (gets: { range: string | null }[]) =>
  gets.filter((r) => r.range).reduce(
    (sum, r) => sum + spans(r.range!).reduce((s, [from, to]) => s + to - from + 1, 0),
    0,
  );

interface Listed extends TracedLayer {
  bytesFetched: number;
  fetches: number;
}

interface Seen {
  /** The layer GETs from the mount on (through the proxy). */
  mountGets: { range: string | null }[];
  layer: Listed;
  /** Reads each file's first page in the mount: its bytes, or the error. */
  heads: () => Promise<(Uint8Array | Error)[]>;
  /** The files' first pages as made. */
  expected: Uint8Array[];
  /** Layer GETs since the mount's prefetch ended. */
  getsSince: () => number;
  logs: () => string;
}

/**
 * Pushes the six-file image (raw, or with a chunk-digest table by `erofs-oci push`), records
 * a trace of the app's reads, mounts it again with a memory-only cache and waits for the trace
 * prefetch to end; then `check` sees what happened. `corruptFile`: from the mount on, every
 * reply holding byte 100 of that file has it flipped.
 */
async function prefetchOnMemoryCache(
  options: { verified: boolean; corruptFile?: number },
  check: (seen: Seen) => Promise<void>,
) {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-trace-mem-" });
  const registry = await startRegistry({ auth: "none" });
  const corrupt: Fault = { kind: "corrupt", blobOffset: -1 };
  let layerDigest = "";
  let armed = false;
  const proxy = await startFaultProxy(registry.host, [{
    name: "flip",
    match: (request) => armed && isBlobGet(request) && request.path.endsWith(layerDigest),
    fault: corrupt,
  }]);
  const sandbox = await mountSandbox();
  try {
    const { image, offsets } = await randomFilesImage(work, FILES, FILE_BYTES);
    const env = sandbox.env;
    if (options.verified) {
      Deno.writeFileSync(`${work}/pushed.erofs`, image);
      const pushed = await runCli(
        ["push", `${registry.host}/trace/mem:v1`, `${work}/pushed.erofs`, "--plain-http"],
        { env, timeoutMs: 60_000 },
      );
      assertSuccess(pushed);
      layerDigest = await sha256Digest(image);
    } else {
      const pushed = await pushImage(registry, "trace/mem", "v1", [
        { bytes: image, mediaType: EROFS_MEDIA_TYPE },
      ]);
      layerDigest = pushed.layers[0].digest;
    }
    const ref = `${proxy.host}/trace/mem:v1`;
    const layerGets = () =>
      proxy.requests.filter((r) => r.method === "GET" && r.path.endsWith(`/blobs/${layerDigest}`));

    const traced = await runCli(
      [
        "trace",
        ref,
        "--plain-http",
        "--backend",
        "fuse",
        "--push",
        "--",
        "sh",
        "-c",
        readHeads("{}"),
      ],
      { env, timeoutMs: 60_000 },
    );
    assertSuccess(traced);
    // trace exits 0 when its command fails, with what was read until then: a trace cut
    // short shows only later, as GETs of the app (CI: its mount vanished after file0).
    assert(!/exited with/.test(traced.stderr), traced.stderr);

    if (options.corruptFile !== undefined) {
      corrupt.blobOffset = offsets[options.corruptFile] + 100;
      armed = true;
    }
    const firstRequest = proxy.requests.length;
    assertSuccess(
      await runCli(
        [
          "mount",
          ref,
          sandbox.target,
          "--plain-http",
          "--backend",
          "fuse",
          "--no-disk-cache",
          "--cache-size",
          CACHE_SIZE,
        ],
        { env, timeoutMs: 60_000 },
      ),
    );
    try {
      const prefetched = await layerAfterTracePrefetch(env);
      assert.notEqual(prefetched.tracePrefetch?.state, "running", JSON.stringify(prefetched));
      await new Promise((r) => setTimeout(r, 500));
      const list = await runCli(["list", "--json"], { env });
      assertSuccess(list);
      const layer: Listed = JSON.parse(list.stdout)[0].layers[0];
      const before = layerGets().length;
      await check({
        mountGets: layerGets().filter((r) => proxy.requests.indexOf(r) >= firstRequest),
        layer,
        heads: () =>
          Promise.all(Array.from({ length: FILES }, async (_, i) => {
            const head = await new Deno.Command("head", {
              args: ["-c", "4096", `${sandbox.target}/file${i}`],
            }).output();
            return head.success ? head.stdout : new Error(new TextDecoder().decode(head.stderr));
          })),
        expected: offsets.map((at) => image.subarray(at, at + 4096)),
        getsSince: () => layerGets().length - before,
        logs: sandbox.serverLogs,
      });
    } finally {
      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 30_000 }));
    }
  } finally {
    await sandbox.cleanup();
    await proxy[Symbol.asyncDispose]();
    await registry[Symbol.asyncDispose]();
    await Deno.remove(work, { recursive: true });
  }
}

Deno.test({
  name:
    "trace prefetch on a memory-only cache: traced pages pinned, the app's reads make no GET, no whole chunks fetched",
  ignore,
  async fn() {
    await prefetchOnMemoryCache({ verified: false }, async (seen) => {
      assert.equal(seen.layer.tracePrefetch?.state, "done", JSON.stringify(seen.layer));
      assert.deepEqual(await seen.heads(), seen.expected);
      assert.equal(seen.getsSince(), 0, seen.logs());
      const ranged = seen.mountGets.filter((r) => r.range);
      // Through the cache the six traced chunks alone were 12 MiB; pinned, the traced pages
      // plus what the mount reads itself (metadata, the kernel's first reads).
      const fetched = rangeBytes(ranged);
      assert(fetched < 6 * MIB, `${fetched} bytes fetched by the mount`);
      // The six traced pages (far apart) in one multi-range GET, not one GET each.
      const batched = ranged.filter((r) => {
        const asked = spans(r.range!);
        return asked.length >= FILES && asked.every(([from, to]) => to - from + 1 <= 64 << 10);
      });
      assert.equal(batched.length, 1, JSON.stringify(ranged.map((r) => r.range)));
    });
  },
});

Deno.test({
  name:
    "trace prefetch of a verified layer on a memory-only cache: 64 KiB subchunks checked, not 1 MiB chunks; list shows what came",
  ignore,
  async fn() {
    await prefetchOnMemoryCache({ verified: true }, async (seen) => {
      const { layer, mountGets } = seen;
      assert.equal(layer.tracePrefetch?.state, "done", JSON.stringify(layer));
      assert.deepEqual(await seen.heads(), seen.expected);
      assert.equal(seen.getsSince(), 0, seen.logs());
      const said = JSON.stringify({ layer, mountGets });
      // The six traced pages' subchunks, in one multi-range GET of whole 64 KiB subchunks;
      // no 1 MiB chunk (6 MiB and more before).
      const batched = mountGets.filter((r) => (r.range?.split(",").length ?? 0) >= FILES);
      assert.equal(batched.length, 1, said);
      for (const [from, to] of spans(batched[0].range!)) {
        assert(from % SUBCHUNK === 0 && (to + 1) % SUBCHUNK === 0, said);
      }
      const fetched = rangeBytes(mountGets);
      assert(fetched < 2 * MIB, `${fetched} bytes fetched by the mount: ${said}`);
      // The server's own reads (not the CLI's superblock read), and the table's metadata pack
      // (a blob of its own, fetched for the layer): what came, not the 100 KB of pages pinned.
      assert(layer.bytesFetched >= FILES * SUBCHUNK, said);
      assert(layer.bytesFetched <= fetched + (64 << 10), said);
      assert(layer.fetches <= mountGets.length + 1, said);
    });
  },
});

Deno.test({
  name:
    "trace prefetch of a verified layer: a flipped byte in a traced page is refused; the app gets EIO there, right bytes elsewhere",
  ignore,
  async fn() {
    const BAD = 2;
    await prefetchOnMemoryCache({ verified: true, corruptFile: BAD }, async (seen) => {
      const heads = await seen.heads();
      const logs = seen.logs();
      heads.forEach((got, i) => {
        if (i === BAD) assert(got instanceof Error, `file${BAD} read: ${got}\n${logs}`);
        else assert.deepEqual(got, seen.expected[i], `file${i}\n${logs}`);
      });
      assert.match(logs, /do not match the chunk-digest table/);
    });
  },
});
