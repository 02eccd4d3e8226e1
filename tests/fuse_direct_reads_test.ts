/**
 * Direct reads: the FUSE reader thread answers READs of chunks the disk cache holds by itself
 * (lib/fuse/reader_worker.ts), through the real kernel. Checked: a 1 MiB read(2) is one READ
 * (INIT negotiated max_pages), present chunks never reach the main thread or the inner source,
 * absent or locked ones go the ordinary way, and every byte is right.
 */
import assert from "node:assert/strict";
import { DEFAULT_DISK_CHUNK_BYTES as CHUNK, DiskCache } from "../lib/source/disk_cache.ts";
import {
  closeQuietly,
  openCacheFile,
  punchHole,
  pwriteAll,
  tryLock,
  unlock,
} from "../lib/source/disk_cache_io.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { PrefetchedSource } from "../lib/source/prefetched.ts";
import type { FuseBlob } from "../lib/fuse/blob.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { FuseStack } from "./_support/fuse_stack.ts";
import { path, requires, root } from "./_support/requires.ts";

const ignore = requires(root(), path("/dev/fuse"));
const MiB = 1 << 20;
const DIGEST = "sha256:" + "cd".repeat(32);
const F_WRLCK = 1;

/** One read(2) of `blocks` × 1 MiB at block `skip` (dd, in a child: O_DIRECT-like FUSE file). */
async function dd(file: string, skip: number, blocks = 1, blockBytes = MiB): Promise<Uint8Array> {
  const out = await new Deno.Command("dd", {
    args: [`if=${file}`, `bs=${blockBytes}`, `skip=${skip}`, `count=${blocks}`, "status=none"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return out.stdout;
}

/** The reader reports served READs shortly after: wait until `reads` reaches `count`. */
async function settled(blob: FuseBlob, count: number) {
  for (let i = 0; i < 200 && blob.stats().reads < count; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return blob.stats();
}

/** Takes the write lock on the first map byte, retrying while another holder lets go. */
async function lockSoon(mapFd: number): Promise<boolean> {
  for (let i = 0; i < 500; i++) {
    if (tryLock(mapFd, F_WRLCK, 0, 1)) return true;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return false;
}

async function withCachedBlob(
  size: number,
  body: (
    ctx: {
      blob: FuseBlob;
      bytes: Uint8Array;
      inner: MemorySource;
      base: string;
      /** Waits until the fills under way are synced and marked present (direct reads need it). */
      durable: () => Promise<void>;
    },
  ) => Promise<void>,
) {
  const stack = await FuseStack.create();
  const dir = await stack.dir("cache");
  const bytes = patternBytes(size, 11);
  const inner = new MemorySource(bytes);
  const cache = DiskCache.open({ checkCompleteBlobs: false, dir, onWarning: () => {} })!;
  // The mount server's stack: pinned pages, the chunk cache (readahead), the disk cache.
  const disk = cache.wrap(inner, { digest: DIGEST, origin: "test" });
  assert(disk instanceof DiskCachedSource);
  const source = new PrefetchedSource(new CachedSource(disk));
  const base = `${dir}/blobs/${DIGEST.replace(":", "-")}.o-`;
  try {
    const blob = await stack.blob(source, "fuse");
    const map = [...Deno.readDirSync(`${dir}/blobs`)].find((e) => e.name.endsWith(".map"))!;
    assert(map.name.startsWith(base.slice(base.lastIndexOf("/") + 1)));
    const durable = () => disk.whenDurable();
    await body({ blob, bytes, inner, base: `${dir}/blobs/${map.name.slice(0, -4)}`, durable });
  } finally {
    await stack.cleanup();
    await source.close();
  }
}

Deno.test({
  name: "fuse direct reads: a 1 MiB read is one READ; cached chunks are served by the reader",
  ignore,
  async fn() {
    await withCachedBlob(4 * MiB + 5000, async ({ blob, bytes, inner, durable }) => {
      assert.deepEqual(await dd(blob.filePath, 1), bytes.subarray(MiB, 2 * MiB));
      const cold = await settled(blob, 1);
      assert.deepEqual(cold.reads, 1, "a 1 MiB read(2) arrived as more than one READ");
      assert.deepEqual(cold.directReads, 0);
      const fetches = inner.reads.length;
      assert(fetches > 0);
      // A chunk is read directly only once marked present, which waits for its fdatasync.
      await durable();

      assert.deepEqual(await dd(blob.filePath, 1), bytes.subarray(MiB, 2 * MiB));
      const warm = await settled(blob, 2);
      assert.deepEqual(warm.reads, 2);
      assert.deepEqual(warm.directReads, 1, "a cached 1 MiB READ was not answered directly");
      // (Readahead may fetch what follows; nothing of the range read.)
      const refetched = inner.reads.slice(fetches).filter((r) =>
        r.offset < 2 * MiB && r.offset + r.length > MiB
      );
      assert.deepEqual(refetched, [], "a cached read reached the inner source");

      // The whole file twice: the second pass is all direct (EOF reads aside), no fetches.
      assert.deepEqual(await dd(blob.filePath, 0, 8), bytes);
      await durable();
      const first = blob.stats();
      const fetched = inner.reads.length;
      assert.deepEqual(await dd(blob.filePath, 0, 8), bytes);
      const second = await settled(blob, first.reads + 5);
      // The four whole chunks are answered by the reader; the short read at the end may still
      // go through the main thread when the last chunk's fill was not yet marked present.
      assert(second.directReads - first.directReads >= 4, JSON.stringify({ first, second }));
      assert.deepEqual(inner.reads.length, fetched);
      // Small reads at odd offsets, across a chunk boundary.
      const at = CHUNK - 704;
      const small = await dd(blob.filePath, at / 64, 22, 64);
      assert.deepEqual(small, bytes.subarray(at, at + 1408));
    });
  },
});

Deno.test({
  name: "fuse direct reads: a chunk absent or write-locked (filler, evictor) is not read directly",
  ignore,
  async fn() {
    await withCachedBlob(2 * MiB, async ({ blob, bytes, inner, base, durable }) => {
      assert.deepEqual(await dd(blob.filePath, 0, 2), bytes);
      // The fills hold their write locks until synced and marked.
      await durable();
      const mapFd = openCacheFile(`${base}.map`, false);
      try {
        // What an evictor holds while it clears the map byte and punches the hole. A READ the
        // kernel sent after dd returned (readahead) may hold its read lock for a moment: an
        // evictor waits for it too.
        assert(await lockSoon(mapFd), "the map byte of chunk 0 stayed locked for 5 s");
        const before = await settled(blob, blob.stats().reads);
        const fetches = inner.reads.length;
        try {
          assert.deepEqual(await dd(blob.filePath, 0, 1, 4096), bytes.subarray(0, 4096));
        } finally {
          unlock(mapFd, 0, 1);
        }
        const locked = await settled(blob, before.reads + 1);
        assert.deepEqual(locked.reads, before.reads + 1);
        assert.deepEqual(locked.directReads, before.directReads, "read under a write lock");
        // The main thread gave up waiting for the lock and read the inner source.
        assert(inner.reads.length > fetches);

        // Absent (evicted): the map byte cleared, the hole punched — fetched again, right bytes.
        const dataFd = openCacheFile(`${base}.data`, false);
        try {
          pwriteAll(mapFd, new Uint8Array(1), 0);
          punchHole(dataFd, 0, CHUNK);
        } finally {
          closeQuietly(dataFd);
        }
        const fetchesBefore = inner.reads.length;
        assert.deepEqual(await dd(blob.filePath, 0, 1, 8192), bytes.subarray(0, 8192));
        const absent = await settled(blob, locked.reads + 1);
        assert.deepEqual(absent.directReads, locked.directReads, "an absent chunk read directly");
        assert(inner.reads.length > fetchesBefore, "the evicted chunk was not fetched again");
        // Present again (once its fill is marked): direct once more.
        await durable();
        assert.deepEqual(await dd(blob.filePath, 0, 1, 8192), bytes.subarray(0, 8192));
        const again = await settled(blob, absent.reads + 1);
        assert.deepEqual(again.directReads, absent.directReads + 1);
      } finally {
        closeQuietly(mapFd);
      }
    });
  },
});
