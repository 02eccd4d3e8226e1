/**
 * VerifiedSource.readTo with a table of 256 KiB chunks, the size of copyBody's scratch buffers
 * (lib/oci/blob_range.ts): a body that broke off took the chunk buffer with the read it was
 * lent to, and the body that resumes it (a 200 that ignored Range: bytes to skip first) comes
 * through the scratch buffer. Those bytes look like bytes read into the chunk buffer (a buffer
 * of the chunk's size, at the chunk's fill) but must not be taken for them: the scratch memory
 * was then pooled twice, as a chunk buffer and as a scratch buffer, and a later body read
 * found its buffer detached by a placed read's transfer (TypeError, the read failed).
 *
 * The bodies are Web byte streams made here (a registry's TCP reads cannot be made to end on
 * the chunk's last byte); copyBody and VerifiedSource are the real ones.
 */
import assert from "node:assert/strict";
import { patternBytes } from "./_support/memory_source.ts";
import { type BodySink, copyBody } from "../lib/oci/blob_range.ts";
import { ChunkTableBuilder } from "../lib/verify/chunk_table.ts";
import { VerifiedSource } from "../lib/verify/verified_source.ts";
import { digestOf } from "../lib/oci/digest.ts";

const CHUNK = 256 << 10;

/** A byte stream of `bytes` that fills each BYOB request whole; errors after `breakAfter`. */
function body(bytes: Uint8Array, breakAfter = Infinity): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    type: "bytes",
    pull(controller) {
      if (at >= breakAfter) return controller.error(new TypeError("connection reset"));
      const view = controller.byobRequest!.view as Uint8Array;
      const n = Math.min(view.byteLength, bytes.length - at, breakAfter - at);
      if (n === 0) {
        controller.close();
        controller.byobRequest!.respond(0);
        return;
      }
      view.set(bytes.subarray(at, at + n));
      at += n;
      controller.byobRequest!.respond(n);
    },
  });
}

Deno.test("VerifiedSource.readTo: a body resumed through the scratch after a broken placed read leaves the buffers apart", async () => {
  const bytes = new Uint8Array(patternBytes(4 * CHUNK));
  const builder = new ChunkTableBuilder(CHUNK);
  builder.update(bytes);
  const table = builder.finish(digestOf(bytes));
  let broken = false;
  const inner = {
    size: bytes.length,
    read: (offset: number, length: number) => Promise.resolve(bytes.slice(offset, offset + length)),
    // As readBlobRangeTo: the first body breaks off 1000 bytes in, the resumed one is a 200.
    async readTo(offset: number, length: number, sink: BodySink) {
      const range = bytes.subarray(offset, offset + length);
      if (broken) {
        const { copied, error } = await copyBody(body(range), sink, 0, 0, length);
        assert.equal(error, undefined);
        assert.equal(copied, length);
        return;
      }
      broken = true;
      const first = await copyBody(body(range, 1000), sink, 0, 0, length);
      assert.equal(first.copied, 1000);
      assert.ok(first.error);
      const rest = await copyBody(body(bytes), sink, 1000, offset + 1000, length - 1000);
      assert.equal(rest.error, undefined);
    },
  };
  const verified = new VerifiedSource(inner, table, { origin: "test", onMismatch: () => {} });
  const readTo = async (offset: number, length: number) => {
    const out = new Uint8Array(length);
    await verified.readTo(offset, length, (piece, at) => void out.set(piece, at));
    assert.deepEqual(out, bytes.subarray(offset, offset + length));
  };
  await readTo(0, CHUNK);
  // A placed read of another chunk (it takes a pooled chunk buffer), then a plain body read
  // (it takes a pooled scratch buffer): neither buffer may be the other's memory.
  await readTo(2 * CHUNK, CHUNK);
  const out = new Uint8Array(3 * CHUNK);
  const plain = await copyBody(body(bytes), out, 0, 0, out.length);
  assert.equal(plain.error, undefined);
  assert.equal(plain.copied, out.length);
  assert.deepEqual(out, bytes.subarray(0, out.length));
});
