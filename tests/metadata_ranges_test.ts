/**
 * The chunk table's metadata range list (issue 12's cold mount): made from an EROFS image it
 * lists exactly the pages the mount's directory walk pins, round-trips through the table blob,
 * is refused when malformed (bounded, ordered, inside the layer), and at mount it replaces the
 * walk's chunk fetches: the pages come from one multi-range GET (real docker-registry), are each
 * checked against their digest, and go to the disk cache's sidecar so a remount fetches nothing.
 * A list that lies (wrong digests, ranges of file data, pages missing) costs only speed: the
 * pinned bytes are still the image's.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { FormatError } from "../lib/errors.ts";
import { walkErofsMetadata } from "../lib/erofs/metadata_walk.ts";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { PrefetchedSource } from "../lib/source/prefetched.ts";
import { prefetchErofsMetadata } from "../lib/source/metadata_prefetch.ts";
import { ChunkTableBuilder, parseChunkTable } from "../lib/verify/chunk_table.ts";
import {
  LISTED_HEAD_BYTES,
  MAX_METADATA_RANGES,
  type MetadataRanges,
  parseMetadataRanges,
} from "../lib/verify/metadata_ranges.ts";
import {
  type MadeMetadataRanges,
  metadataRangesOf,
  metadataRangesOfFile,
  verifiedMetadataRangesOf,
} from "../lib/verify/make_metadata_ranges.ts";
import { loadMetadataRanges, sidecarPackDigest } from "../lib/verify/load_metadata_ranges.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { RegistryBlob } from "../lib/oci/registry_blob.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_LAYER } from "../lib/oci/media_types.ts";
import { type FaultRule, startFaultProxy } from "./_support/fault_proxy.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";

const FIXTURE = `${FIXTURES}/basic.erofs`;
const image = Deno.readFileSync(FIXTURE);
const DIGEST = "sha256:" + createHash("sha256").update(image).digest("hex");
const read = (offset: number, length: number) =>
  Promise.resolve(image.slice(offset, offset + length));

async function walkPages(): Promise<Set<number>> {
  const walk = await walkErofsMetadata(read, image.length, { fileInodes: false });
  assert.equal(walk.pageBytes, 4096);
  return new Set(walk.pages.keys());
}

/** The pages a list made by push holds: the walk's and the image head's. */
async function listedPages(): Promise<Set<number>> {
  const pages = await walkPages();
  for (let page = 0; page < LISTED_HEAD_BYTES / 4096; page++) pages.add(page);
  return pages;
}

function pagesOf(ranges: MetadataRanges): Set<number> {
  const pages = new Set<number>();
  ranges.offsets.forEach((offset, i) => {
    for (let at = offset; at < offset + ranges.lengths[i]; at += 4096) pages.add(at / 4096);
  });
  return pages;
}

function tableWith(made: MadeMetadataRanges | undefined) {
  const builder = new ChunkTableBuilder(64 << 10);
  builder.update(image);
  return builder.finish(DIGEST).withMetadata(made);
}

/** The fixture's list (as push makes it). */
async function fixtureList(): Promise<MetadataRanges> {
  return (await metadataRangesOfFile(FIXTURE))!.ranges;
}

Deno.test("metadata ranges: the walk's pages, hashed, round-trip through the table blob", async () => {
  const made = (await metadataRangesOfFile(FIXTURE))!;
  assert(made, "an EROFS image gets a list");
  const ranges = made.ranges;
  // The walk's pages and the image head (what a new NBD device's partition scan reads).
  const expected = await listedPages();
  assert.deepEqual(pagesOf(ranges), expected);
  assert.ok(expected.size > (await walkPages()).size, "the head adds pages the walk lacks");
  ranges.offsets.forEach((offset, i) => {
    const bytes = image.subarray(offset, offset + ranges.lengths[i]);
    assert.deepEqual(
      ranges.digests.subarray(32 * i, 32 * i + 32),
      new Uint8Array(createHash("sha256").update(bytes).digest()),
    );
  });
  // The pack: the listed bytes back to back, named by its digest in the list.
  const backToBack = ranges.offsets.flatMap((offset, i) => [
    ...image.subarray(offset, offset + ranges.lengths[i]),
  ]);
  assert.deepEqual(made.pack, Uint8Array.from(backToBack));
  assert.equal(ranges.pack, "sha256:" + createHash("sha256").update(made.pack).digest("hex"));
  const parsed = parseChunkTable(tableWith(made).encode(), {
    digest: DIGEST,
    sizeBytes: image.length,
  });
  assert.deepEqual(parsed.metadata, ranges);
  // A table without a list stays as it was (older readers and makers).
  assert.equal(parseChunkTable(tableWith(undefined).encode()).metadata, undefined);
  // Not EROFS: no list, no error.
  const notErofs = new Uint8Array(8192).fill(7);
  assert.equal(
    await metadataRangesOf((o, l) => Promise.resolve(notErofs.slice(o, o + l)), notErofs.length),
    undefined,
  );
});

