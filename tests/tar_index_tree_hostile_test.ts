/**
 * readTarIndexTree on hostile meta images (a tar index can come from a registry artifact, up to
 * 1 GiB): crafted images whose inodes share one region of the image, and random corruptions of
 * the fixtures' meta images. Whatever the image claims, the reader's work and the tree it builds
 * stay bounded by the image's size, and anything wrong is a FormatError.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { readTarIndexTree } from "../lib/gzip/tar_index_tree.ts";
import { alignTarIndex } from "../lib/gzip/aligned_tar.ts";
import { FormatError } from "../lib/errors.ts";
import { FIXTURES } from "./_support/requires.ts";

const BLOCK_BYTES = 4096;
const META_BLOCK = 1;
const SUPER = 1024;

interface CraftedInode {
  nid: number;
  /** The 32 bytes of a compact inode. */
  bytes: Uint8Array;
}

/**
 * A tar-index meta image (4 KiB blocks, one extra device: the tar) whose root directory (nid 0,
 * plain blocks after the inodes) names `files` by nid, with `inodes` written at their slots and
 * `regions` written as they are. Every field a reader checks first is right.
 */
function craftMeta(
  files: { nid: number; name: string }[],
  inodes: CraftedInode[],
  regions: { offset: number; bytes: Uint8Array }[],
  inodeAreaBytes: number,
  xattrBlock = 0,
): Uint8Array {
  const dirBlocks: Uint8Array[] = [];
  for (let at = 0; at < files.length;) {
    const block = new Uint8Array(BLOCK_BYTES);
    const view = new DataView(block.buffer);
    let count = 0, namesBytes = 0;
    while (at + count < files.length) {
      const next = files[at + count].name.length;
      if ((count + 1) * 12 + namesBytes + next > BLOCK_BYTES) break;
      namesBytes += next;
      count++;
    }
    let nameAt = count * 12;
    for (let k = 0; k < count; k++) {
      const { nid, name } = files[at + k];
      view.setUint32(k * 12, nid, true);
      view.setUint16(k * 12 + 8, nameAt, true);
      view.setUint8(k * 12 + 10, 1); // EROFS_FT_REG_FILE
      block.set(new TextEncoder().encode(name), nameAt);
      nameAt += name.length;
    }
    dirBlocks.push(block);
    at += count;
  }
  const dirBlock = META_BLOCK + Math.ceil(inodeAreaBytes / BLOCK_BYTES);
  const totalBlocks = dirBlock + dirBlocks.length;
  const meta = new Uint8Array(totalBlocks * BLOCK_BYTES);
  const view = new DataView(meta.buffer);
  view.setUint32(SUPER, 0xe0f5e1e2, true);
  view.setUint8(SUPER + 12, Math.log2(BLOCK_BYTES));
  view.setUint16(SUPER + 14, 0, true); // root nid
  view.setUint32(SUPER + 36, totalBlocks, true);
  view.setUint32(SUPER + 40, META_BLOCK, true);
  view.setUint32(SUPER + 44, xattrBlock, true);
  view.setUint32(SUPER + 80, 0x8, true); // device_table
  view.setUint16(SUPER + 86, 1, true); // one extra device
  view.setUint16(SUPER + 88, 9, true); // its slot at byte 9 * 128 = 1152
  view.setUint32(1152 + 64, 1 << 20, true); // tar blocks
  view.setUint32(1152 + 68, totalBlocks, true); // mapped right after the meta image
  const base = META_BLOCK * BLOCK_BYTES;
  // Root: a compact directory inode, plain layout, its blocks after the inode area.
  view.setUint16(base + 0, 0, true);
  view.setUint16(base + 4, 0o40755, true);
  view.setUint32(base + 8, dirBlocks.length * BLOCK_BYTES, true);
  view.setUint32(base + 16, dirBlock, true);
  for (const region of regions) meta.set(region.bytes, region.offset);
  for (const inode of inodes) meta.set(inode.bytes, base + inode.nid * 32);
  dirBlocks.forEach((block, i) => meta.set(block, (dirBlock + i) * BLOCK_BYTES));
  return meta;
}

