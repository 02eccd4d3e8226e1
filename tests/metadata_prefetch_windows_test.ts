/**
 * The metadata prefetch over the disk cache (issue 12's cold mount): each walk read first fills
 * the aligned window around it with one fetch per missing run, so the image's metadata comes in
 * few large reads; what it may fetch is bounded by the windows the walk's own reads touch
 * (computed here from the image, not hard-coded) and by windowsMaxBytes. No read waits for an
 * fdatasync; a layer with checks still gets only verified whole chunks.
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { PrefetchedSource } from "../lib/source/prefetched.ts";
import {
  DEFAULT_PREFETCH_WINDOWS_MAX_BYTES,
  prefetchErofsMetadata,
} from "../lib/source/metadata_prefetch.ts";
import { walkErofsMetadata } from "../lib/erofs/metadata_walk.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { FIXTURES, path as requirePath, PEER_BIN, requires } from "./_support/requires.ts";
import { runOk } from "./_support/erofs_tree.ts";

const CHUNK = 16 << 10;
const WINDOW = 64 << 10;
const DIGEST = "sha256:" + "cd".repeat(32);
const image = Deno.readFileSync(`${FIXTURES}/basic.erofs`);

/** The windows the walk's own reads of the image touch. */
async function windowsOfWalk(): Promise<Set<number>> {
  const windows = new Set<number>();
  await walkErofsMetadata(
    (offset, length) => {
      for (
        let w = Math.floor(offset / WINDOW);
        w <= Math.floor((offset + length - 1) / WINDOW);
        w++
      ) {
        windows.add(w);
      }
      return Promise.resolve(image.subarray(offset, offset + length));
    },
    image.length,
    { fileInodes: false },
  );
  return windows;
}

async function prefetch(
  dir: string,
  options: { windowBytes?: number; windowsMaxBytes?: number } = {},
  verify?: (chunk: number, bytes: Uint8Array) => boolean,
) {
  const cache = DiskCache.open({ checkCompleteBlobs: false, dir, chunkBytes: CHUNK })!;
  const inner = new MemorySource(image);
  const disk = cache.wrap(inner, { digest: DIGEST, origin: "test", verify }) as DiskCachedSource;
  const served = new PrefetchedSource(new CachedSource(disk, { cacheBytes: 8 << 20 }));
  const summary = await prefetchErofsMetadata(disk, served, { windowBytes: WINDOW, ...options });
  assert.match(summary, /directories:/, summary);
  await disk.whenDurable();
  return { inner, disk, served };
}

const fetched = (reads: { length: number }[]) => reads.reduce((n, r) => n + r.length, 0);

