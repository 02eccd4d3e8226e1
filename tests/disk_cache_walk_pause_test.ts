/**
 * A background fill paused for a metadata walk (background_windows.ts pauseDuringWalks) holds
 * the write lock of its chunks: alone it may pause as long as the walk lasts, but a reader of
 * another process (here: another descriptor, which OFD locks treat alike) that waits for one of
 * those chunks marks that it waits, and the fill then goes on within WALK_PAUSE_MAX_MS.
 */
import assert from "node:assert/strict";
import { DEFAULT_DISK_CHUNK_BYTES as CHUNK, DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import type { Source } from "../lib/source/source.ts";
import {
  pauseDuringWalks,
  WALK_PAUSE_ALONE_MAX_MS,
  WALK_PAUSE_MAX_MS,
} from "../lib/source/background_windows.ts";
import { patternBytes } from "./_support/memory_source.ts";
import { sleep } from "./_support/wait.ts";

/** Streams its bytes in quarter chunks, counting the pieces handed out. */
class StreamingSource implements Source {
  readonly size: number;
  pieces = 0;
  constructor(readonly bytes: Uint8Array) {
    this.size = bytes.length;
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    return Promise.resolve(this.bytes.slice(offset, offset + length));
  }
  async readTo(
    offset: number,
    length: number,
    sink: (bytes: Uint8Array, at: number) => void | Promise<void>,
  ): Promise<void> {
    for (let at = 0; at < length; at += CHUNK / 4) {
      this.pieces++;
      await sink(this.bytes.slice(offset + at, offset + Math.min(length, at + CHUNK / 4)), at);
    }
  }
}

const DIGEST = "sha256:" + "ef".repeat(32);

Deno.test("disk cache: a fill paused for a walk goes on at once for a reader of another process", async () => {
  assert(WALK_PAUSE_ALONE_MAX_MS >= 10 * WALK_PAUSE_MAX_MS, "the two bounds tell apart");
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-walk-pause-" });
  const bytes = patternBytes(8 * CHUNK, 3);
  const innerA = new StreamingSource(bytes), innerB = new StreamingSource(bytes);
  const open = (inner: Source) =>
    DiskCache.open({ checkCompleteBlobs: false, dir, onWarning: (m) => assert.fail(m) })!.wrap(
      inner,
      {
        digest: DIGEST,
        origin: "test",
      },
    ) as DiskCachedSource;
  const a = open(innerA), b = open(innerB);
  try {
    // A walk that never ends: A's background fill pauses between its pieces.
    const walking = () => ({ walkMs: performance.now(), dataMs: -Infinity, walkQuietMs: 40 });
    const filled = a.fillAhead(0, bytes.length, pauseDuringWalks(walking));
    await sleep(WALK_PAUSE_MAX_MS + 300);
    const piecesWhilePaused = innerA.pieces;
    assert(piecesWhilePaused < 4 * 8, `A paused alone past ${WALK_PAUSE_MAX_MS} ms`);
    // B reads a chunk A holds: B waits for A's fill, which goes on within WALK_PAUSE_MAX_MS.
    const startMs = performance.now();
    assert.deepEqual(
      await b.read(6 * CHUNK + 5, 100),
      bytes.subarray(6 * CHUNK + 5, 6 * CHUNK + 105),
    );
    const waitedMs = performance.now() - startMs;
    assert(waitedMs < WALK_PAUSE_MAX_MS + 2000, `B waited ${waitedMs} ms`);
    await filled;
    assert.equal(innerB.pieces, 0, "B read what A fetched, nothing itself");
  } finally {
    await a.close?.();
    await b.close?.();
    await Deno.remove(dir, { recursive: true });
  }
});
