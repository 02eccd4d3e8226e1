/**
 * A fill of another process that holds chunks and does not go on (a server stopped by SIGSTOP,
 * a frozen cgroup, a debugger) holds their write lock for as long as it stays stopped. Readers
 * here wait for it a bounded time, then get their bytes from the inner source, checked as a
 * fill's are, without storing them; once the lock is free the chunks are filled as usual.
 * The stopped filler is a lock taken through a descriptor of its own (OFD locks of different
 * open file descriptions conflict even within one process, disk_cache_io.ts).
 */
import assert from "node:assert/strict";
import { DiskCache } from "./disk_cache.ts";
import type { DiskCachedSource } from "./disk_cached.ts";
import { ChunkVerifyError } from "./disk_cache_fetch.ts";
import { openBlobFiles } from "./disk_cache_files.ts";
import { closeQuietly, F_WRLCK, tryLock } from "./disk_cache_io.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";

const CHUNK = 64 << 10;
const CHUNKS = 4;
const DIGEST = "sha256:" + "4e".repeat(32);
/** Short, so the tests run quickly; the production wait is OTHERS_FILL_WAIT_MS. */
const WAIT_MS = 100;

/** `promise`, or a failure once `ms` passed: the code before this fix waited forever. */
async function settlesWithin<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, guard]);
  } finally {
    clearTimeout(timer);
  }
}

/** The cache's files of the one blob in `dir`, without .map/.data. */
function onlyBlobBase(dir: string): string {
  const maps = [...Deno.readDirSync(`${dir}/blobs`)].filter((e) => e.name.endsWith(".map"));
  assert.equal(maps.length, 1);
  return `${dir}/blobs/${maps[0].name.slice(0, -".map".length)}`;
}

Deno.test("disk cache: a chunk another process's stopped fill holds is read from the inner source after a bounded wait, not stored; cached once free", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-held-" });
  const warnings: string[] = [];
  let holderMapFd = -1;
  let source: DiskCachedSource | undefined;
  let pending: Promise<unknown> | undefined;
  try {
    const bytes = patternBytes(CHUNKS * CHUNK, 7);
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      chunkBytes: CHUNK,
      othersFillWaitMs: WAIT_MS,
      onWarning: (m) => warnings.push(m),
    })!;
    const inner = new MemorySource(bytes);
    source = cache.wrap(inner, { digest: DIGEST, origin: "test" }) as DiskCachedSource;
    holderMapFd = openBlobFiles(onlyBlobBase(dir), bytes.length, CHUNKS).map;
    assert(tryLock(holderMapFd, F_WRLCK, 1, 1), "the stopped filler holds chunk 1");

    const read = source.read(CHUNK + 100, 1000);
    pending = read;
    assert.deepEqual(
      await settlesWithin(read, 15_000, "read of a held chunk"),
      bytes.subarray(CHUNK + 100, CHUNK + 1100),
    );
    assert.equal(source.presentChunks(), 0, "the held chunk is not marked by this source");
    assert.deepEqual(inner.reads, [{ offset: CHUNK, length: CHUNK }], "the whole chunk, once");
    assert.equal(source.diskStats().waitedForOthers, 1);
    assert.equal(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0], /another process has held chunks of this blob/);

    // Still held: the next read of it is served the same way, without a second wait or warning.
    const again = source.read(CHUNK + 5000, 10);
    pending = again;
    assert.deepEqual(
      await settlesWithin(again, 15_000, "second read of a held chunk"),
      bytes.subarray(CHUNK + 5000, CHUNK + 5010),
    );
    assert.equal(source.diskStats().waitedForOthers, 1, "no second wait for the same lock");
    assert.equal(warnings.length, 1, "warned once");
    assert.equal(source.presentChunks(), 0);
    // Chunks nobody holds are filled as ever.
    assert.deepEqual(await source.read(2 * CHUNK, 10), bytes.subarray(2 * CHUNK, 2 * CHUNK + 10));
    assert.equal(source.presentChunks(), 1);

    // The stopped filler is gone (its descriptor closed, as the kernel does when it dies).
    closeQuietly(holderMapFd);
    holderMapFd = -1;
    assert.deepEqual(await source.read(CHUNK + 7, 3), bytes.subarray(CHUNK + 7, CHUNK + 10));
    assert.equal(source.presentChunks(), 2, "chunk 1 filled and marked now");
    const fetches = inner.reads.length;
    assert.deepEqual(await source.read(CHUNK, 10), bytes.subarray(CHUNK, CHUNK + 10));
    assert.equal(inner.reads.length, fetches, "read from the disk cache");
    assert.equal(warnings.length, 1);
  } finally {
    closeQuietly(holderMapFd);
    await pending?.catch(() => {});
    await source?.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: bytes read around a held chunk are checked by verify as a fill's are", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-held-" });
  let holderMapFd = -1;
  let source: DiskCachedSource | undefined;
  let pending: Promise<unknown> | undefined;
  try {
    const good = patternBytes(CHUNKS * CHUNK, 11);
    // The registry sends other bytes for chunk 1.
    const served = good.slice();
    served[CHUNK + 3] ^= 0xff;
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      chunkBytes: CHUNK,
      othersFillWaitMs: WAIT_MS,
      onWarning: () => {},
    })!;
    const inner = new MemorySource(served);
    const verify = (index: number, chunk: Uint8Array) =>
      chunk.every((byte, i) => byte === good[index * CHUNK + i]);
    source = cache.wrap(inner, { digest: DIGEST, origin: "test", verify }) as DiskCachedSource;
    holderMapFd = openBlobFiles(onlyBlobBase(dir), good.length, CHUNKS).map;
    assert(tryLock(holderMapFd, F_WRLCK, 1, 1), "the stopped filler holds chunk 1");
    const read = source.read(CHUNK + 100, 10);
    pending = read;
    await assert.rejects(settlesWithin(read, 15_000, "read of a held chunk"), ChunkVerifyError);
    assert.equal(source.presentChunks(), 0);
  } finally {
    closeQuietly(holderMapFd);
    await pending?.catch(() => {});
    await source?.close();
    await Deno.remove(dir, { recursive: true });
  }
});