Deno.test("metadata ranges made from a source that lies: only bytes the table vouches for", async () => {
  const table = tableWith(undefined);
  // The second read of the layer (after its table was made) serves other bytes past 64 KiB.
  const lying = (offset: number, length: number) => {
    const bytes = image.slice(offset, offset + length);
    for (let i = Math.max(0, (64 << 10) - offset); i < bytes.length; i++) bytes[i] ^= 0x5a;
    return Promise.resolve(bytes);
  };
  const ranges = (await verifiedMetadataRangesOf(table, lying))?.ranges;
  assert(ranges, "the pages of the good chunks are still listed");
  ranges.offsets.forEach((offset, i) => {
    assert(offset + ranges.lengths[i] <= 64 << 10, `range ${i} at ${offset} from lying bytes`);
    const bytes = image.subarray(offset, offset + ranges.lengths[i]);
    assert.deepEqual(
      ranges.digests.subarray(32 * i, 32 * i + 32),
      new Uint8Array(createHash("sha256").update(bytes).digest()),
    );
  });
});

Deno.test("metadata ranges: malformed lists are refused with the table", () => {
  const size = 1 << 20;
  const digests = (n: number) => "ab".repeat(32 * n);
  const bad: unknown[] = [
    null,
    { ranges: "0,4096", digests: digests(1) },
    { ranges: [0], digests: digests(1) },
    { ranges: [0, 4096], digests: digests(2) },
    { ranges: [0, 4096], digests: "zz".repeat(32) },
    { ranges: [8192, 4096, 0, 4096], digests: digests(2) }, // out of order
    { ranges: [0, 8192, 4096, 4096], digests: digests(2) }, // overlapping
    { ranges: [size - 4096, 8192], digests: digests(1) }, // past the layer
    { ranges: [0, 0], digests: digests(1) },
    { ranges: [-4096, 4096], digests: digests(1) },
    { ranges: [0.5, 4096], digests: digests(1) },
    { ranges: [0, 8 << 20], digests: digests(1) }, // one range over 4 MiB
    { ranges: [0, 4096], digests: digests(1), pack: "sha256:" + "x".repeat(64) },
    { ranges: [0, 4096], digests: digests(1), pack: 7 },
    {
      ranges: Array.from({ length: 2 * (MAX_METADATA_RANGES + 1) }, (_, i) => i % 2 ? 1 : i * 2),
      digests: digests(MAX_METADATA_RANGES + 1),
    },
  ];
  for (const value of bad) {
    assert.throws(() => parseMetadataRanges(value, size), FormatError, JSON.stringify(value));
  }
  // Too many bytes in all (each range within its bound): 9 ranges of 4 MiB > 32 MiB.
  const big = Array.from({ length: 9 }, (_, i) => [i * (4 << 20), 4 << 20]).flat();
  assert.throws(() => parseMetadataRanges({ ranges: big, digests: digests(9) }, 64 << 20));
  // And through a table blob.
  const table = JSON.parse(new TextDecoder().decode(tableWith(undefined).encode()));
  table.metadata = { ranges: [0, 4096, 0, 4096], digests: digests(2) };
  assert.throws(
    () => parseChunkTable(new TextEncoder().encode(JSON.stringify(table))),
    FormatError,
  );
});

