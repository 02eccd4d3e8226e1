import assert from "node:assert/strict";
import { DEFAULT_DISK_CHUNK_BYTES as CHUNK, DiskCache } from "./disk_cache.ts";
import type { Source } from "./source.ts";
import type { DiskCachedSource } from "./disk_cached.ts";
import { patternBytes } from "../../tests/_support/memory_source.ts";

/**
 * A source that only streams: read() is refused, readTo() hands out odd-sized pieces of ONE
 * scratch buffer that is scribbled over as soon as each sink call settles, as a reused
 * network buffer is. A fill that kept a view, or fell back to read(), gets caught.
 */
class StreamingOnlySource implements Source {
  readonly size: number;
  streams = 0;
  readonly #bytes: Uint8Array;
  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
    this.size = bytes.length;
  }
  read(): Promise<Uint8Array> {
    return Promise.reject(new Error("read() used: the fill buffered the whole run"));
  }
  async readTo(
    offset: number,
    length: number,
    sink: (bytes: Uint8Array, at: number) => void | Promise<void>,
  ): Promise<void> {
    this.streams++;
    const scratch = new Uint8Array(7777);
    for (let at = 0; at < length;) {
      const n = Math.min(scratch.length, length - at);
      scratch.set(this.#bytes.subarray(offset + at, offset + at + n));
      await sink(scratch.subarray(0, n), at);
      scratch.fill(0xee);
      at += n;
    }
  }
}

Deno.test("disk cache: fills from a streaming source go through pieces, verified whole chunks, exact bytes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-stream-" });
  try {
    const bytes = patternBytes(9 * CHUNK + 12_345, 7);
    const inner = new StreamingOnlySource(bytes);
    const seen = new Set<number>();
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      onWarning: (m) => assert.fail(m),
    })!;
    const source = cache.wrap(inner, {
      digest: "sha256:" + "cd".repeat(32),
      origin: "test",
      // Every chunk arrives whole and right, once.
      verify: (index, chunk) => {
        const start = index * CHUNK;
        assert.deepEqual(chunk, bytes.subarray(start, Math.min(bytes.length, start + CHUNK)));
        assert(!seen.has(index), `chunk ${index} verified twice`);
        seen.add(index);
        return true;
      },
    });
    assert.deepEqual(await source.read(0, bytes.length), bytes);
    assert.equal(inner.streams, 1, "one run, one stream");
    assert.equal(seen.size, 10);
    assert.deepEqual(
      await source.read(3 * CHUNK - 5, 2 * CHUNK),
      bytes.subarray(3 * CHUNK - 5, 5 * CHUNK - 5),
    );
    assert.equal(inner.streams, 1, "re-read from disk");
    await source.close?.();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: fills cover the inner source's whole units (one fetch per 1 MiB unit, nothing fetched twice)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-unit-" });
  try {
    const bytes = patternBytes(8 * CHUNK + 100, 3);
    const inner = new StreamingOnlySource(bytes);
    // A source that reads whole 4-chunk units, as VerifiedSource reads whole table chunks.
    Object.defineProperty(inner, "chunkBytes", { value: 4 * CHUNK });
    const asked: [number, number][] = [];
    const readTo = inner.readTo.bind(inner);
    inner.readTo = (offset, length, sink) => {
      asked.push([offset, length]);
      return readTo(offset, length, sink);
    };
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      onWarning: (m) => assert.fail(m),
    })!;
    const source = cache.wrap(inner, { digest: "sha256:" + "ef".repeat(32), origin: "test" });
    assert.deepEqual(await source.read(CHUNK + 10, 4096), bytes.subarray(CHUNK + 10, CHUNK + 4106));
    assert.deepEqual(asked, [[0, 4 * CHUNK]], "the whole unit, once");
    // The unit's other chunks are on disk now; the next unit and the short last one follow.
    assert.deepEqual(await source.read(3 * CHUNK, CHUNK), bytes.subarray(3 * CHUNK, 4 * CHUNK));
    assert.deepEqual(await source.read(6 * CHUNK, 2 * CHUNK + 100), bytes.subarray(6 * CHUNK));
    assert.deepEqual(asked, [[0, 4 * CHUNK], [4 * CHUNK, 4 * CHUNK + 100]]);
    await source.close?.();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: a background fill's pause stops the stream between pieces, a read still gets its bytes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-pause-" });
  try {
    const bytes = patternBytes(12 * CHUNK, 5); // three 1 MiB pieces
    const inner = new StreamingOnlySource(bytes);
    let sent = 0;
    const readTo = inner.readTo.bind(inner);
    inner.readTo = (offset, length, sink) =>
      readTo(offset, length, (piece, at) => {
        sent += piece.length;
        return sink(piece, at);
      });
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      onWarning: (m) => assert.fail(m),
    })!;
    const source = cache.wrap(inner, {
      digest: "sha256:" + "ab".repeat(32),
      origin: "test",
    }) as DiskCachedSource;
    const held = Promise.withResolvers<void>();
    let pauses = 0;
    const filled = source.fillAhead(0, bytes.length, async (closing) => {
      assert(!closing.aborted);
      if (++pauses === 1) await held.promise;
    });
    for (const until = Date.now() + 5000; pauses === 0;) {
      if (Date.now() > until || inner.streams && sent === bytes.length) {
        assert.fail("the fill never paused");
      }
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    const sentAtPause = sent;
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(sent, sentAtPause, "the stream went on during the pause");
    assert(sentAtPause < bytes.length / 2, `${sentAtPause} bytes sent before the first pause`);
    // The first piece is readable meanwhile, from the file.
    assert.deepEqual(await source.read(CHUNK, 100), bytes.subarray(CHUNK, CHUNK + 100));
    held.resolve();
    await filled;
    assert.equal(pauses, 2, "a pause between pieces, none after the last");
    assert.equal(inner.streams, 1);
    assert.deepEqual(await source.read(0, bytes.length), bytes);
    assert.equal(inner.streams, 1, "all of it on disk after the fill");
    await source.close?.();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
