/**
 * Room a fill reserved (allocated in the data file) and never gave back because its process
 * died (kill -9 between DiskCache.reserve and its `finally`) is punched out the next time the
 * blob is opened, or scanned for eviction while open here; chunks a live fill holds (another
 * descriptor's write lock, or a fill of this process) keep theirs. The killed process is a
 * reservation made through DiskCache.reserve and never ended, without a lock (the kernel drops
 * a dead process's OFD locks); a live one of another process is a lock taken through a
 * descriptor of its own (OFD locks of different descriptors conflict as processes' do).
 */
import assert from "node:assert/strict";
import { DiskCache } from "./disk_cache.ts";
import type { DiskCachedSource } from "./disk_cached.ts";
import type { Source } from "./source.ts";
import { openBlobFiles } from "./disk_cache_files.ts";
import { allocateAhead, closeQuietly, F_WRLCK, lockedByOthers, tryLock } from "./disk_cache_io.ts";
import { fstatFd } from "../../ffi/files.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";

const CHUNK = 256 << 10;
const CHUNKS = 16;
const DIGEST = "sha256:" + "7c".repeat(32);
const KEY = { digest: DIGEST, origin: "test" };

function onlyBlobBase(dir: string): string {
  const maps = [...Deno.readDirSync(`${dir}/blobs`)].filter((e) => e.name.endsWith(".map"));
  assert.equal(maps.length, 1);
  return `${dir}/blobs/${maps[0].name.slice(0, -".map".length)}`;
}

function allocatedBytes(base: string): number {
  return (Deno.statSync(`${base}.data`).blocks ?? 0) * 512;
}

Deno.test("disk cache: room a killed fill reserved is punched out when the blob is opened again; a live fill's stays", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-reclaim-" });
  let liveMapFd = -1, dataFd = -1;
  let source: DiskCachedSource | undefined;
  try {
    const bytes = patternBytes(CHUNKS * CHUNK, 3);
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir, chunkBytes: CHUNK })!;
    source = cache.wrap(new MemorySource(bytes), KEY) as DiskCachedSource;
    assert.deepEqual(await source.read(0, 2 * CHUNK), bytes.subarray(0, 2 * CHUNK));
    await source.whenDurable();
    await source.close();
    source = undefined;
    const base = onlyBlobBase(dir);
    assert.equal(allocatedBytes(base), 2 * CHUNK, "chunks 0 and 1 are cached");

    const files = openBlobFiles(base, bytes.length, CHUNKS);
    liveMapFd = files.map;
    dataFd = files.data;
    // Killed mid-fill: chunks 4..10 reserved, no lock (its process is gone).
    assert(cache.reserve(6 * CHUNK, CHUNK, (n) => allocateAhead(dataFd, 4 * CHUNK, n)));
    // Alive, mid-fill: chunks 12..14 reserved under their write lock.
    assert(tryLock(liveMapFd, F_WRLCK, 12, 2));
    assert(cache.reserve(2 * CHUNK, CHUNK, (n) => allocateAhead(dataFd, 12 * CHUNK, n)));
    assert.equal(allocatedBytes(base), 10 * CHUNK);

    source = cache.wrap(new MemorySource(bytes), KEY) as DiskCachedSource;
    assert.equal(
      allocatedBytes(base),
      4 * CHUNK,
      "the present chunks and the live fill's reservation stay, the killed one's is freed",
    );
    assert(tryLock(liveMapFd, F_WRLCK, 12, 2), "the live fill still holds its chunks");
    assert.equal(fstatFd(dataFd).allocatedBytes, 4 * CHUNK);
    assert.deepEqual(await source.read(0, 2 * CHUNK), bytes.subarray(0, 2 * CHUNK));
  } finally {
    await source?.close();
    closeQuietly(dataFd);
    closeQuietly(liveMapFd);
    await Deno.remove(dir, { recursive: true });
  }
});

/** A Source whose reads wait until release() (a fill in flight for as long as a test needs). */
class GatedSource implements Source {
  readonly size: number;
  readonly reads: number[] = [];
  #open!: () => void;
  readonly #gate = new Promise<void>((resolve) => this.#open = resolve);

  constructor(readonly bytes: Uint8Array) {
    this.size = bytes.length;
  }

  release(): void {
    this.#open();
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.reads.push(offset);
    await this.#gate;
    return this.bytes.slice(offset, offset + length);
  }
}

Deno.test("disk cache: the eviction scan punches out a killed fill's room in a blob open here, never this process's fill in flight", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-reclaim-" });
  let otherMapFd = -1, dataFd = -1;
  let source: DiskCachedSource | undefined;
  let inner: GatedSource | undefined;
  try {
    const bytes = patternBytes(CHUNKS * CHUNK, 5);
    // Room for 7 chunks: the fill below has to evict (and so reclaim) while it reserves.
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      chunkBytes: CHUNK,
      maxBytes: 7 * CHUNK,
      keepFreeBytes: 0,
    })!;
    inner = new GatedSource(bytes);
    source = cache.wrap(inner, KEY) as DiskCachedSource;
    const base = onlyBlobBase(dir);
    const files = openBlobFiles(base, bytes.length, CHUNKS);
    otherMapFd = files.map;
    dataFd = files.data;
    // Another process with the blob open was killed mid-fill after this source opened it.
    assert(cache.reserve(6 * CHUNK, CHUNK, (n) => allocateAhead(dataFd, 8 * CHUNK, n)));
    assert.equal(allocatedBytes(base), 6 * CHUNK);

    // A fill here of chunks 2..4: its reservation passes the bound, so it evicts first.
    const read = source.read(2 * CHUNK, 2 * CHUNK);
    read.catch(() => {}); // awaited below; a failed assertion before closes the source under it
    while (inner.reads.length === 0) await new Promise((r) => setTimeout(r, 5));
    assert.equal(
      allocatedBytes(base),
      2 * CHUNK,
      "the killed fill's room went, the live one's is there",
    );
    assert(lockedByOthers(otherMapFd, 2, 2), "the fill in flight still holds its chunks' lock");

    // The scan while it is in flight leaves it alone too.
    cache.evict();
    assert.equal(allocatedBytes(base), 2 * CHUNK);
    assert(lockedByOthers(otherMapFd, 2, 2));

    inner.release();
    assert.deepEqual(await read, bytes.subarray(2 * CHUNK, 4 * CHUNK));
    await source.whenDurable();
    assert.equal(source.presentChunks(), 2);
    assert.equal(allocatedBytes(base), 2 * CHUNK);
  } finally {
    inner?.release();
    await source?.close();
    closeQuietly(dataFd);
    closeQuietly(otherMapFd);
    await Deno.remove(dir, { recursive: true });
  }
});