/** The prefetch as the mount server runs it, over a disk cache of `image` read from `inner`. */
async function prefetchWithList(dir: string, ranges: MetadataRanges, blob: MemorySource) {
  const cache = DiskCache.open({ checkCompleteBlobs: false, dir, chunkBytes: 16 << 10 })!;
  const inner = new MemorySource(image);
  const disk = cache.wrap(inner, { digest: DIGEST, origin: "test" }) as DiskCachedSource;
  const served = new PrefetchedSource(new CachedSource(disk, { cacheBytes: 8 << 20 }));
  const sidecar = {
    read: (maxBytes: number) => disk.readSidecar(maxBytes),
    write: (bytes: Uint8Array) => disk.writeSidecar(bytes),
  };
  let loaded: Awaited<ReturnType<typeof loadMetadataRanges>> | undefined;
  const summary = await prefetchErofsMetadata(disk, served, {
    metadata: async (signal) => {
      loaded = await loadMetadataRanges(ranges, blob, { sidecar, signal });
      return { pieces: loaded.pieces, note: "list" };
    },
  });
  assert.match(summary, /directories:/, summary);
  await disk.whenDurable();
  return { inner, served, loaded: loaded!, summary };
}

async function assertPinsAreTheImage(served: PrefetchedSource, pages: Set<number>) {
  for (const page of pages) {
    const offset = page * 4096;
    assert.deepEqual(
      await served.read(offset, 4096),
      image.subarray(offset, offset + 4096),
      `page ${page}`,
    );
  }
}

