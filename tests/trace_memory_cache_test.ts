/**
 * Recorded prefetch on a memory-only cache (`--no-disk-cache`), through a real mount (FUSE
 * backend, real docker-registry behind a counting proxy, an image made by mkfs.erofs 1.9.3):
 * the trace touches six 2 MiB chunks, more than an 8 MiB cache holds next to the mount's own
 * reads. The prefetch pins the traced pages (lib/trace/pinned_target.ts), so the application's
 * reads make zero layer GETs and the mount fetches far less than the chunks. Through the cache
 * (before) the first traced chunks were evicted by the later ones and fetched again. The
 * prefetch asks for the traced pages in one multi-range GET (RegistryBlob.readRanges).
 * Pushed by `erofs-oci push` (a chunk-digest table) the same prefetch fetches each traced
 * page's whole table chunk to check it, and `list` says what came, not the pages pinned.
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
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

const MIB = 1 << 20;
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

interface Listed {
  bytesFetched: number;
  fetches: number;
  tracePrefetch?: { state: string; bytesTotal: number; bytesDone: number };
}

/**
 * Pushes the six-file image (raw, or with a chunk-digest table by `erofs-oci push`), records
 * a trace of the app's reads, mounts it again with a memory-only cache and waits for the trace
 * prefetch; then `check` gets the mount's layer GETs (through the proxy), the layer as `list`
 * shows it, and the app's reads.
 */
async function prefetchOnMemoryCache(
  verified: boolean,
  check: (seen: {
    mountGets: { range: string | null }[];
    layer: Listed;
    app: () => Promise<number>;
    logs: () => string;
  }) => Promise<void>,
) {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-trace-mem-" });
  const registry = await startRegistry({ auth: "none" });
  const proxy = await startFaultProxy(registry.host, []);
  const sandbox = await mountSandbox();
  try {
    const { image } = await randomFilesImage(work, FILES, FILE_BYTES);
    const env = sandbox.env;
    let digest: string;
    if (verified) {
      Deno.writeFileSync(`${work}/pushed.erofs`, image);
      const pushed = await runCli(
        ["push", `${registry.host}/trace/mem:v1`, `${work}/pushed.erofs`, "--plain-http"],
        { env, timeoutMs: 60_000 },
      );
      assertSuccess(pushed);
      digest = `sha256:${await sha256Hex(image)}`;
    } else {
      const pushed = await pushImage(registry, "trace/mem", "v1", [
        { bytes: image, mediaType: EROFS_MEDIA_TYPE },
      ]);
      digest = pushed.layers[0].digest;
    }
    const ref = `${proxy.host}/trace/mem:v1`;
    const layerGets = () =>
      proxy.requests.filter((r) => r.method === "GET" && r.path.endsWith(`/blobs/${digest}`));

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
      let layer = {} as Listed;
      for (let i = 0; i < 100; i++) {
        const list = await runCli(["list", "--json"], { env });
        assertSuccess(list);
        layer = JSON.parse(list.stdout)[0].layers[0];
        if (!layer.tracePrefetch || layer.tracePrefetch.state !== "running") break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(layer.tracePrefetch?.state, "done", JSON.stringify(layer));
      await new Promise((r) => setTimeout(r, 500));
      const list = await runCli(["list", "--json"], { env });
      assertSuccess(list);
      layer = JSON.parse(list.stdout)[0].layers[0];
      await check({
        mountGets: layerGets().filter((r) => proxy.requests.indexOf(r) >= firstRequest),
        layer,
        app: async () => {
          const before = layerGets().length;
          const app = await new Deno.Command("sh", {
            args: ["-c", readHeads(sandbox.target)],
          }).output();
          assert(app.success, new TextDecoder().decode(app.stderr));
          return layerGets().length - before;
        },
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

async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(hash, (b) => b.toString(16).padStart(2, "0")).join("");
}

const rangeBytes = (gets: { range: string | null }[]) =>
  gets.filter((r) => r.range).reduce(
    (sum, r) => sum + spans(r.range!).reduce((s, [from, to]) => s + to - from + 1, 0),
    0,
  );

Deno.test({
  name:
    "trace prefetch on a memory-only cache: traced pages pinned, the app's reads make no GET, no whole chunks fetched",
  ignore,
  async fn() {
    await prefetchOnMemoryCache(false, async ({ mountGets, app, logs }) => {
      assert.equal(await app(), 0, logs());
      const ranged = mountGets.filter((r) => r.range);
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
    "trace prefetch of a verified layer on a memory-only cache: list shows the whole chunks fetched, not the pages pinned",
  ignore,
  async fn() {
    await prefetchOnMemoryCache(true, async ({ mountGets, layer, app, logs }) => {
      assert.equal(await app(), 0, logs());
      const fetched = rangeBytes(mountGets);
      // Each traced page in its own 1 MiB table chunk: at least six of them came.
      assert(fetched >= FILES * MIB, `${fetched} bytes fetched by the mount`);
      // The server's own reads: the chunks (not the CLI's superblock read), and the table's
      // metadata pack (a blob of its own, fetched for the layer).
      const seen = JSON.stringify({ layer, mountGets });
      assert(layer.bytesFetched >= FILES * MIB, seen);
      assert(layer.bytesFetched <= fetched + (64 << 10), seen);
      assert(layer.fetches <= mountGets.length + 1, seen);
    });
  },
});
