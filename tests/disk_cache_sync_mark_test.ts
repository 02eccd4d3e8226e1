/**
 * The deferred sync of disk-cache fills (disk_cache_fill.ts #syncAndMark): a WRITTEN mark
 * becomes PRESENT only for bytes the sync covered, and a failed sync leaves no chunk marked.
 * The filler runs on real cache files with its fdatasync held or failed by the test; "another
 * process" is a second descriptor of the map (OFD locks conflict between descriptors).
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import { BlobFiller } from "../lib/source/disk_cache_fill.ts";
import { PRESENT } from "../lib/source/disk_cache_sync.ts";
import { WRITTEN } from "../lib/source/disk_cache_boot.ts";
import { openBlobFiles } from "../lib/source/disk_cache_files.ts";
import {
  closeQuietly,
  dataSync,
  F_RDLCK,
  F_WRLCK,
  openCacheFile,
  preadExact,
  pwriteAll,
  tryLock,
  unlock,
} from "../lib/source/disk_cache_io.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { fillBlobOnFiles } from "./_support/fill_blob.ts";
import { waitFor } from "./_support/wait.ts";

const CHUNK = 64 * 1024;

interface Rig {
  filler: BlobFiller;
  /** From now on every read of the map fails (a disk error). */
  breakMap(): void;
  map(): number[];
  degraded(): boolean;
  warnings: string[];
  close(): void;
}

function rig(
  dir: string,
  syncData: (fd: number) => Promise<void>,
  delayMs?: (offset: number) => number,
): Rig {
  const bytes = patternBytes(4 * CHUNK, 3);
  const warnings: string[] = [];
  const cache = DiskCache.open({ dir, chunkBytes: CHUNK, onWarning: (m) => warnings.push(m) })!;
  const base = `${dir}/blobs/blob`;
  const fds = openBlobFiles(base, bytes.length, 4);
  const closing = new AbortController();
  const degraded = { count: 0 };
  let broken = false;
  const blob = fillBlobOnFiles({
    cache,
    inner: new MemorySource(bytes, { delayMs }),
    base,
    fds,
    chunkBytes: CHUNK,
    closing: closing.signal,
    degraded,
    mapBroken: () => broken,
    syncData,
  });
  const filler = new BlobFiller(blob, {
    fetchedBytes: 0,
    fetches: 0,
    waitedForOthers: 0,
    syncs: 0,
  });
  return {
    filler,
    breakMap: () => broken = true,
    map: () => {
      const out = new Uint8Array(4);
      preadExact(fds.map, out, 0);
      return [...out];
    },
    degraded: () => degraded.count > 0,
    warnings,
    close: () => {
      closing.abort();
      closeQuietly(fds.data);
      closeQuietly(fds.map);
    },
  };
}

/** Whether a write lock on `length` map bytes at `offset` can be taken within `ms`. */
function lockedWithin(fd: number, offset: number, length: number, ms: number) {
  return waitFor("the lock", () => tryLock(fd, F_WRLCK, offset, length), ms).then(
    () => true,
    () => false,
  );
}

Deno.test("disk cache sync: a chunk evicted and refilled during a sync is not marked PRESENT by it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-sync-" });
  let release!: () => void;
  let started!: () => void;
  const syncStarted = new Promise<void>((resolve) => started = resolve);
  const t = rig(dir, async (fd) => {
    started();
    await new Promise<void>((resolve) => release = resolve);
    await dataSync(fd);
  });
  const other = openCacheFile(`${dir}/blobs/blob.map`, false);
  try {
    await t.filler.fill([0]);
    assert.deepEqual(t.map(), [WRITTEN, 0, 0, 0]);
    const durable = t.filler.whenAllDurable();
    await syncStarted;
    // Readers of another process still read the chunk while it is synced.
    assert.ok(tryLock(other, F_RDLCK, 0, 1), "a reader is not kept off by the sync");
    unlock(other, 0, 1);
    // Another process evicts chunk 0 and refills it: its new bytes are written after the
    // sync began, so this sync does not cover them.
    let refilled = false;
    if (tryLock(other, F_WRLCK, 0, 1)) {
      pwriteAll(other, new Uint8Array([0]), 0);
      pwriteAll(other, new Uint8Array([WRITTEN]), 0);
      unlock(other, 0, 1);
      refilled = true;
    }
    release();
    await durable;
    assert.deepEqual(
      t.map(),
      [refilled ? WRITTEN : PRESENT, 0, 0, 0],
      "PRESENT only for bytes written before the sync",
    );
    assert.ok(!refilled, "an evictor is kept off the chunks being synced");
    // The sync's locks are gone with it. Closing the sync's descriptor drops its OFD locks, but
    // `deno test --parallel` runs other files in this process, and a child one of them spawns
    // holds a copy of every descriptor from its clone to its exec: allow that window to pass.
    assert.ok(await lockedWithin(other, 0, 4, 2000), "the sync's locks outlive the sync");
    unlock(other, 0, 4);
  } finally {
    release?.();
    closeQuietly(other);
    t.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache sync: a failed sync leaves its chunks absent, not WRITTEN", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-sync-" });
  const t = rig(dir, () => Promise.reject(new Error("EIO (test)")));
  try {
    await t.filler.fill([1, 2]);
    assert.deepEqual(t.map(), [0, WRITTEN, WRITTEN, 0]);
    await t.filler.whenAllDurable();
    // Bytes whose writeback failed may be dropped from the page cache and read back from the
    // disk: no reader may take them for verified ones.
    assert.deepEqual(t.map(), [0, 0, 0, 0]);
    assert.ok(t.degraded());
    assert.equal(t.warnings.length, 1);
    assert.match(t.warnings[0], /disk sync failed: EIO \(test\)/);
  } finally {
    t.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache sync: a sync during a fill's later gap marks the gap already written", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-sync-" });
  // Chunks 2-3 come slowly: the sync of chunk 0 runs while the fill still fetches them.
  const t = rig(dir, dataSync, (offset) => offset >= 2 * CHUNK ? 300 : 0);
  const other = openCacheFile(`${dir}/blobs/blob.map`, false);
  try {
    // Another process filled chunk 1: the run 0-3 has the gaps 0 and 2-3.
    pwriteAll(other, new Uint8Array([PRESENT]), 1);
    const fill = t.filler.fill([0, 1, 2, 3]);
    const durable = t.filler.whenAllDurable(); // syncs each run as soon as it is written
    await fill;
    await durable;
    assert.deepEqual(t.map(), [PRESENT, PRESENT, PRESENT, PRESENT]);
  } finally {
    closeQuietly(other);
    t.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache sync: a sync whose marking fails neither rejects nor ends the process", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-sync-" });
  const t = rig(dir, dataSync);
  try {
    await t.filler.fill([3]);
    t.breakMap();
    // The timer's sync has nobody awaiting it: a rejection there would be unhandled.
    await t.filler.whenAllDurable();
    assert.deepEqual(t.map(), [0, 0, 0, WRITTEN], "left WRITTEN (good in this boot)");
    assert.match(t.warnings.join("\n"), /marking synced chunks failed: EIO \(test map\)/);
  } finally {
    t.close();
    await Deno.remove(dir, { recursive: true });
  }
});
