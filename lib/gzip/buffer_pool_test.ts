import assert from "node:assert/strict";
import { BufferPool } from "./buffer_pool.ts";
import { InflateCursor } from "./inflate_cursor.ts";
import { Zinfo } from "./zinfo.ts";
import { buildZinfo } from "./zinfo_builder.ts";
import { nativeBytes } from "../../ffi/zlib.ts";

Deno.test("buffer pool: a buffer given back is handed out again, the last given first", () => {
  const pool = new BufferPool(8 << 20);
  const a = pool.take(1 << 20), b = pool.take(1 << 20);
  assert.equal(a.length, 1 << 20);
  assert.notEqual(a.buffer, b.buffer);
  pool.give(a);
  pool.give(b);
  assert.equal(pool.take(1 << 20).buffer, b.buffer);
  assert.equal(pool.take(1000).buffer.byteLength >= 1000, true);
  assert.deepEqual([pool.made, pool.reused], [3, 1]);
});

Deno.test("buffer pool: sizes are matched, not wasted; each size is bounded on its own", () => {
  const pool = new BufferPool(2 << 20);
  const big = pool.take(4 << 20);
  pool.give(big);
  // A 4 MiB buffer is not spent on a 512 KiB one.
  assert.notEqual(pool.take(512 << 10).buffer, big.buffer);
  const small = Array.from({ length: 6 }, () => pool.take(512 << 10));
  for (const bytes of small) pool.give(bytes);
  // Four of 512 KiB kept (the bound), one of a size over a quarter of the bound.
  assert.equal(pool.freeBytes, (2 << 20) + (4 << 20));
  pool.give(new Uint8Array(4 << 20));
  assert.equal(pool.freeBytes, (2 << 20) + (4 << 20));
  assert.equal(pool.take(4 << 20).buffer, big.buffer);
  pool.close();
  pool.give(small[0]);
  assert.equal(pool.freeBytes, 0);
});

/** A gzip of `tar` (CompressionStream) and its zinfo, made by our builder. */
async function gzipWithZinfo(tar: Uint8Array): Promise<{ gz: Uint8Array; zinfo: Zinfo }> {
  const gz = new Uint8Array(
    await new Response(
      new Blob([tar as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
        new CompressionStream("gzip"),
      ),
    ).arrayBuffer(),
  );
  const built = (await buildZinfo(new Blob([gz]).stream())).zinfo;
  const source = {
    size: built.length,
    read: (offset: number, length: number) => Promise.resolve(built.slice(offset, offset + length)),
  };
  return { gz, zinfo: await Zinfo.open(source, gz.length) };
}

Deno.test("inflate cursor: its input goes back to the pool on close, unless a fetch into it was cut short", async () => {
  const tar = new Uint8Array(3 << 20).map((_, i) => (i * 7919) >> 9);
  const { gz, zinfo } = await gzipWithZinfo(tar);
  const pool = new BufferPool(8 << 20);
  let inFlight: Uint8Array | undefined;
  const blob = {
    size: gz.length,
    read: (offset: number, length: number) => Promise.resolve(gz.slice(offset, offset + length)),
    // As a read on a pool thread: the caller may give up at once, the bytes land later.
    readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
      if (!signal) {
        dest.set(gz.subarray(offset, offset + dest.length));
        return Promise.resolve();
      }
      inFlight = dest;
      return new Promise((_, reject) =>
        signal.addEventListener("abort", () => reject(signal.reason))
      );
    },
  };

  const done = await InflateCursor.open(blob, zinfo, 0, undefined, "zlib", pool);
  const out = nativeBytes(1 << 20);
  assert.equal(await done.fill(out), out.length);
  assert.deepEqual(out, tar.subarray(0, out.length));
  done.close();
  assert.equal(pool.freeBytes > 0, true, "a finished cursor's input is kept for reuse");

  const cut = await InflateCursor.open(blob, zinfo, 0, undefined, "zlib", pool);
  const stop = new AbortController();
  const filling = cut.fill(nativeBytes(1 << 20), stop.signal);
  assert(inFlight, "the fetch started");
  stop.abort(new Error("reader gone"));
  await assert.rejects(filling, /reader gone/);
  cut.close();
  // The aborted fetch may still write into its buffer: no one else may get it.
  const size = inFlight.buffer.byteLength;
  for (let i = 0; i < 4; i++) assert.notEqual(pool.take(size).buffer, inFlight.buffer);
});
