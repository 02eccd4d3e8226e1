/**
 * refuseBytes while a fill of the same process is in flight: dropAll marks every chunk absent
 * but cannot wait for that fill (its chunk locks are on the same descriptor), so the fill must
 * see the refusal and leave its chunk unmarked. Before, it marked the chunk present again, and
 * another mount of the blob read those bytes.
 */
import assert from "node:assert/strict";
import { DiskCache } from "./disk_cache.ts";
import type { DiskCachedSource } from "./disk_cached.ts";
import type { Source } from "./source.ts";
import { patternBytes } from "../../tests/_support/memory_source.ts";
import { openBlobFiles } from "./disk_cache_files.ts";
import { closeQuietly, F_WRLCK, tryLock, unlock } from "./disk_cache_io.ts";

const CHUNK = 64 << 10;
const DIGEST = "sha256:" + "5c".repeat(32);

/** The blob's bytes, each read held until `release` once `held` is set. */
class HeldSource implements Source {
  readonly size: number;
  held = false;
  #waiting: (() => void)[] = [];
  constructor(readonly bytes: Uint8Array) {
    this.size = bytes.length;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (this.held) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    return this.bytes.slice(offset, offset + length);
  }
  release(): void {
    for (const resolve of this.#waiting.splice(0)) resolve();
  }
}

Deno.test("disk cache: a fill in flight when the blob is refused marks nothing present", async () => {
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
    const ahead = source.fillAhead(3 * CHUNK, CHUNK);
    await new Promise((resolve) => setTimeout(resolve, 30));
    await source.refuseBytes("layer does not match its digest");
    inner.release();
    await ahead;
    await source.whenDurable().catch(() => {});
    await source.close();
    const again = cache.wrap(new HeldSource(bytes), {
      digest: DIGEST,
      origin: "test",
    }) as DiskCachedSource;
    assert.equal(again.presentChunks(), 0, "a refused blob's chunks are all absent");
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: refusing a blob keeps the lock of a fill in flight until that fill ends", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-refuse-lock-" });
  let otherMapFd: number | undefined;
  try {
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir: `${dir}/cache`,
      chunkBytes: CHUNK,
      onWarning: () => {},
    })!;
    const bytes = patternBytes(4 * CHUNK, 5);
    const inner = new HeldSource(bytes);
    const source = cache.wrap(inner, { digest: DIGEST, origin: "test" }) as DiskCachedSource;
    await source.read(0, 10);
    await source.whenDurable();
    inner.held = true;
    const ahead = source.fillAhead(3 * CHUNK, CHUNK);
    await new Promise((resolve) => setTimeout(resolve, 30));
    await source.refuseBytes("layer does not match its digest");
    // Another process's descriptor of the map (OFD locks are per open file).
    const maps = [...Deno.readDirSync(`${dir}/cache/blobs`)].filter((e) => e.name.endsWith(".map"));
    assert.equal(maps.length, 1);
    const base = `${dir}/cache/blobs/${maps[0].name.slice(0, -".map".length)}`;
    otherMapFd = openBlobFiles(base, bytes.length, 4).map;
    // Before, the refusal released the fill's lock with its own: another process could fill
    // chunk 3 and mark it while this fill still wrote there.
    assert.ok(!tryLock(otherMapFd, F_WRLCK, 3, 1), "chunk 3 stays locked by its fill");
    assert.ok(tryLock(otherMapFd, F_WRLCK, 1, 1), "chunks no fill holds are free");
    unlock(otherMapFd, 1, 1);
    inner.release();
    await ahead;
    await source.whenDurable().catch(() => {});
    assert.ok(tryLock(otherMapFd, F_WRLCK, 3, 1), "free once the fill ended");
    await source.close();
  } finally {
    if (otherMapFd !== undefined) closeQuietly(otherMapFd);
    await Deno.remove(dir, { recursive: true });
  }
});