Deno.test("metadata ranges at mount: the walk reads nothing more, a remount reads the sidecar", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ranges = await fixtureList();
    const pages = await listedPages();
    const blob = new MemorySource(image);
    const first = await prefetchWithList(dir, ranges, blob);
    // The walk reads nothing through the disk cache; only the image's head is stored there.
    assert.deepEqual(first.inner.reads, [{ offset: 0, length: 16 << 10 }]);
    assert.equal(first.loaded.fetched, ranges.offsets.length);
    assert.equal(first.served.pinnedBytes, pages.size * 4096);
    await assertPinsAreTheImage(first.served, pages);
    await first.served.close();
    const readsBefore = blob.reads.length;
    const again = await prefetchWithList(dir, ranges, blob);
    assert.equal(blob.reads.length, readsBefore, "a remount fetches no listed range");
    assert.equal(again.loaded.fromSidecar, ranges.offsets.length);
    assert.equal(again.inner.reads.length, 0, "the head is on disk already");
    await assertPinsAreTheImage(again.served, pages);
    await again.served.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("metadata fetched unchecked for a later check (mount -> server): what lies is dropped and fetched again", async () => {
  const ranges = await fixtureList();
  const n = ranges.offsets.length;
  assert(n >= 2, "the fixture has several ranges");
  // A registry that serves other bytes in the first and the last range.
  const lying = image.slice();
  for (const i of [0, n - 1]) lying[ranges.offsets[i] + ranges.lengths[i] - 1] ^= 0xff;
  // Checked (as before): the two ranges are refused, no sidecar (not whole).
  let refused: Uint8Array | undefined;
  const checked = await loadMetadataRanges(ranges, new MemorySource(lying), {
    sidecar: { read: () => undefined, write: (bytes) => refused = bytes },
  });
  assert.equal(checked.bad, 2);
  assert.equal(refused, undefined);
  // checkedLater (the CLI's hand-over): taken as they came, the whole sidecar written.
  let handed: Uint8Array | undefined;
  const cli = await loadMetadataRanges(ranges, new MemorySource(lying), {
    sidecar: { read: () => undefined, write: (bytes) => handed = bytes },
    checkedLater: true,
  });
  assert.equal(cli.fetched, n);
  assert(handed);
  // The server reads it back as its sidecar: every range checked, the two lying ones fetched
  // again from the honest blob, and every piece it would pin is the image's.
  const blob = new MemorySource(image);
  const server = await loadMetadataRanges(ranges, blob, {
    sidecar: { read: () => handed, write: () => {} },
  });
  assert.equal(server.fromSidecar, n - 2);
  assert.equal(server.fetched, 2);
  assert.deepEqual(blob.reads.map((r) => r.offset), [ranges.offsets[0], ranges.offsets[n - 1]]);
  assert.equal(server.pieces.length, n);
  for (const { offset, bytes } of server.pieces) {
    assert.deepEqual(bytes, image.subarray(offset, offset + bytes.length), `piece at ${offset}`);
  }
  // Handed with the pack's digest started on arrival (the mount server): the same outcome.
  const again = new MemorySource(image);
  const early = await loadMetadataRanges(ranges, again, {
    handed,
    handedPackDigest: sidecarPackDigest(handed),
  });
  assert.equal(early.fromHanded, n - 2);
  assert.equal(early.fetched, 2);
  for (const { offset, bytes } of early.pieces) {
    assert.deepEqual(bytes, image.subarray(offset, offset + bytes.length), `piece at ${offset}`);
  }
  // Honest bytes: all taken on the one early digest, nothing fetched.
  let honest: Uint8Array | undefined;
  await loadMetadataRanges(ranges, new MemorySource(image), {
    sidecar: { read: () => undefined, write: (bytes) => honest = bytes },
    checkedLater: true,
  });
  assert(ranges.pack, "the list names its pack");
  const untouched = new MemorySource(image);
  const whole = await loadMetadataRanges(ranges, untouched, {
    handed: honest,
    handedPackDigest: sidecarPackDigest(honest!),
  });
  assert.equal(whole.fromHanded, n);
  assert.equal(untouched.reads.length, 0);
});

Deno.test("handed metadata: the image head's ranges are told before the pack is checked, lies left out", async () => {
  const ranges = await fixtureList();
  const n = ranges.offsets.length;
  const headRanges = ranges.offsets.filter((offset) => offset < LISTED_HEAD_BYTES).length;
  assert(headRanges >= 1 && headRanges < n, "the list holds the head and more");
  let handed: Uint8Array | undefined;
  await loadMetadataRanges(ranges, new MemorySource(image), {
    sidecar: { read: () => undefined, write: (bytes) => handed = bytes },
    checkedLater: true,
  });
  assert(handed);
  for (const lieInHead of [false, true]) {
    const bytes = handed.slice();
    // The first range's last byte (the head), in the sidecar's pack after its 32-byte key.
    if (lieInHead) bytes[32 + ranges.lengths[0] - 1] ^= 0xff;
    const pack = Promise.withResolvers<string>();
    let told: { offset: number; bytes: Uint8Array }[] | undefined;
    const blob = new MemorySource(image);
    const loading = loadMetadataRanges(ranges, blob, {
      handed: bytes,
      handedPackDigest: pack.promise,
      onHead: { bytes: LISTED_HEAD_BYTES, take: (pieces) => told = pieces },
    });
    for (let i = 0; i < 100 && !told; i++) await new Promise((r) => setTimeout(r, 2));
    if (lieInHead) {
      // A head with a lie in it is not told: it comes fetched again, with the rest.
      assert.equal(told, undefined);
    } else {
      assert(told, "the head was told while the pack digest was still unknown");
      assert.equal(told.length, headRanges);
      for (const piece of told) {
        assert(piece.offset < LISTED_HEAD_BYTES);
        const want = image.subarray(piece.offset, piece.offset + piece.bytes.length);
        assert.deepEqual(piece.bytes, want);
      }
    }
    pack.resolve(await sidecarPackDigest(bytes));
    const loaded = await loading;
    if (lieInHead) assert.equal(told, undefined);
    assert.equal(loaded.pieces.length, n);
    assert.equal(loaded.fromHanded, lieInHead ? n - 1 : n);
    assert.deepEqual(blob.reads.map((r) => r.offset), lieInHead ? [ranges.offsets[0]] : []);
    for (const piece of loaded.pieces) {
      assert.deepEqual(
        piece.bytes,
        image.subarray(piece.offset, piece.offset + piece.bytes.length),
      );
    }
  }
});

Deno.test("metadata prefetch: the head's pages are pinned and told before the rest of the list", async () => {
  const ranges = await fixtureList();
  const pieces = ranges.offsets.map((offset, i) => ({
    offset,
    bytes: image.slice(offset, offset + ranges.lengths[i]),
  }));
  const head = pieces.filter((p) => p.offset < LISTED_HEAD_BYTES);
  const inner = new MemorySource(image);
  const served = new PrefetchedSource(new CachedSource(inner, { cacheBytes: 8 << 20 }));
  const rest = Promise.withResolvers<void>();
  const headPinned = Promise.withResolvers<void>();
  let listedPinned = false;
  const prefetch = prefetchErofsMetadata(inner, served, {
    metadata: async (_signal, onHead) => {
      onHead?.(head);
      await rest.promise; // the pack digest of the rest, still being computed
      return { pieces, note: "list" };
    },
    onHeadPinned: () => headPinned.resolve(),
    onListedPinned: () => listedPinned = true,
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const toldInTime = await Promise.race([
    headPinned.promise.then(() => true),
    new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), 5_000)),
  ]);
  clearTimeout(timer);
  const listedBefore = listedPinned;
  rest.resolve(); // the prefetch can end either way
  assert.ok(toldInTime, "the head was told while the rest of the list was still loading");
  assert.equal(listedBefore, false, "told before the rest of the list");
  assert.deepEqual(await served.read(0, LISTED_HEAD_BYTES), image.subarray(0, LISTED_HEAD_BYTES));
  assert.deepEqual(inner.reads, [], "the head is read from pinned pages");
  await prefetch;
  assert.equal(listedPinned, true);
  await served.close();
});

