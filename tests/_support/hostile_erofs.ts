/**
 * Hostile EROFS images for tests, made the way a fuzzer would: real mkfs.erofs 1.9.3 output
 * (the peer binary), then patched in place. The small parser here is the test's own reading of
 * the on-disk layout (linux/fs/erofs/erofs_fs.h), independent of lib/erofs, so a bug there
 * cannot hide itself here.
 */
import { PEER_BIN } from "./requires.ts";
import { runTool } from "./tool.ts";

const SUPER_OFFSET = 1024;
/** feature_compat bit EROFS_FEATURE_COMPAT_SB_CHKSUM: the kernel then checks a crc32c over
 * block 0, which the patches below would break. */
const COMPAT_SB_CHKSUM = 0x1;
const INODE_SLOT_BYTES = 32;
const DIRENT_BYTES = 12;

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
/** i_format datalayouts. */
export const LAYOUT_FLAT_PLAIN = 0;
export const LAYOUT_FLAT_INLINE = 2;

export interface ParsedSuper {
  blockBytes: number;
  metaBlockAddress: number;
  rootNid: number;
}

export interface ParsedInode {
  nid: number;
  /** Byte offset of the inode in the image. */
  offset: number;
  extended: boolean;
  layout: number;
  isDir: boolean;
  size: number;
  rawBlockAddress: number;
  xattrCount: number;
  /** Path from the root ("" for the root). */
  path: string;
}

/** Runs the peer mkfs.erofs on `tree` (fixed time and UUID: the same tree gives the same bytes). */
export async function mkfsErofs(image: string, tree: string, extra: string[] = []): Promise<void> {
  await runTool(
    `${PEER_BIN}/mkfs.erofs`,
    ["-T0", "-U", "6f1d2c3b-0000-4000-8000-000000000001", ...extra, image, tree],
    120_000,
  );
}

export function parseSuper(image: Uint8Array): ParsedSuper {
  const view = new DataView(image.buffer, image.byteOffset + SUPER_OFFSET, 128);
  if (view.getUint32(0, true) !== 0xe0f5e1e2) throw new Error("generator: not EROFS");
  return {
    blockBytes: 2 ** view.getUint8(12),
    rootNid: view.getUint16(14, true),
    metaBlockAddress: view.getUint32(40, true),
  };
}

function inodeAt(image: Uint8Array, sb: ParsedSuper, nid: number, path: string): ParsedInode {
  const offset = sb.metaBlockAddress * sb.blockBytes + nid * INODE_SLOT_BYTES;
  const view = new DataView(image.buffer, image.byteOffset + offset, 64);
  const format = view.getUint16(0, true);
  const extended = (format & 1) === 1;
  return {
    nid,
    offset,
    extended,
    layout: (format >> 1) & 7,
    isDir: (view.getUint16(4, true) & S_IFMT) === S_IFDIR,
    size: extended ? Number(view.getBigUint64(8, true)) : view.getUint32(8, true),
    rawBlockAddress: view.getUint32(16, true),
    xattrCount: view.getUint16(2, true),
    path,
  };
}

/** Children (name, nid, file type) of a directory of an unpatched image. */
function childrenOf(image: Uint8Array, sb: ParsedSuper, dir: ParsedInode) {
  const bs = sb.blockBytes;
  const blocks = Math.ceil(dir.size / bs);
  const inodeBytes = dir.extended ? 64 : 32;
  const xattrBytes = dir.xattrCount ? 12 + (dir.xattrCount - 1) * 4 : 0;
  const out: { name: string; nid: number; fileType: number; blockOffset: number }[] = [];
  for (let b = 0; b < blocks; b++) {
    const inline = dir.layout === LAYOUT_FLAT_INLINE && b === blocks - 1;
    const start = inline ? dir.offset + inodeBytes + xattrBytes : (dir.rawBlockAddress + b) * bs;
    const length = Math.min(bs, dir.size - b * bs);
    const view = new DataView(image.buffer, image.byteOffset + start, length);
    const count = view.getUint16(8, true) / DIRENT_BYTES;
    for (let k = 0; k < count; k++) {
      const nameStart = view.getUint16(k * DIRENT_BYTES + 8, true);
      const nameEnd = k + 1 < count ? view.getUint16((k + 1) * DIRENT_BYTES + 8, true) : length;
      let name = image.subarray(start + nameStart, start + nameEnd);
      if (name.indexOf(0) >= 0) name = name.subarray(0, name.indexOf(0));
      out.push({
        name: new TextDecoder().decode(name),
        nid: Number(view.getBigUint64(k * DIRENT_BYTES, true)),
        fileType: view.getUint8(k * DIRENT_BYTES + 10),
        blockOffset: start,
      });
    }
  }
  return out;
}

/** Every inode reachable from the root of an unpatched image, parents before children. */
export function listInodes(image: Uint8Array): ParsedInode[] {
  const sb = parseSuper(image);
  const all = [inodeAt(image, sb, sb.rootNid, "")];
  const seen = new Set([sb.rootNid]);
  for (let i = 0; i < all.length; i++) {
    const dir = all[i];
    if (!dir.isDir) continue;
    for (const child of childrenOf(image, sb, dir)) {
      if (child.name === "." || child.name === ".." || seen.has(child.nid)) continue;
      seen.add(child.nid);
      all.push(inodeAt(image, sb, child.nid, dir.path ? `${dir.path}/${child.name}` : child.name));
    }
  }
  return all;
}

/** Byte offsets of every directory block (plain blocks and inline tails) of an unpatched image. */
export function direntBlockOffsets(image: Uint8Array): number[] {
  const sb = parseSuper(image);
  const offsets = new Set<number>();
  for (const dir of listInodes(image).filter((i) => i.isDir)) {
    for (const child of childrenOf(image, sb, dir)) offsets.add(child.blockOffset);
  }
  return [...offsets].sort((a, b) => a - b);
}

