/**
 * Lays a `BuildNode` tree out as an uncompressed EROFS image, metadata first:
 *
 *   block 0..     superblock, shared xattrs, every inode (with its xattrs and inline tail),
 *                 then the full blocks of directories and long symlinks
 *   data blocks   file contents, those named by the access order first, then depth-first
 *
 * so a lazy reader gets the whole tree from one contiguous range at the start of the image.
 * Directory inodes come first, then the others, each group in breadth-first order (a
 * directory's children sit together, as `ls -l` wants).
 * An inode record (inode + xattrs + inline tail) never crosses a block boundary when it fits
 * in one block, which the kernel requires of inline data.
 *
 * The plan is columns (typed arrays indexed by inode, ino = index + 1), not an object per
 * inode: 300,000 entries held ~250 bytes each of plan objects, maps and sets; now ~45, and the
 * tree itself is columns too (`NodeTable`).
 * The walk of the tree (inode order, links, directory entries) is layout_tree.ts, the shared
 * xattr area and each inode's xattr body layout_xattrs.ts, the order of file data
 * layout_order.ts; this file places inodes and blocks.
 */
import { FormatError } from "../../errors.ts";
import {
  COMPACT_INODE_BYTES,
  DEVICE_SLOT_BYTES,
  EROFS_SUPER_OFFSET,
  EXTENDED_INODE_BYTES,
  FILE_TYPE,
  INODE_SLOT_BYTES,
  SUPERBLOCK_BYTES,
} from "./format.ts";
import type { BuildNode, FileData, NodeKind } from "./tree.ts";
import { orderFiles } from "./layout_order.ts";
import { collectTree, type DirectoryPlan } from "./layout_tree.ts";
import { planSharedXattrs, xattrBodyOf } from "./layout_xattrs.ts";
import { alignUp } from "./small_int.ts";
import { KIND_DIR, KIND_FILE, KIND_SYMLINK, type NodeTable } from "./node_table.ts";
import { tableOf } from "./node_table_objects.ts";

export interface LayoutOptions {
  blockSizeBits?: number;
  buildTimeSec: number;
  buildTimeNsec: number;
  /** Paths (relative to the root) of regular files whose data goes first, in this order. */
  order?: string[];
  /**
   * Regular files whose last partial block is at most this long keep it after the inode
   * (FLAT_INLINE) instead of in a padded block of its own. Default 2048.
   */
  inlineTailMaxBytes?: number;
  /** Shared xattr area limit (keeps the root nid within its 16-bit field). */
  maxSharedXattrBytes?: number;
  /**
   * Tar-index image (as `mkfs.erofs --tar=i` lays it out): metadata only, 512-byte blocks,
   * every non-empty regular file one chunk of device 1 (the uncompressed tar) found by its
   * `{kind: "tar"}` data offset. Holds the tar's size in 512-byte blocks for the device table.
   */
  tarIndex?: { tarBlocks: number };
  /**
   * Regular files get FLAT_PLAIN blocks after the metadata, each file from a block boundary,
   * in the order of their `{kind: "tar"}` data offsets, but none of their bytes is written:
   * whoever serves the image serves those blocks (a tar-index layer re-laid out with 4 KiB
   * blocks, lib/gzip/aligned_tar.ts). No inline tails for files.
   */
  virtualData?: boolean;
}

/**
 * On the benchmark tree (8,762 entries, 132 MB) 2048 gave the smallest image (+3.5 % over
 * mkfs.erofs, whose inline tails are padded less tightly than they look), with the directory
 * prefix a `find` needs still 0.3 MB; 256 kept all inodes within 0.9 MB but grew the image 12 %.
 */
export const DEFAULT_INLINE_TAIL_MAX_BYTES = 2048;

/** The device table follows the superblock: slot 9 (byte 1152), one 128-byte slot. */
export const TAR_INDEX_DEVICE_SLOT = 9;

