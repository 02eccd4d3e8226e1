/**
 * After close() a disk-cached blob starts no fill: no lock, no fetch from the inner source, no
 * map byte written, no sync timer left (the test sanitizers catch a leaked timer or op).
 */
import assert from "node:assert/strict";
import { DiskCache } from "./disk_cache.ts";
import type { DiskCachedSource } from "./disk_cached.ts";
import { BlobFiller, type FillStats } from "./disk_cache_fill.ts";
import { openBlobFiles } from "./disk_cache_files.ts";
import { closeQuietly, F_WRLCK, tryLock, unlock } from "./disk_cache_io.ts";
import type { Source } from "./source.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";
import { fillBlobOnFiles } from "../../tests/_support/fill_blob.ts";

const CHUNK = 64 << 10;
const DIGEST = "sha256:" + "5c".repeat(32);

/**
 * Reads wait until release(), later ones not at all; the signal is not looked at (bytes that
 * arrived just as close came).
 */
class GatedSource implements Source {
  readonly size: number;
  readonly reads: number[] = [];
  #gates: (() => void)[] | undefined = [];
  constructor(readonly bytes: Uint8Array) {
    this.size = bytes.length;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    this.reads.push(offset);
    const gates = this.#gates;
    if (gates) await new Promise<void>((resolve) => gates.push(resolve));
    return this.bytes.slice(offset, offset + length);
  }
  release(): void {
    const gates = this.#gates ?? [];
    this.#gates = undefined;
    for (const open of gates) open();
  }
}