/**
 * `count` empty regular files in consecutive inode slots, each with one inline xattr of about
 * 64 KiB: each inode's xattr body starts inside the next inode (whose fields are chosen to read
 * as that body's header and entry head), so the bodies overlap and the image is ~32 bytes per
 * file while the values add up to ~64 KiB per file.
 */
function overlappingXattrMeta(count: number): Uint8Array {
  const xattrSlots = 16384; // h_xattr_icount: 12 + 16383 * 4 bytes of body
  const entryBytes = (xattrSlots - 1) * 4; // the body after its 12-byte header
  const valueBytes = entryBytes - 5; // (4 + 1 + value + 3) & ~3 === entryBytes
  const inodes: CraftedInode[] = [];
  // One slot more than the files: the last file's header and entry head lie in it.
  for (let k = 0; k <= count; k++) {
    const bytes = new Uint8Array(32);
    const view = new DataView(bytes.buffer);
    view.setUint16(0, 0, true); // compact, flat plain
    view.setUint16(2, xattrSlots, true);
    view.setUint16(4, 0o100000, true); // regular file; low byte 0 = previous header's shared count
    view.setUint32(8, 0, true); // empty: no data in the tar
    // i_reserved: the previous inode's entry head {name length 1, index 1 (user.), value length}
    view.setUint8(12, 1);
    view.setUint8(13, 1);
    view.setUint16(14, valueBytes, true);
    view.setUint8(16, 0x61); // i_u: its low byte is the previous inode's xattr name ("a")
    inodes.push({ nid: 1 + k, bytes });
  }
  const files = Array.from({ length: count }, (_, k) => ({ nid: 1 + k, name: `f${k}` }));
  const inodeAreaBytes = (count + 2) * 32 + 12 + entryBytes;
  return craftMeta(files, inodes, [], inodeAreaBytes);
}

Deno.test("tar index tree: inline xattr bodies overlapping one another are refused, not copied per inode", () => {
  const meta = overlappingXattrMeta(2048);
  // ~400 KB of image; read as it claims, 2,048 values of 64 KiB: 128 MiB.
  assert.ok(meta.length < 512 * 1024, `${meta.length}`);
  assert.throws(
    () => readTarIndexTree(meta),
    (error: unknown) =>
      error instanceof FormatError && /xattr/.test(error.message) &&
      !error.message.includes("\n"),
  );
});

/** craftMeta with `area` as the shared xattr area, at block `xattrBlock` after the inodes. */
function craftWithSharedXattrs(
  files: { nid: number; name: string }[],
  inodes: CraftedInode[],
  area: Uint8Array,
  xattrBlock: number,
): Uint8Array {
  return craftMeta(
    files,
    inodes,
    [{ offset: xattrBlock * BLOCK_BYTES, bytes: area }],
    (xattrBlock - META_BLOCK) * BLOCK_BYTES + area.length,
    xattrBlock,
  );
}

Deno.test("tar index tree: a shared xattr named by many inodes is held once, not copied per inode", () => {
  const count = 2048;
  const valueBytes = 60_000;
  const inodesEnd = (2 * count + 2) * 32;
  const xattrBlock = META_BLOCK + Math.ceil(inodesEnd / BLOCK_BYTES);
  const shared = new Uint8Array(4 + 1 + valueBytes);
  shared.set([1, 1, valueBytes & 0xff, valueBytes >> 8, 0x61]); // user.a = 60,000 bytes
  const inodes: CraftedInode[] = [];
  for (let k = 0; k < count; k++) {
    const bytes = new Uint8Array(48);
    const view = new DataView(bytes.buffer);
    view.setUint16(2, 2, true); // h_xattr_icount 2: a 12-byte header and one shared id
    view.setUint16(4, 0o100644, true);
    view.setUint8(32 + 4, 1); // h_shared_count
    view.setUint32(32 + 12, 0, true); // shared xattr id 0
    inodes.push({ nid: 1 + 2 * k, bytes }); // 48 bytes: two slots each
  }
  const files = Array.from({ length: count }, (_, k) => ({ nid: 1 + 2 * k, name: `f${k}` }));
  const meta = craftWithSharedXattrs(files, inodes, shared, xattrBlock);
  const tree = readTarIndexTree(meta);
  const values = new Set(
    [...tree.root.children!.values()].map((node) => node.xattrs?.get("user.a")),
  );
  assert.equal(tree.root.children!.size, count);
  assert.equal(values.size, 1, "one value for every inode naming it");
  assert.equal([...values][0]?.length, valueBytes);
});

