/**
 * Blob eviction racing an opener (disk_cache_scan.ts removeIfUnused, disk_cache_files.ts): the
 * removal's steps are interleaved with another opener's by hooking Deno.removeSync, as another
 * process could interleave them.
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import { DiskCachedSource } from "../lib/source/disk_cached.ts";
import type { Source } from "../lib/source/source.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { waitFor } from "./_support/wait.ts";

const MiB = 1 << 20;
const DIGEST = "sha256:" + "cd".repeat(32);
const KEY = { digest: DIGEST, origin: "test" };

/** A source on `bytes` through a fresh DiskCache of `dir` (1 MiB chunks, warnings dropped). */
function openCached(dir: string, bytes: Uint8Array): Source {
  return DiskCache.open({ checkCompleteBlobs: false, dir, chunkBytes: MiB, onWarning: () => {} })!
    .wrap(
      new MemorySource(bytes),
      KEY,
    );
}

/** Byte-equal (without deepEqual's diff of megabytes on failure). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

Deno.test("disk cache: an opener between a blob eviction's unlinks never pairs a new map with the old data", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-race-" });
  const realRemove = Deno.removeSync;
  const opened: Source[] = [];
  try {
    const bytes = patternBytes(4 * MiB, 11);
    const open = () => openCached(dir, bytes);
    const first = open() as DiskCachedSource;
    assert.ok(same(await first.read(0, bytes.length), bytes));
    await first.close!();
    // Between the eviction's first and second unlink, a process opens the blob (it may find
    // the blob locked by the eviction and keep its memory cache only).
    let hooked = false;
    Deno.removeSync = (path: string | URL, options?: Deno.RemoveOptions) => {
      realRemove(path, options);
      if (!hooked) {
        hooked = true;
        opened.push(open());
      }
    };
    const evictor = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      chunkBytes: MiB,
      maxBytes: 1,
    })!;
    // An eviction skips a blob in use (locked). `deno test --parallel` runs other files in this
    // process, and a child one of them spawns holds copies of all our descriptors, the closed
    // blob's lock included, between its clone and its exec: try again for up to 2 s.
    await waitFor("the blob's eviction", () => {
      evictor.evict();
      return hooked;
    }, 2000);
    Deno.removeSync = realRemove;
    assert.ok(hooked, "the blob was evicted");
    const during = opened[0];
    assert.ok(same(await during.read(MiB, MiB), bytes.subarray(MiB, 2 * MiB)));
    if (during instanceof DiskCachedSource) await during.whenDurable();
    // Every later opener shares the files of the one that opened during the eviction.
    const later = open();
    opened.push(later);
    for (let chunk = 0; chunk < 4; chunk++) {
      const got = await later.read(chunk * MiB, MiB);
      assert.ok(same(got, bytes.subarray(chunk * MiB, (chunk + 1) * MiB)), `chunk ${chunk} wrong`);
    }
  } finally {
    Deno.removeSync = realRemove;
    for (const source of opened) await source.close?.();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: a map left without its data (eviction cut short) marks nothing present", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-race-" });
  try {
    const bytes = patternBytes(3 * MiB, 12);
    const open = () => openCached(dir, bytes);
    const first = open() as DiskCachedSource;
    assert.ok(same(await first.read(0, bytes.length), bytes));
    await first.close();
    const base = `${dir}/blobs/${DIGEST.replace(":", "-")}.o-test.c${MiB}`;
    Deno.removeSync(`${base}.data`); // as a crash between the eviction's unlinks leaves it
    const again = open() as DiskCachedSource;
    try {
      assert.equal(again.presentChunks(), 0);
      assert.ok(same(await again.read(0, bytes.length), bytes));
    } finally {
      await again.close!();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