async function until(what: string, condition: () => boolean): Promise<void> {
  for (const start = Date.now(); !condition();) {
    if (Date.now() - start > 5000) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

Deno.test("disk cache closed: BlobFiller.fill and fillReadable refuse up front (no lock, no fetch, no map byte)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-closed-" });
  const bytes = patternBytes(4 * CHUNK, 3);
  const inner = new MemorySource(bytes);
  const base = `${dir}/blob`;
  const fds = openBlobFiles(base, bytes.length, 4);
  const otherMapFd = openBlobFiles(base, bytes.length, 4).map;
  try {
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      chunkBytes: CHUNK,
      onWarning: (m) => assert.fail(m),
    })!;
    const closing = new AbortController();
    closing.abort(new Error("disk cache closed"));
    const degraded = { count: 0 };
    const stats: FillStats = { fetchedBytes: 0, fetches: 0, waitedForOthers: 0, syncs: 0 };
    const blob = fillBlobOnFiles({
      cache,
      inner,
      base,
      fds,
      chunkBytes: CHUNK,
      closing: closing.signal,
      degraded,
    });
    const filler = new BlobFiller(blob, stats);
    // Another descriptor holds a chunk: a fill that went on would wait for it (a poll timer).
    assert(tryLock(otherMapFd, F_WRLCK, 3, 1));
    const fill = filler.fill([0, 1]);
    const readable = filler.fillReadable([2], [3]);
    assert.equal(filler.fillingCount, 0, "nothing under way");
    assert(tryLock(otherMapFd, F_WRLCK, 0, 3), "the filler holds no lock");
    unlock(otherMapFd, 0, 4);
    await assert.rejects(fill, /disk cache closed/);
    await assert.rejects(readable, /disk cache closed/);
    await filler.whenAllDurable();
    assert.equal(inner.reads.length, 0, "the inner source was never asked");
    assert.deepEqual(stats, { fetchedBytes: 0, fetches: 0, waitedForOthers: 0, syncs: 0 });
    assert.deepEqual([...blob.readMap(0, 4)], [0, 0, 0, 0]);
    assert.equal(degraded.count, 0);
  } finally {
    closeQuietly(otherMapFd);
    closeQuietly(fds.data);
    closeQuietly(fds.map);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache closed: a fill split in gaps fetches no gap after close; reads, fillAhead and completion start nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-closed-" });
  try {
    const bytes = patternBytes(3 * CHUNK, 9);
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      chunkBytes: CHUNK,
      onWarning: (m) => assert.fail(m),
    })!;
    const key = { digest: DIGEST, origin: "test" };
    // Another reader of the blob (as another process would be) fills chunk 1 ...
    const otherInner = new GatedSource(bytes);
    const other = cache.wrap(otherInner, key) as DiskCachedSource;
    const otherRead = other.read(CHUNK, 10);
    assert.equal(otherInner.reads.length, 1, "the other fill holds chunk 1's lock");
    // ... while this source's read of chunks 0-2 waits for its lock: its run is split in two
    // gaps, chunk 0 and chunk 2.
    const inner = new GatedSource(bytes);
    const source = cache.wrap(inner, key) as DiskCachedSource;
    const read = source.read(0, 3 * CHUNK);
    read.catch(() => {});
    assert.equal(inner.reads.length, 0);
    otherInner.release();
    assert.deepEqual(await otherRead, bytes.subarray(CHUNK, CHUNK + 10));
    await until("the fetch of chunk 0", () => inner.reads.length === 1);
    // Closed while chunk 0's bytes arrive: chunk 0 is stored, chunk 2 is never asked for.
    const closed = source.close();
    inner.release();
    await assert.rejects(read, /closed/);
    await closed;
    assert.deepEqual(inner.reads, [0], "no fetch after close");
    assert.equal(source.diskStats().fetches, 1);
    assert.equal(other.presentChunks(), 2, "chunks 0 and 1, not 2");
    // Every way in after close: refused or a no-op, the inner source not asked.
    await assert.rejects(source.read(2 * CHUNK, 10), /closed/);
    await source.fillAhead(0, 3 * CHUNK);
    assert.equal(await source.completeInBackground(0), "stopped");
    await source.whenDurable();
    assert.deepEqual(inner.reads, [0]);
    assert.equal(other.presentChunks(), 2);
    await other.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache closed: a read waiting for a busy chunk lock goes no further after close", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-closed-" });
  let evictorMapFd = -1;
  try {
    const bytes = patternBytes(2 * CHUNK, 5);
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      chunkBytes: CHUNK,
      onWarning: (m) => assert.fail(m),
    })!;
    const inner = new MemorySource(bytes);
    const source = cache.wrap(inner, { digest: DIGEST, origin: "test" }) as DiskCachedSource;
    assert.deepEqual(await source.read(0, 10), bytes.subarray(0, 10));
    await source.whenDurable();
    // An evictor of another process holds chunk 0: the read retries after a moment ...
    const base = `${dir}/blobs/${DIGEST.replace(":", "-")}.o-test.c${CHUNK}`;
    evictorMapFd = openBlobFiles(base, bytes.length, 2).map;
    assert(tryLock(evictorMapFd, F_WRLCK, 0, 1));
    const read = source.read(0, 10);
    read.catch(() => {});
    // ... and the source is closed (its descriptors too) before it does.
    await source.close();
    unlock(evictorMapFd, 0, 1);
    await assert.rejects(read, /read from a closed DiskCachedSource/);
    assert.equal(inner.reads.length, 1, "the inner source was not asked instead");
  } finally {
    closeQuietly(evictorMapFd);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache closed: a whole-blob digest check under way ends with close, which waits for it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-closed-" });
  try {
    // 40 pieces of 1 MiB: the check yields after every 16, and close() comes before the first.
    const bytes = patternBytes(40 << 20, 9);
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      onWarning: (m) => assert.fail(m),
    })!;
    const inner = new MemorySource(bytes);
    const source = cache.wrap(inner, { digest: DIGEST, origin: "test" }) as DiskCachedSource;
    assert.deepEqual(await source.read(0, bytes.length), bytes);
    await source.whenDurable();
    const check = source.checkDigest(DIGEST);
    const closed = source.close();
    assert.equal(await check, "incomplete", "nothing is known of a check cut short");
    await closed;
    assert.equal(await source.checkDigest(DIGEST), "incomplete", "no check after close");
    // The map was not touched: a new source finds every chunk still present.
    const again = cache.wrap(new MemorySource(bytes), { digest: DIGEST, origin: "test" });
    assert.equal(
      (again as DiskCachedSource).presentChunks(),
      (again as DiskCachedSource).chunkCount,
    );
    await again.close?.();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