Deno.test("metadata ranges that lie cost speed only: pinned bytes are the image's", async () => {
  const honest = await fixtureList();
  const pages = await walkPages();
  const n = honest.offsets.length;
  assert(n >= 2, "the fixture has several ranges");
  const lies: [string, MetadataRanges][] = [
    // Every digest wrong: nothing is pinned from the list.
    ["wrong digests", { ...honest, digests: honest.digests.map((b) => b ^ 1) }],
    // Half the ranges left out.
    ["pages missing", {
      offsets: honest.offsets.filter((_, i) => i % 2),
      lengths: honest.lengths.filter((_, i) => i % 2),
      digests: Uint8Array.from(
        Array.from({ length: n }, (_, i) => i).filter((i) => i % 2)
          .flatMap((i) => [...honest.digests.subarray(32 * i, 32 * i + 32)]),
      ),
    }],
  ];
  // Ranges of file data (hashed correctly): pinned, they are the image's bytes anyway.
  const tail = image.length - 8192;
  lies.push(["file data", {
    offsets: [tail],
    lengths: [8192],
    digests: new Uint8Array(createHash("sha256").update(image.subarray(tail)).digest()),
  }]);
  for (const [what, ranges] of lies) {
    const dir = await Deno.makeTempDir();
    try {
      const { served, loaded } = await prefetchWithList(dir, ranges, new MemorySource(image));
      if (what === "wrong digests") {
        assert.equal(loaded.pieces.length, 0, what);
        assert.equal(loaded.bad, n, what);
      }
      await assertPinsAreTheImage(served, pages);
      await served.close();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  // A sidecar with other bytes is checked again and refetched, never used.
  const dir = await Deno.makeTempDir();
  try {
    const blob = new MemorySource(image);
    const first = await prefetchWithList(dir, honest, blob);
    await first.served.close();
    const [meta] = [...Deno.readDirSync(`${dir}/blobs`)].filter((e) => e.name.endsWith(".meta"));
    const sidecarPath = `${dir}/blobs/${meta.name}`;
    const bytes = Deno.readFileSync(sidecarPath);
    bytes[bytes.length - 1] ^= 0xff;
    Deno.writeFileSync(sidecarPath, bytes);
    const again = await prefetchWithList(dir, honest, blob);
    assert.equal(again.loaded.fromSidecar, n - 1);
    assert.equal(again.loaded.fetched, 1);
    await assertPinsAreTheImage(again.served, pages);
    await again.served.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const ignoreRegistry = requires(command("docker-registry"));

Deno.test({
  name: "metadata ranges: one multi-range GET from docker-registry returns each range",
  ignore: ignoreRegistry,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    assertSuccess(
      await runCli(["push", `${registry.host}/mr/one:v1`, FIXTURE, "--plain-http"], {
        timeoutMs: 60_000,
      }),
    );
    await using proxy = await startFaultProxy(registry.host, []);
    const client = new RegistryClient(proxy.host, { plainHttp: true });
    const blob = new RegistryBlob(client, "mr/one", {
      index: 0,
      digest: DIGEST,
      sizeBytes: image.length,
      mediaType: "application/vnd.erofs",
    });
    try {
      const ranges = [{ offset: 0, length: 4096 }, { offset: 20000, length: 333 }, {
        offset: image.length - 100,
        length: 100,
      }];
      const got = await blob.readRanges(ranges);
      ranges.forEach((r, i) =>
        assert.deepEqual(got[i], image.subarray(r.offset, r.offset + r.length), `range ${i}`)
      );
      const gets = proxy.requests.filter((r) => r.method === "GET" && r.path.includes("/blobs/"));
      assert.equal(gets.length, 1, "one request for all three");
    } finally {
      await blob.close();
    }
  },
});

const ignoreFuseMount = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  command("python3"),
);

/**
 * Pushes the fixture (its table lists the metadata and names their pack), then mounts it
 * (FUSE, empty disk cache) through a fault proxy with `rules`, twice: GETs per mount and the
 * server's log.
 */
async function mountThroughProxy(rules: FaultRule[], tablesBy: "push" | "checksums" = "push") {
  await using registry = await startRegistry({ auth: "none" });
  if (tablesBy === "push") {
    assertSuccess(
      await runCli(["push", `${registry.host}/mr/mount:v1`, FIXTURE, "--plain-http"], {
        timeoutMs: 60_000,
      }),
    );
  } else {
    // Pushed by another client (no tables), then `checksums --push` (a referrer's table).
    await pushImage(registry, "mr/mount", "v1", [{ bytes: image, mediaType: EROFS_LAYER }]);
    assertSuccess(
      await runCli(["checksums", `${registry.host}/mr/mount:v1`, "--plain-http", "--push"], {
        timeoutMs: 60_000,
      }),
    );
  }
  await using proxy = await startFaultProxy(registry.host, rules);
  const sandbox = await mountSandbox();
  const cacheDir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-cache-" });
  const env = { ...sandbox.env, EROFS_OCI_CACHE_DIR: cacheDir };
  const gets = (digest: string) => proxy.blobGets(digest);
  const pack = (await fixtureList()).pack!;
  const mount = async () => {
    const layerBefore = gets(DIGEST).length, packBefore = gets(pack).length;
    assertSuccess(
      await runCli(
        ["mount", `${proxy.host}/mr/mount:v1`, sandbox.target, "--plain-http", "--backend", "fuse"],
        { env, timeoutMs: 60_000 },
      ),
    );
    const atMount = gets(DIGEST).slice(layerBefore);
    const log = sandbox.serverLogs();
    try {
      // Only directories are listed: a find needs no further GET. The image head's fill for the
      // next mount's check (a background GET from byte 0, 25 ms after the walk) may land here.
      const find = await new Deno.Command("find", { args: [sandbox.target], stdout: "null" })
        .output();
      assert(find.success);
      const duringFind = gets(DIGEST).slice(layerBefore + atMount.length);
      assert(duringFind.every((r) => r.range?.startsWith("bytes=0-")), "find fetched nothing");
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"), log);
    } finally {
      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 30_000 }));
    }
    return { layerGets: atMount, packGets: gets(pack).length - packBefore, log };
  };
  try {
    return { cold: await mount(), warm: await mount() };
  } finally {
    await sandbox.cleanup();
    await Deno.remove(cacheDir, { recursive: true });
  }
}

