/**
 * refuseBytes while a fill of the same process is in flight: dropAll marks every chunk absent
 * but cannot wait for that fill (its chunk locks are on the same descriptor), so the fill must
 * see the refusal and leave its chunk unmarked. Before, it marked the chunk present again, and
 * another mount of the blob read those bytes.
 */
import assert from "node:assert/strict";
import { DiskCache } from "./disk_cache.ts";
import type { DiskCachedSource } from "./disk_cached.ts";
import { HeldSource, patternBytes } from "../../tests/_support/memory_source.ts";
import { openBlobFiles } from "./disk_cache_files.ts";
import { closeQuietly, F_WRLCK, tryLock, unlock } from "./disk_cache_io.ts";

const CHUNK = 64 << 10;
const DIGEST = "sha256:" + "5c".repeat(32);

/**
 * A blob with chunk 0 cached, a fill of chunk 3 held in flight and the blob refused meanwhile;
 * `fn` goes on from there (`release` lets the fill end, `filled` settles once it has).
 */
async function refusedWhileFilling(
  fn: (refused: {
    dir: string;
    cache: DiskCache;
    bytes: Uint8Array;
    source: DiskCachedSource;
    release(): void;
    filled: Promise<unknown>;
  }) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-refuse-" });
  try {
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir: `${dir}/cache`,
      chunkBytes: CHUNK,
      onWarning: () => {},
    })!;
    const bytes = patternBytes(4 * CHUNK, 3);
    const inner = new HeldSource(bytes);
    const source = cache.wrap(inner, { digest: DIGEST, origin: "test" }) as DiskCachedSource;
    await source.read(0, 10);
    await source.whenDurable();
    assert.ok(source.presentChunks() >= 1);
    inner.held = true;
    const filled = source.fillAhead(3 * CHUNK, CHUNK);
    await new Promise((resolve) => setTimeout(resolve, 30));
    await source.refuseBytes("layer does not match its digest");
    try {
      await fn({ dir, cache, bytes, source, release: () => inner.release(), filled });
    } finally {
      inner.release();
      await filled.catch(() => {});
      await source.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("disk cache: a fill in flight when the blob is refused marks nothing present", () =>
  refusedWhileFilling(async ({ cache, bytes, source, release, filled }) => {
    release();
    await filled;
    await source.whenDurable().catch(() => {});
    await source.close();
    const again = cache.wrap(new HeldSource(bytes), {
      digest: DIGEST,
      origin: "test",
    }) as DiskCachedSource;
    assert.equal(again.presentChunks(), 0, "a refused blob's chunks are all absent");
    await again.close();
  }));

Deno.test("disk cache: refusing a blob keeps the lock of a fill in flight until that fill ends", () =>
  refusedWhileFilling(async ({ dir, bytes, source, release, filled }) => {
    // Another process's descriptor of the map (OFD locks are per open file).
    const maps = [...Deno.readDirSync(`${dir}/cache/blobs`)].filter((e) => e.name.endsWith(".map"));
    assert.equal(maps.length, 1);
    const base = `${dir}/cache/blobs/${maps[0].name.slice(0, -".map".length)}`;
    const otherMapFd = openBlobFiles(base, bytes.length, 4).map;
    try {
      // Before, the refusal released the fill's lock with its own: another process could fill
      // chunk 3 and mark it while this fill still wrote there.
      assert.ok(!tryLock(otherMapFd, F_WRLCK, 3, 1), "chunk 3 stays locked by its fill");
      assert.ok(tryLock(otherMapFd, F_WRLCK, 1, 1), "chunks no fill holds are free");
      unlock(otherMapFd, 1, 1);
      release();
      await filled;
      await source.whenDurable().catch(() => {});
      assert.ok(tryLock(otherMapFd, F_WRLCK, 3, 1), "free once the fill ended");
    } finally {
      closeQuietly(otherMapFd);
    }
  }));