Deno.test("metadata prefetch: one fetch per window run, bounded by the windows the walk touches", async () => {
  const dirs = [await Deno.makeTempDir(), await Deno.makeTempDir()];
  try {
    const windows = await windowsOfWalk();
    const bound = [...windows].reduce(
      (n, w) => n + Math.min(image.length, (w + 1) * WINDOW) - w * WINDOW,
      0,
    );
    const windowed = await prefetch(dirs[0]);
    for (const read of windowed.inner.reads) {
      const first = Math.floor(read.offset / WINDOW);
      const last = Math.floor((read.offset + read.length - 1) / WINDOW);
      for (let w = first; w <= last; w++) assert(windows.has(w), `read in window ${w}`);
    }
    assert(fetched(windowed.inner.reads) <= bound, `${fetched(windowed.inner.reads)} > ${bound}`);
    assert(windowed.inner.reads.length <= windows.size, JSON.stringify(windowed.inner.reads));
    assert.equal(windowed.disk.diskStats().readsWaitedForSync, 0);
    // Without windows: a fetch per walk read's chunk run, never fewer (this fixture's metadata
    // is in its first MiB, which the walk reads at once; the scattered case is the next test).
    const plain = await prefetch(dirs[1], { windowBytes: 0 });
    assert(
      plain.inner.reads.length >= windowed.inner.reads.length,
      `${plain.inner.reads.length} vs ${windowed.inner.reads.length}`,
    );
    // Same pinned metadata either way, the image's bytes.
    assert.equal(windowed.served.pinnedBytes, plain.served.pinnedBytes);
    for (let offset = 0; offset < 64 << 10; offset += 4096) {
      assert.deepEqual(
        await windowed.served.read(offset, 4096),
        image.subarray(offset, offset + 4096),
      );
    }
    await windowed.served.close();
    await plain.served.close();
  } finally {
    for (const dir of dirs) await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("metadata prefetch: windows stop at windowsMaxBytes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const windows = await windowsOfWalk();
    assert(windows.size > 1, "the walk touches more than one window");
    const { inner, served } = await prefetch(dir, { windowsMaxBytes: WINDOW });
    // One window filled ahead; the rest are the walk's own chunk runs, no more than it reads.
    assert(fetched(inner.reads) < windows.size * WINDOW, JSON.stringify(inner.reads));
    await served.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("metadata prefetch with checks: windows are whole verified chunks", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const checked = new Set<number>();
    const verify = (chunk: number, bytes: Uint8Array) => {
      checked.add(chunk);
      return bytes.every((b, i) => b === image[chunk * CHUNK + i]);
    };
    const { inner, disk, served } = await prefetch(dir, {}, verify);
    for (const read of inner.reads) {
      assert.equal(read.offset % CHUNK, 0, `read at ${read.offset} is not a whole chunk`);
      assert(read.length % CHUNK === 0 || read.offset + read.length === image.length);
      for (let c = read.offset / CHUNK; c * CHUNK < read.offset + read.length; c++) {
        assert(checked.has(c), `chunk ${c} fetched but not verified`);
      }
    }
    assert.equal(disk.diskStats().readsWaitedForSync, 0);
    await served.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A tree of 320 directories (300 of them with 4 files of 16-40 KiB, ~33 MB) made into an image
 * by mkfs.erofs 1.9.3, which puts each directory's blocks among its files' data: the metadata
 * is scattered over the whole image, as in the benchmark's (scripts/bench/build-image.sh).
 */
async function scatteredImage(work: string): Promise<Uint8Array> {
  let seed = 7;
  for (let top = 0; top < 20; top++) {
    for (let sub = 0; sub < 15; sub++) {
      const dir = `${work}/src/top${top}/sub${sub}`;
      await Deno.mkdir(dir, { recursive: true });
      for (let f = 0; f < 4; f++) {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        await Deno.writeFile(`${dir}/f${f}`, new Uint8Array((16 << 10) + seed % (24 << 10)));
      }
    }
  }
  await runOk(`${PEER_BIN}/mkfs.erofs`, ["--quiet", "-T0", `${work}/image.erofs`, `${work}/src`]);
  return await Deno.readFile(`${work}/image.erofs`);
}

Deno.test({
  name: "metadata prefetch of a scattered mkfs.erofs image: windows make far fewer fetches",
  ignore: requires(requirePath(`${PEER_BIN}/mkfs.erofs`, "mkfs.erofs 1.9.3")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-prefetch-windows-" });
    try {
      const scattered = await scatteredImage(work);
      const run = async (dir: string, windowBytes?: number) => {
        await Deno.mkdir(dir);
        const cache = DiskCache.open({ checkCompleteBlobs: false, dir })!;
        const inner = new MemorySource(scattered);
        const disk = cache.wrap(inner, { digest: DIGEST, origin: "scattered" }) as DiskCachedSource;
        const served = new PrefetchedSource(new CachedSource(disk));
        const summary = await prefetchErofsMetadata(disk, served, { windowBytes });
        assert.match(summary, /321 directories/, summary);
        await disk.whenDurable();
        await served.close();
        return inner.reads;
      };
      const windowed = await run(`${work}/cache-windowed`);
      const plain = await run(`${work}/cache-plain`, 0);
      console.log(`${windowed.length} fetches with windows, ${plain.length} without`);
      assert(
        windowed.length * 3 < plain.length,
        `${windowed.length} fetches with windows, ${plain.length} without`,
      );
      assert(fetched(windowed) <= DEFAULT_PREFETCH_WINDOWS_MAX_BYTES, `${fetched(windowed)} bytes`);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