Deno.test({
  name:
    "metadata ranges at a FUSE mount: the metadata in one GET of its pack, zero GETs at remount",
  ignore: ignoreFuseMount,
  async fn() {
    const { cold, warm } = await mountThroughProxy([]);
    // The CLI fetched the list's pack while the server started (handed_metadata.ts), one GET
    // of a small blob; of the layer only the CLI's superblock check and the image's head
    // stored for the next mount's check (in the background, after the walk).
    assert.equal(cold.packGets, 1, cold.log);
    assert(cold.layerGets.length <= 2, `cold mount: ${cold.layerGets.length} layer GETs`);
    assert(cold.layerGets.every((r) => !r.range?.includes(",")), "no multi-range GET");
    // The server checked the handed list as it checks its disk sidecar, and fetched none.
    assert.match(cold.log, /layer 0: \d+ bytes of listed metadata from mount/, cold.log);
    const listed = /list of (\d+) ranges: 0 from disk, (\d+) from mount, 0 fetched/.exec(cold.log);
    assert(listed && listed[1] === listed[2], cold.log);
    // The CLI fetches nothing either: the disk cache holds the list's sidecar.
    assert.equal(warm.layerGets.length, 0, `remount: ${warm.layerGets.length} layer GETs`);
    assert.equal(warm.packGets, 0);
    // `checksums --push` makes and uploads the pack too (an image someone else pushed), but a
    // table found by referrer is not bound by the manifest: its pack, a blob only the table
    // vouches for, is not used, and the listed ranges come from the layer itself.
    const referred = await mountThroughProxy([], "checksums");
    assert.equal(referred.cold.packGets, 0, referred.cold.log);
    assert(referred.cold.layerGets.some((r) => r.range?.includes(",")), "the multi-range GET");
    assert.match(referred.cold.log, /list of (\d+) ranges: 0 from disk, \1 from mount, 0 fetched/);
  },
});

