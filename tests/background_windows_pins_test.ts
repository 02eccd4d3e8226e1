/**
 * The pinned pages' file for the FUSE reader thread (PrefetchedSource.openDirectReads) lives in
 * memory (disk_cache_io.ts openMemoryFile: O_TMPFILE on /dev/shm), so dropping the page cache
 * does not send a cold `find`'s reads to the disk, where the background windows' fills write
 * (issue 12: with the windows started in the idle time after ready, find 2-3× local with the
 * file on disk). Real disk cache, real PrefetchedSource.
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { PIN_PAGE_BYTES, PrefetchedSource } from "../lib/source/prefetched.ts";
import { closeQuietly, openMemoryFile } from "../lib/source/disk_cache_io.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { preadFully } from "../ffi/files.ts";

import { path, requires } from "./_support/requires.ts";

const noShm = requires(path("/dev/shm", "a tmpfs at /dev/shm"));

Deno.test({
  name: "openMemoryFile: an unnamed (deleted) file on /dev/shm",
  ignore: noShm,
  fn() {
    const fd = openMemoryFile();
    assert(fd !== undefined, "no O_TMPFILE file on /dev/shm");
    try {
      assert.match(Deno.readLinkSync(`/proc/self/fd/${fd}`), /^\/dev\/shm\/.* \(deleted\)$/);
    } finally {
      closeQuietly(fd);
    }
  },
});

Deno.test({
  name: "PrefetchedSource: the reader thread's pinned pages are in a memory file, with their bytes",
  ignore: noShm,
  async fn() {
    const dir = await Deno.makeTempDir();
    const image = patternBytes(64 * PIN_PAGE_BYTES, 3);
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir, chunkBytes: 16 << 10 })!;
    const disk = cache.wrap(new MemorySource(image), {
      digest: "sha256:" + "ab".repeat(32),
      origin: "test",
    });
    const served = new PrefetchedSource(new CachedSource(disk, { cacheBytes: 8 << 20 }));
    const files = served.openDirectReads();
    try {
      assert(files?.pins, "no pinned pages' file for direct reads");
      const at = 5 * PIN_PAGE_BYTES;
      served.pin(at, image.slice(at, at + PIN_PAGE_BYTES));
      for (const fd of [files.pins.fd, files.pins.mapFd]) {
        assert.match(Deno.readLinkSync(`/proc/self/fd/${fd}`), /^\/dev\/shm\//);
      }
      const page = new Uint8Array(PIN_PAGE_BYTES);
      preadFully(files.pins.fd, page, at);
      assert.deepEqual(page, image.subarray(at, at + PIN_PAGE_BYTES));
      const mapByte = new Uint8Array(1);
      preadFully(files.pins.mapFd, mapByte, 5);
      assert.equal(mapByte[0], 1);
    } finally {
      files?.close();
      await served.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