export interface ImageLayout {
  blockSizeBits: number;
  blockBytes: number;
  /** The tree's columns; inode index i (ino = i + 1) is table inode `inodeOf[i]`. */
  table: NodeTable;
  inodeOf: Int32Array;
  /** Per table inode: its inode index (-1: not in the image). */
  indexOf: Int32Array;
  /**
   * Per inode index: the table entry it was first reached by (-1 for the root); only when some
   * file's data is named by its entry (`{kind: "child"}`, a directory scan), else empty.
   */
  entryOf: Int32Array;
  /** Per inode: nid (its byte offset is nid * 32; metadata is far below 128 GiB). */
  nid: Uint32Array;
  nlink: Uint32Array;
  /** Per inode: 1 when it needs the 64-byte extended form. */
  extended: Uint8Array;
  /**
   * i_size of inode index `i` (regular files: the data; directories: their entries; symlinks:
   * the target), kept in the table's size column (the layout sets directories' and symlinks').
   */
  sizeOf(i: number): number;
  /** Per inode: bytes of the last partial block kept after the inode (FLAT_INLINE). */
  inlineTailBytes: Uint16Array;
  /** Per inode: blocks of data outside the inode, and the first of them. */
  blocks: Uint32Array;
  blockAddress: Uint32Array;
  /** Inodes with xattrs: their encoded xattr body. */
  xattrBodies: Map<number, Uint8Array>;
  /** Directories (by inode index). */
  dirs: Map<number, DirectoryPlan>;
  /** Tar-index files: log2 of the one chunk's size (0 = none) and where its index sits. */
  chunkBits?: Uint8Array;
  chunkIndexOffset?: Float64Array;
  shared: { offset: number; bytes: Uint8Array }[];
  /** Bytes from the image start up to the first data block (all metadata). */
  metadataBytes: number;
  /** Regular files with data blocks (inode indexes), in the order their data is written. */
  dataOrder: Int32Array;
  /** `order` paths that name no regular file of the tree. */
  orderUnmatched: string[];
  totalBlocks: number;
  buildTimeSec: number;
  buildTimeNsec: number;
  tarIndex?: { tarBlocks: number };
  /** Data blocks are addresses only: writeImage writes the metadata and stops there. */
  virtualData?: boolean;
  /** Kind and data source of inode index `i`. */
  kindOf(i: number): NodeKind;
  dataOf(i: number): FileData | undefined;
}

const MAX_BLOCK_ADDRESS = 0xffffffff;

