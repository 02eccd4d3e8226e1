/**
 * Each gzip member costs a zinfo checkpoint of 32 KiB (erofs-utils' layout, which mount.erofs
 * needs at every member start). A hostile layer of tiny members must not make `index` write a
 * zinfo far beyond what any mount would take: the builder stops at its checkpoint cap.
 */
import assert from "node:assert/strict";
import { ZinfoBuilder } from "../lib/gzip/zinfo_builder.ts";
import {
  checkZinfoBytes,
  encodeZinfo,
  MAX_ZINFO_CHECKPOINTS,
  ZINFO_CHECKPOINT_BYTES,
  ZINFO_HEADER_BYTES,
} from "../lib/gzip/zinfo.ts";
import { FormatError } from "../lib/errors.ts";
import { gzipSync } from "node:zlib";
import { encodeTar } from "./_support/tar_encode.ts";
import { runCli } from "./_support/cli.ts";

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
        error instanceof FormatError &&
        /101 members in \d+ compressed bytes .*need more than 100 checkpoints/.test(
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

Deno.test("zinfo: more checkpoints than the stream's size justifies are refused, made or read", () => {
  // 3,000 empty members (60 KB): past the 2,048 any stream gets, 60 KB earn ~120 more. The
  // hostile layer this models made a 946 MB zinfo of a 600 KB blob.
  const builder = new ZinfoBuilder({ onCheckpoint: () => {} });
  try {
    assert.throws(
      () => feedAll(builder, members(3000)),
      (error: unknown) =>
        error instanceof FormatError && /need more than 2\d\d\d checkpoints/.test(error.message) &&
        /erofs-oci convert/.test(error.hint ?? ""),
    );
    assert.ok(builder.checkpointCount < 2300, `${builder.checkpointCount}`);
  } finally {
    builder.close();
  }
  // A zinfo made elsewhere with as many is refused when read (before any window is used).
  const window = new Uint8Array(32768);
  const checkpoints = Array.from({ length: 2100 }, (_, i) => ({
    compressedOffset: 10 + i,
    uncompressedOffset: i,
    bits: 0,
    window,
  }));
  assert.throws(
    () => checkZinfoBytes(encodeZinfo(1 << 22, checkpoints), 3000, { streamBytes: 2100 }),
    (error: unknown) =>
      error instanceof FormatError &&
      /2100 checkpoints for a 3000-byte gzip blob \(at most 2053/.test(error.message),
  );
});

Deno.test("zinfo builder: an eStargz-like layer (a gzip member per small file) is indexed", () => {
  // eStargz starts a member before every file: 3,000 files of 600 bytes, ~1.9 MB.
  const parts: Uint8Array[] = [];
  for (let i = 0; i < 3000; i++) {
    parts.push(gzipSync(crypto.getRandomValues(new Uint8Array(600))));
  }
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (bytes.set(p, at), at + p.length), 0);
  const builder = new ZinfoBuilder({ onCheckpoint: () => {} });
  try {
    feedAll(builder, bytes);
    builder.finish();
    assert.equal(builder.checkpointCount, 3000);
  } finally {
    builder.close();
  }
});

Deno.test("zinfo builder: many small members first, then one big one, fit the whole blob's bound", () => {
  // eStargz-like: 2,600 small members (the prioritized files) ahead of one of 3 MiB. Bounded by
  // the bytes read so far, the 2,402nd member (in ~50 KB) was refused; the blob's 3.1 MB earn
  // 2,048 + 6,000 checkpoints, as a reader of the zinfo allows.
  const small = members(2600);
  const big = gzipSync(crypto.getRandomValues(new Uint8Array(65536)).slice(), { level: 0 });
  const tail = new Uint8Array(big.length * 48);
  for (let i = 0; i < 48; i++) tail.set(big, i * big.length);
  const blob = new Uint8Array(small.length + tail.length);
  blob.set(small);
  blob.set(tail, small.length);
  const builder = new ZinfoBuilder({ onCheckpoint: () => {}, blobBytes: blob.length });
  try {
    feedAll(builder, blob);
    builder.finish();
    assert.equal(builder.members, 2600 + 48);
  } finally {
    builder.close();
  }
  // Without the size, the same bytes are refused where the small members end.
  const unsized = new ZinfoBuilder({ onCheckpoint: () => {} });
  try {
    assert.throws(() => feedAll(unsized, blob), /need more than 2\d\d\d checkpoints/);
  } finally {
    unsized.close();
  }
});

Deno.test("index FILE of such a layer: indexed (the file's size bounds its checkpoints)", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-front-members-" });
  try {
    const text = new TextEncoder().encode("x\n");
    const smallFiles = Array.from(
      { length: 2600 },
      (_, i) => ({ name: `s/${i}.txt`, type: "0" as const, data: text }),
    );
    const big = crypto.getRandomValues(new Uint8Array(65536));
    const bigData = new Uint8Array(3 << 20);
    for (let at = 0; at < bigData.length; at += big.length) bigData.set(big, at);
    // Each small file (header and data block) a gzip member of its own, then the rest as one.
    const tar = encodeTar([...smallFiles, { name: "big.bin", type: "0", data: bigData }]);
    const parts: Uint8Array[] = [];
    for (let i = 0; i < smallFiles.length; i++) {
      parts.push(gzipSync(tar.subarray(i * 1024, (i + 1) * 1024)));
    }
    parts.push(gzipSync(tar.subarray(smallFiles.length * 1024), { level: 1 }));
    const layer = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const part of parts) {
      layer.set(part, at);
      at += part.length;
    }
    await Deno.writeFile(`${work}/front.tar.gz`, layer);
    const indexed = await runCli(["index", `${work}/front.tar.gz`, "-o", `${work}/out`], {
      timeoutMs: 120_000,
    });
    assert.equal(indexed.code, 0, indexed.stderr);
    assert.match(indexed.stderr, /2601 gzip member\(s\)/);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
