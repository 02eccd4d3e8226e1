/**
 * Each gzip member costs a zinfo checkpoint of 32 KiB (erofs-utils' layout, which mount.erofs
 * needs at every member start). A hostile layer of tiny members must not make `index` write a
 * zinfo far beyond what any mount would take: the builder stops at its checkpoint cap.
 */
import assert from "node:assert/strict";
import { ZinfoBuilder } from "../lib/gzip/zinfo_builder.ts";
import {
  MAX_ZINFO_CHECKPOINTS,
  ZINFO_CHECKPOINT_BYTES,
  ZINFO_HEADER_BYTES,
} from "../lib/gzip/zinfo.ts";
import { FormatError } from "../lib/errors.ts";

/** An empty gzip member: 10-byte header, an empty final fixed-Huffman block, CRC 0, size 0. */
const EMPTY_MEMBER = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];

function members(count: number): Uint8Array {
  const out = new Uint8Array(count * EMPTY_MEMBER.length);
  for (let i = 0; i < count; i++) out.set(EMPTY_MEMBER, i * EMPTY_MEMBER.length);
  return out;
}

function feedAll(builder: ZinfoBuilder, bytes: Uint8Array): void {
  for (let at = 0; at < bytes.length; at += 4096) {
    for (const _ of builder.feed(bytes.subarray(at, at + 4096))) { /* discard */ }
  }
}

Deno.test("zinfo builder: members up to the checkpoint cap are indexed, one more is refused", () => {
  const within = new ZinfoBuilder({ maxCheckpoints: 100, onCheckpoint: () => {} });
  try {
    feedAll(within, members(100));
    within.finish();
    assert.equal(within.checkpointCount, 100);
  } finally {
    within.close();
  }
  const over = new ZinfoBuilder({ maxCheckpoints: 100, onCheckpoint: () => {} });
  try {
    assert.throws(
      () => feedAll(over, members(101)),
      (error: unknown) =>
        error instanceof FormatError && /more than 100 checkpoints \(101 members/.test(
          error.message,
        ) && !error.message.includes("\n"),
    );
  } finally {
    over.close();
  }
});

Deno.test("zinfo builder: the default cap keeps a zinfo within 1 GiB", () => {
  assert.ok(ZINFO_HEADER_BYTES + MAX_ZINFO_CHECKPOINTS * ZINFO_CHECKPOINT_BYTES <= 1 << 30);
  assert.ok(MAX_ZINFO_CHECKPOINTS > 30_000); // a 100 GiB single-member layer needs 25,600
});