/** Plans the whole image; throws FormatError for trees EROFS cannot represent. */
export function layoutImage(root: BuildNode, options: LayoutOptions): ImageLayout {
  const blockSizeBits = options.tarIndex ? 9 : options.blockSizeBits ?? 12;
  const blockBytes = 2 ** blockSizeBits;
  const inlineMax = options.inlineTailMaxBytes ?? DEFAULT_INLINE_TAIL_MAX_BYTES;
  const table = tableOf(root);
  const tree = collectTree(table, blockBytes);
  const { inodeOf, nlink, dirs } = tree;
  const count = inodeOf.length;
  const kindCode = (i: number) => table.kindCode(inodeOf[i]);
  const pathInImage = (inode: number) => table.pathOf(inode, (dir) => tree.indexOf[dir] >= 0);

  const sharedXattrs = planSharedXattrs(
    table,
    tree,
    options.tarIndex
      ? (TAR_INDEX_DEVICE_SLOT + 1) * DEVICE_SLOT_BYTES
      : EROFS_SUPER_OFFSET + SUPERBLOCK_BYTES,
    blockBytes,
    options.maxSharedXattrBytes ?? 1 << 20,
  );
  let cursor = alignUp(sharedXattrs.end, INODE_SLOT_BYTES);

  const nid = new Uint32Array(count);
  const extended = new Uint8Array(count);
  const inlineTailBytes = new Uint16Array(count);
  const blocks = new Uint32Array(count);
  const blockAddress = new Uint32Array(count);
  const xattrBodies = new Map<number, Uint8Array>();
  const chunkBits = options.tarIndex ? new Uint8Array(count) : undefined;
  const chunkIndexOffset = options.tarIndex ? new Float64Array(count) : undefined;

  // Directories first: a cold `find` (which needs only directories, thanks to d_type) then
  // reads one short prefix, however much file metadata and inline data follows.
  const placeDirectoryBlocks = () => {
    // Multi-block directories right behind the directory inodes, still inside the prefix.
    let block = Math.ceil(cursor / blockBytes);
    let any = false;
    for (const i of dirs.keys()) {
      if (blocks[i] === 0) continue;
      any = true;
      blockAddress[i] = block;
      block += blocks[i];
    }
    if (any) cursor = block * blockBytes;
  };
  const place = (i: number) => {
    const inode = inodeOf[i];
    const body = xattrBodyOf(table, inode, sharedXattrs.ids, pathInImage);
    if (body) xattrBodies.set(i, body);
    const size = table.size.get(inode);
    const isExtended = table.uid.get(inode) > 0xffff || table.gid.get(inode) > 0xffff ||
      nlink[i] > 0xffff || size > 0xffffffff ||
      table.mtimeSec.get(inode) !== options.buildTimeSec ||
      table.mtimeNsec.get(inode) !== options.buildTimeNsec;
    extended[i] = isExtended ? 1 : 0;
    const base = (isExtended ? EXTENDED_INODE_BYTES : COMPACT_INODE_BYTES) +
      (xattrBodies.get(i)?.length ?? 0);
    const kind = table.kindCode(inode);
    if (options.tarIndex && kind === KIND_FILE) {
      // One chunk index entry (8 bytes, 8-aligned) after the xattrs; no data blocks here.
      const indexAt = alignUp(base, 8);
      const record = size > 0 ? indexAt + 8 : base;
      if (record <= blockBytes && (cursor % blockBytes) + record > blockBytes) {
        cursor = alignUp(cursor, blockBytes);
      }
      nid[i] = cursor / INODE_SLOT_BYTES;
      if (size > 0) {
        let bits = Math.max(blockSizeBits, Math.ceil(Math.log2(size)));
        while (2 ** bits < size) bits++;
        chunkBits![i] = bits;
        chunkIndexOffset![i] = cursor + indexAt;
      }
      cursor = alignUp(cursor + record, INODE_SLOT_BYTES);
      return;
    }
    const tail = size % blockBytes;
    const inlineWanted = tail > 0 &&
      (kind === KIND_DIR || kind === KIND_SYMLINK ||
        (tail <= inlineMax && !options.virtualData));
    inlineTailBytes[i] = inlineWanted && base + tail <= blockBytes ? tail : 0;
    const record = base + inlineTailBytes[i];
    if (record <= blockBytes && (cursor % blockBytes) + record > blockBytes) {
      cursor = alignUp(cursor, blockBytes);
    }
    nid[i] = cursor / INODE_SLOT_BYTES;
    cursor = alignUp(cursor + record, INODE_SLOT_BYTES);
    const fileBlocks = Math.floor(size / blockBytes) +
      (tail > 0 && inlineTailBytes[i] === 0 ? 1 : 0);
    // The count is stored in 32 bits: past it a file wrapped around onto other blocks.
    if (fileBlocks > MAX_BLOCK_ADDRESS) {
      throw new FormatError(
        `file "${pathInImage(inode)}" is ${size} bytes: more than an image of ` +
          `${blockBytes}-byte blocks holds (${MAX_BLOCK_ADDRESS} blocks)`,
      );
    }
    blocks[i] = fileBlocks;
  };
  for (const i of dirs.keys()) place(i);
  // Directory blocks are only sized once their inodes are placed (inline tails decide).
  placeDirectoryBlocks();
  for (let i = 0; i < count; i++) if (kindCode(i) !== KIND_DIR) place(i);
  if (nid[0] > 0xffff) throw new FormatError("root inode beyond nid 65535");
  if (cursor / INODE_SLOT_BYTES > 0xffffffff) throw new FormatError("metadata over 128 GiB");

  let nextBlock = Math.ceil(cursor / blockBytes);
  for (let i = 0; i < count; i++) {
    const kind = kindCode(i);
    if (kind !== KIND_FILE && kind !== KIND_DIR && blocks[i] > 0) {
      blockAddress[i] = nextBlock;
      nextBlock += blocks[i];
    }
  }
  const metadataBytes = nextBlock * blockBytes;
  const orderUnmatched: string[] = [];
  const dataOrder = options.tarIndex
    ? new Int32Array(0)
    : options.virtualData
    ? byTarOffset(table, inodeOf, blocks)
    : orderFiles(
      { table, inodeOf, indexOf: tree.indexOf, blocks, dirs },
      options.order ?? [],
      orderUnmatched,
    );
  for (const i of dataOrder) {
    if (nextBlock + blocks[i] > MAX_BLOCK_ADDRESS) {
      // Named: a file of 2^32 - 1 blocks passes its own check yet fits beside no metadata.
      throw new FormatError(
        `the image would be over ${MAX_BLOCK_ADDRESS} blocks of ${blockBytes} bytes with file ` +
          `"${pathInImage(inodeOf[i])}" (${table.size.get(inodeOf[i])} bytes)`,
        "EROFS addresses at most that many blocks: leave the file out, or split the tree",
      );
    }
    blockAddress[i] = nextBlock;
    nextBlock += blocks[i];
  }
  // fsck.erofs 1.5 (Debian 12's) reads 12 bytes of xattr header after every inode, whatever its
  // count: an image whose last inode ended at its very end was "corrupted" to it (mkfs.erofs
  // never ends one so; the kernel and fsck 1.9 read it). One zero block more.
  // Not for images laid out over a tar (tar index, aligned): their devices are sized by the tar.
  if (!options.tarIndex && !options.virtualData && nextBlock * blockBytes === cursor) nextBlock++;
  return {
    blockSizeBits,
    blockBytes,
    table,
    inodeOf,
    indexOf: tree.indexOf,
    entryOf: tree.entryOf,
    sizeOf: (i) => table.size.get(inodeOf[i]),
    nid,
    nlink,
    extended,
    inlineTailBytes,
    blocks,
    blockAddress,
    xattrBodies,
    dirs,
    chunkBits,
    chunkIndexOffset,
    shared: sharedXattrs.entries,
    metadataBytes,
    dataOrder,
    orderUnmatched,
    totalBlocks: nextBlock,
    buildTimeSec: options.buildTimeSec,
    buildTimeNsec: options.buildTimeNsec,
    tarIndex: options.tarIndex,
    virtualData: options.virtualData,
    kindOf: (i) => table.kindOf(inodeOf[i]),
    dataOf: (i) => table.dataOf(inodeOf[i]),
  };
}

/** Regular files with data blocks in the order of their `{kind: "tar"}` data offsets. */
function byTarOffset(table: NodeTable, inodeOf: Int32Array, blocks: Uint32Array): Int32Array {
  const files: number[] = [];
  const offsets = new Float64Array(inodeOf.length);
  for (let i = 0; i < inodeOf.length; i++) {
    if (table.kindCode(inodeOf[i]) === KIND_FILE && blocks[i] > 0) {
      const data = table.dataOf(inodeOf[i]);
      if (data?.kind !== "tar") throw new FormatError("virtual data needs tar offsets");
      offsets[i] = data.offset;
      files.push(i);
    }
  }
  return Int32Array.from(files.sort((a, b) => offsets[a] - offsets[b]));
}

/** erofs_dirent.file_type of a node kind. */
export function fileTypeOf(kind: NodeKind): number {
  return FILE_TYPE[kind];
}