Deno.test("tar index tree: distinct shared xattr ids whose entries overlap are refused, not each copied", () => {
  // Every 4-byte word of the shared area reads as user.\x01 with a 65,520-byte value, and each
  // inode names 255 ids of its own: 16 inodes would copy ~255 MiB out of a ~110 KB image.
  const count = 16;
  const ids = count * 255;
  const slots = 34; // a 32-byte inode and a 1,032-byte xattr body
  const inodesEnd = (1 + count * slots + 1) * 32;
  const xattrBlock = META_BLOCK + Math.ceil(inodesEnd / BLOCK_BYTES);
  const area = new Uint8Array(ids * 4 + 65_536);
  for (let p = 0; p < area.length; p += 4) area.set([1, 1, 0xf0, 0xff], p);
  const inodes: CraftedInode[] = [];
  for (let k = 0; k < count; k++) {
    const bytes = new Uint8Array(32 + 12 + 255 * 4);
    const view = new DataView(bytes.buffer);
    view.setUint16(2, 256, true); // h_xattr_icount 256: the header and 255 shared ids
    view.setUint16(4, 0o100644, true);
    view.setUint8(32 + 4, 255); // h_shared_count
    for (let i = 0; i < 255; i++) view.setUint32(32 + 12 + i * 4, k * 255 + i, true);
    inodes.push({ nid: 1 + k * slots, bytes });
  }
  const files = Array.from({ length: count }, (_, k) => ({ nid: 1 + k * slots, name: `f${k}` }));
  const meta = craftWithSharedXattrs(files, inodes, area, xattrBlock);
  assert.ok(meta.length < 200_000, `${meta.length}-byte image`);
  assert.throws(
    () => readTarIndexTree(meta),
    (error: Error) =>
      error instanceof FormatError &&
      /shared xattrs .* exceed the \d+-byte image/.test(error.message),
  );
});

Deno.test("property: random corruptions of the fixtures' meta images give a tree or a FormatError", () => {
  const seeds = ["layer", "big", "big-multi"].map((name) =>
    Deno.readFileSync(`${FIXTURES}/${name}.meta.erofs`)
  );
  const mutation = fc.record({
    seed: fc.nat(seeds.length - 1),
    edits: fc.array(
      fc.record({
        // Most edits land on the superblock, device slot and inodes (the first 4 KiB).
        at: fc.oneof(fc.nat(4095), fc.nat(31 * 1024)),
        width: fc.constantFrom(1, 2, 4),
        value: fc.oneof(
          fc.constantFrom(0, 1, 0x20, 0x7f, 0x80, 0xff, 0xffff, 0x7fffffff, 0xffffffff),
          fc.nat(0xffffffff),
        ),
      }),
      { minLength: 1, maxLength: 6 },
    ),
    truncateTo: fc.option(fc.nat(32 * 1024), { freq: 8 }),
  });
  fc.assert(
    fc.property(mutation, ({ seed, edits, truncateTo }) => {
      let meta = seeds[seed].slice();
      const view = new DataView(meta.buffer);
      for (const { at, width, value } of edits) {
        const offset = Math.min(at, meta.length - width);
        if (width === 1) view.setUint8(offset, value & 0xff);
        else if (width === 2) view.setUint16(offset, value & 0xffff, true);
        else view.setUint32(offset, value >>> 0, true);
      }
      if (truncateTo !== null) meta = meta.subarray(0, Math.min(meta.length, truncateTo));
      try {
        const tree = readTarIndexTree(meta);
        assert.ok(tree.tarBytes >= 0 && tree.dataFiles <= meta.length / 32);
        alignTarIndex(meta);
      } catch (error) {
        if (!(error instanceof FormatError)) throw error;
        assert.ok(!error.message.includes("\n"), error.message);
      }
    }),
    { seed: 20261202, numRuns: 600 },
  );
});