Deno.test({
  name:
    "metadata pack lost or tampered with: the ranged GETs instead, the mount's bytes the image's",
  ignore: ignoreFuseMount,
  async fn() {
    const pack = (await fixtureList()).pack!;
    const isPack = (r: { method: string; path: string }) =>
      r.method === "GET" && r.path.endsWith(`/blobs/${pack}`);
    // A registry that lost the pack (a table made before packs behaves the same way).
    const lost = await mountThroughProxy([{
      match: isPack,
      fault: { kind: "status", status: 404 },
    }]);
    assert.equal(lost.cold.packGets, 1);
    assert(lost.cold.layerGets.some((r) => r.range?.includes(",")), "the multi-range GET");
    assert.match(lost.cold.log, /list of (\d+) ranges: 0 from disk, \1 from mount, 0 fetched/);
    assert.equal(lost.warm.layerGets.length + lost.warm.packGets, 0);
    // One byte of the pack flipped: the server's check of the whole fails, the ranges are
    // checked one by one and the bad one is fetched from the layer (the find and the
    // manifest compare in mountThroughProxy see the image's bytes).
    const flipped = await mountThroughProxy([{ match: isPack, fault: { kind: "corrupt" } }]);
    const listed = /list of (\d+) ranges: 0 from disk, (\d+) from mount, 1 fetched/.exec(
      flipped.cold.log,
    );
    assert(listed && Number(listed[2]) === Number(listed[1]) - 1, flipped.cold.log);
    assert.equal(flipped.warm.layerGets.length + flipped.warm.packGets, 0);
  },
});

Deno.test({
  name: "pinned pages are read by the FUSE reader thread, their chunks absent from the disk",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const { FuseStack } = await import("./_support/fuse_stack.ts");
    const stack = await FuseStack.create();
    const dir = await stack.dir("cache");
    const bytes = image;
    const inner = new MemorySource(bytes);
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir, onWarning: () => {} })!;
    const disk = cache.wrap(inner, { digest: DIGEST, origin: "test" }) as DiskCachedSource;
    const source = new PrefetchedSource(new CachedSource(disk));
    try {
      const blob = await stack.blob(source, "fuse");
      // Pinned after the reader started (as the list's pages are, while the mount goes on).
      const page = 5;
      source.pin(page * 4096, bytes.slice(page * 4096, (page + 2) * 4096));
      const read = async (at: number, count: number) => {
        const out = await new Deno.Command("dd", {
          args: [`if=${blob.filePath}`, "bs=4096", `skip=${at}`, `count=${count}`, "status=none"],
          stdout: "piped",
        }).output();
        assert(out.success);
        return out.stdout;
      };
      assert.deepEqual(await read(page, 2), bytes.subarray(page * 4096, (page + 2) * 4096));
      for (let i = 0; i < 200 && blob.stats().reads < 1; i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      const stats = blob.stats();
      assert.equal(
        stats.directReads,
        stats.reads,
        `not served by the reader: ${JSON.stringify(stats)}`,
      );
      assert.deepEqual(inner.reads, [], "a pinned page reached the inner source");
      assert.equal(disk.presentChunks(), 0);
      // A page next to them is not pinned: the ordinary way (main thread, fetched).
      assert.deepEqual(
        await read(page + 2, 1),
        bytes.subarray((page + 2) * 4096, (page + 3) * 4096),
      );
      assert(inner.reads.length > 0);
    } finally {
      await stack.cleanup();
      await source.close();
    }
  },
});