/** Clears the superblock checksum feature so the kernel accepts a patched block 0. */
export function dropSuperblockChecksum(image: Uint8Array): void {
  const view = new DataView(image.buffer, image.byteOffset + SUPER_OFFSET, 128);
  view.setUint32(8, view.getUint32(8, true) & ~COMPAT_SB_CHKSUM, true);
}

/**
 * Rewrites an inode as a flat-plain one of `sizeBytes` bytes starting at block `blockAddress`
 * (compact inodes hold a 32-bit size, extended ones 64-bit).
 */
export function patchInodeExtent(
  image: Uint8Array,
  inode: ParsedInode,
  sizeBytes: number,
  blockAddress: number,
  layout = LAYOUT_FLAT_PLAIN,
): void {
  const view = new DataView(image.buffer, image.byteOffset + inode.offset, 64);
  view.setUint16(0, (view.getUint16(0, true) & ~0xe) | (layout << 1), true);
  if (inode.extended) view.setBigUint64(8, BigInt(sizeBytes), true);
  else view.setUint32(8, sizeBytes >>> 0, true);
  view.setUint32(16, blockAddress >>> 0, true);
}

export interface HugeDirectoriesImage {
  /** Path of the image file (sparse up to `fileBytes`). */
  path: string;
  directories: number;
  claimedBytes: number;
  fileBytes: number;
  /** Bytes actually allocated on disk. */
  allocatedBytes: number;
}

/**
 * The image of issue 9: `directories` empty directories under the root, each patched to claim
 * `claimedBytes` of flat-plain data, in a file made sparse so every claim is inside the image.
 * All claims start at block 0 (one shared region), or with `spread` each its own region (the
 * union then exceeds any small budget). `workDir` must exist; the tree and image go there.
 */
export async function hugeDirectoriesImage(
  workDir: string,
  directories = 2000,
  claimedBytes = 256 << 20,
  options: { spread?: boolean } = {},
): Promise<HugeDirectoriesImage> {
  const tree = `${workDir}/tree`;
  Deno.mkdirSync(tree, { recursive: true });
  for (let i = 0; i < directories; i++) Deno.mkdirSync(`${tree}/d${i}`);
  const path = `${workDir}/hostile.erofs`;
  await mkfsErofs(path, tree);
  const image = Deno.readFileSync(path);
  const sb = parseSuper(image);
  const dirs = listInodes(image).filter((i) => i.isDir && i.path !== "");
  if (dirs.length !== directories) throw new Error(`generator: found ${dirs.length} directories`);
  const claimedBlocks = Math.ceil(claimedBytes / sb.blockBytes);
  dirs.forEach((dir, i) =>
    patchInodeExtent(image, dir, claimedBytes, options.spread ? i * claimedBlocks : 0)
  );
  dropSuperblockChecksum(image);
  Deno.writeFileSync(path, image);
  const fileBytes = options.spread ? directories * claimedBlocks * sb.blockBytes : claimedBytes;
  Deno.truncateSync(path, Math.max(fileBytes, image.length));
  const stat = Deno.statSync(path);
  return {
    path,
    directories,
    claimedBytes,
    fileBytes: stat.size,
    allocatedBytes: (stat.blocks ?? 0) * 512,
  };
}

/** One fuzzer-style change to an image. */
export type Corruption =
  | { kind: "byte"; offset: number; value: number }
  | { kind: "u16"; offset: number; value: number }
  | { kind: "u32"; offset: number; value: number }
  | { kind: "u64"; offset: number; value: bigint };

/** Applies corruptions to a copy of `image` (offsets past the end are taken modulo its size). */
export function corrupt(image: Uint8Array, corruptions: Corruption[]): Uint8Array {
  const out = image.slice();
  const view = new DataView(out.buffer);
  for (const c of corruptions) {
    const width = c.kind === "byte" ? 1 : c.kind === "u16" ? 2 : c.kind === "u32" ? 4 : 8;
    const at = c.offset % (out.length - width + 1);
    if (c.kind === "byte") out[at] = c.value & 0xff;
    else if (c.kind === "u16") view.setUint16(at, c.value & 0xffff, true);
    else if (c.kind === "u32") view.setUint32(at, c.value >>> 0, true);
    else view.setBigUint64(at, BigInt.asUintN(64, c.value), true);
  }
  return out;
}

/**
 * Offsets worth corrupting in an unpatched image: superblock fields, every inode's header
 * fields (format, xattr count, mode, size, raw block address) and every dirent (nid, nameoff,
 * type), so random corruptions hit the fields the metadata walk trusts.
 */
export function interestingOffsets(image: Uint8Array): number[] {
  const offsets = new Set<number>();
  for (const field of [8, 12, 14, 16, 36, 40, 44, 80, 86, 112]) offsets.add(SUPER_OFFSET + field);
  for (const inode of listInodes(image)) {
    for (const field of [0, 2, 4, 6, 8, 12, 16]) offsets.add(inode.offset + field);
  }
  const sb = parseSuper(image);
  for (const dir of listInodes(image).filter((i) => i.isDir)) {
    for (const child of childrenOf(image, sb, dir)) {
      offsets.add(child.blockOffset);
      for (let k = 0; k < 3; k++) {
        offsets.add(child.blockOffset + k * DIRENT_BYTES);
        offsets.add(child.blockOffset + k * DIRENT_BYTES + 8);
        offsets.add(child.blockOffset + k * DIRENT_BYTES + 10);
      }
    }
  }
  return [...offsets].sort((a, b) => a - b);
}
