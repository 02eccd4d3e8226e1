/**
 * `--disk-cache-keep-free` as a small file system sees it: several caches (as several
 * processes would) read layers larger than the file system with whole readahead windows in
 * flight, and the free space never drops under what they keep free, while every byte read is
 * the layer's. Before room was reserved ahead of the writes, windows written before the bound
 * was looked at filled a 32 MiB tmpfs to the last byte (ENOSPC, the blobs went memory-only).
 */
import assert from "node:assert/strict";
import { DEFAULT_DISK_CHUNK_BYTES, DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { statFs } from "../ffi/files.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { requires, root } from "./_support/requires.ts";
import { sleep } from "./_support/wait.ts";

const MiB = 1 << 20;

function availableBytes(dir: string): number {
  const stats = statFs(dir);
  return Number(stats.availableBlocks) * stats.blockSizeBytes;
}

/** Reads `source` whole in 1 MiB reads, each with an 8 MiB window fetched ahead of it. */
async function readWithReadahead(source: DiskCachedSource, bytes: Uint8Array): Promise<void> {
  const windows: Promise<void>[] = [];
  for (let offset = 0; offset < bytes.length; offset += MiB) {
    if (offset % (4 * MiB) === 0) windows.push(source.fillAhead(offset + MiB, 8 * MiB));
    const got = await source.read(offset, MiB);
    assert.deepEqual(got, bytes.subarray(offset, offset + MiB), `bytes at ${offset}`);
  }
  await Promise.all(windows);
  await source.whenDurable();
}

Deno.test({
  name: "disk cache keep-free: windows in flight of two caches never eat into it (32 MiB tmpfs)",
  ignore: requires(root()),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "disk-cache-keep-free-" });
    const mount = new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", dir],
    });
    assert((await mount.output()).success, "mount tmpfs");
    const sources: DiskCachedSource[] = [];
    let reading = true;
    try {
      const warnings: string[] = [];
      // The default: a tenth of the file system (3.2 MiB), as in a mount.
      const caches = [0, 1].map(() =>
        DiskCache.open({
          checkCompleteBlobs: false,
          dir,
          onWarning: (message) => warnings.push(message),
        })!
      );
      const keepFree = caches[0].keepFreeBytes;
      assert.equal(keepFree, Math.floor(3.2 * MiB));
      const layers = [1, 2].map((seed) => patternBytes(40 * MiB, seed));
      caches.forEach((cache, n) => {
        const inner = new MemorySource(layers[n], { delayMs: () => 1 });
        const digest = "sha256:" + `${n + 1}`.repeat(64);
        sources.push(cache.wrap(inner, { digest, origin: "test" }) as DiskCachedSource);
      });
      let leastFree = Infinity;
      const watch = (async () => {
        while (reading) {
          leastFree = Math.min(leastFree, availableBytes(dir));
          await sleep(0);
        }
      })();
      try {
        await Promise.all(sources.map((source, n) => readWithReadahead(source, layers[n])));
      } finally {
        reading = false;
        await watch;
      }
      leastFree = Math.min(leastFree, availableBytes(dir));
      // One chunk of slack: the small files beside the data (maps, boot files) are not reserved.
      assert(
        leastFree >= keepFree - DEFAULT_DISK_CHUNK_BYTES,
        `${leastFree} bytes free at the least, keeping ${keepFree}`,
      );
      for (const source of sources) {
        assert(!source.diskStats().degraded, "never ran out of space");
      }
      assert(sources.some((source) => source.diskStats().evictedChunks > 0), "evicted");
      // Still stored once room was made: not all of it read around the cache.
      assert(sources.every((source) => source.presentChunks() > 0), "kept chunks");
      for (const warning of warnings) assert.match(warning, /--disk-cache-keep-free/);
      assert.deepEqual(await sources[0].read(0, layers[0].length), layers[0]);
    } finally {
      reading = false;
      for (const source of sources) await source.close();
      // -l: a failed assertion can leave the blob's files open.
      await new Deno.Command("umount", { args: ["-l", dir] }).output();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("disk cache: no room left by blobs open elsewhere: reads are exact, nothing stored past the bound", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-no-room-" });
  const sources: DiskCachedSource[] = [];
  try {
    const bound = 4 * MiB;
    const warnings: string[] = [];
    // Two caches as two processes: neither evicts what the other has open.
    const [holder, reader] = [0, 1].map(() =>
      DiskCache.open({
        checkCompleteBlobs: false,
        dir,
        maxBytes: bound,
        keepFreeBytes: 0,
        onWarning: (message) => warnings.push(message),
      })!
    );
    const held = patternBytes(bound, 3);
    sources.push(
      holder.wrap(new MemorySource(held), {
        digest: "sha256:" + "c3".repeat(32),
        origin: "test",
      }) as DiskCachedSource,
    );
    assert.deepEqual(await sources[0].read(0, held.length), held);
    await sources[0].whenDurable();
    const layer = patternBytes(6 * MiB, 4);
    const inner = new MemorySource(layer);
    sources.push(
      reader.wrap(inner, {
        digest: "sha256:" + "d4".repeat(32),
        origin: "test",
      }) as DiskCachedSource,
    );
    for (let offset = 0; offset < layer.length; offset += MiB / 2) {
      const got = await sources[1].read(offset, MiB / 2);
      assert.deepEqual(got, layer.subarray(offset, offset + MiB / 2), `bytes at ${offset}`);
    }
    await sources[1].whenDurable();
    assert.equal(sources[1].presentChunks(), 0, "nothing stored");
    assert(!sources[1].diskStats().degraded);
    let allocated = 0;
    for (const entry of Deno.readDirSync(`${dir}/blobs`)) {
      allocated += (Deno.statSync(`${dir}/blobs/${entry.name}`).blocks ?? 0) * 512;
    }
    // The bound, and the maps and boot files beside the data.
    assert(allocated <= bound + 64 * 1024, `${allocated} bytes on disk`);
    assert.equal(inner.reads.reduce((sum, read) => sum + read.length, 0), layer.length);
    assert.deepEqual(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0], /no room left .*served without being stored/);
  } finally {
    for (const source of sources) await source.close();
    await Deno.remove(dir, { recursive: true });
  }
});
