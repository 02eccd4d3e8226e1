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
import { packDirectory } from "./dirs.ts";
import { encodeXattrBody, encodeXattrEntry, xattrKey } from "./xattrs.ts";
import type { BuildNode, FileData, NodeKind } from "./tree.ts";
import { orderFiles } from "./layout_order.ts";
import {
  DOT,
  DOTDOT,
  KIND_DIR,
  KIND_FILE,
  KIND_SYMLINK,
  type NodeTable,
  releaseArray,
  scratchArray,
  tableOf,
} from "./node_table.ts";

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

/**
 * A directory's entries sorted by their bytes ("." and ".." included): table entry ids (or
 * DOT / DOTDOT), and the entries per block.
 */
export interface DirectoryPlan {
  /** Inode indexes of the directory and its parent. */
  self: number;
  parent: number;
  entries: Int32Array;
  perBlock: number[];
}

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

  // Xattr pairs on two inodes or more are stored once, in the shared area after the superblock.
  const uses = new Map<string, { name: string; value: Uint8Array; count: number }>();
  // In inode order, as the shared area's order follows the first use.
  const withXattrs: number[] = [];
  for (const inode of table.extras.keys()) {
    const i = tree.indexOf[inode];
    if (i >= 0 && table.xattrsOf(inode).size > 0) withXattrs.push(i);
  }
  withXattrs.sort((a, b) => a - b);
  for (const i of withXattrs) {
    for (const [name, value] of table.xattrsOf(inodeOf[i])) {
      const key = xattrKey(name, value);
      const use = uses.get(key);
      if (use) use.count++;
      else uses.set(key, { name, value, count: 1 });
    }
  }
  const sharedIds = new Map<string, number>();
  const shared: { offset: number; bytes: Uint8Array }[] = [];
  let cursor = options.tarIndex
    ? (TAR_INDEX_DEVICE_SLOT + 1) * DEVICE_SLOT_BYTES
    : EROFS_SUPER_OFFSET + SUPERBLOCK_BYTES;
  const maxShared = options.maxSharedXattrBytes ?? 1 << 20;
  for (const [key, use] of uses) {
    if (use.count < 2) continue;
    const bytes = encodeXattrEntry(use.name, use.value);
    if (cursor + bytes.length > maxShared) break;
    if ((cursor % blockBytes) + bytes.length > blockBytes) cursor = alignUp(cursor, blockBytes);
    shared.push({ offset: cursor, bytes });
    sharedIds.set(key, cursor / 4);
    cursor += bytes.length;
  }
  uses.clear();
  cursor = alignUp(cursor, INODE_SLOT_BYTES);

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
    const xattrs = table.xattrsOf(inode);
    if (xattrs.size > 0) {
      const ids: number[] = [];
      const inline: [string, Uint8Array][] = [];
      const sorted = [...xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      for (const [name, value] of sorted) {
        const id = sharedIds.get(xattrKey(name, value));
        if (id !== undefined) ids.push(id);
        else inline.push([name, value]);
      }
      let body: Uint8Array | undefined;
      try {
        body = encodeXattrBody(ids, inline);
      } catch (error) {
        if (!(error instanceof FormatError)) throw error;
        const where = `"${pathInImage(inode)}" in the image`;
        throw new FormatError(`${where}: ${error.message}`, error.hint, { cause: error });
      }
      if (body) xattrBodies.set(i, body);
    }
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
    if (nextBlock + blocks[i] > MAX_BLOCK_ADDRESS) throw new FormatError("image over 16 TiB");
    blockAddress[i] = nextBlock;
    nextBlock += blocks[i];
  }
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
    shared,
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

interface Tree {
  inodeOf: Int32Array;
  indexOf: Int32Array;
  entryOf: Int32Array;
  nlink: Uint32Array;
  dirs: Map<number, DirectoryPlan>;
}

const DOT_BYTES = new Uint8Array([0x2e]), DOTDOT_BYTES = new Uint8Array([0x2e, 0x2e]);

/**
 * Every reachable inode once, breadth-first in each directory's entry order (hard links are
 * one inode reached twice), with link counts, sizes and each directory's sorted entries.
 */
function collectTree(table: NodeTable, blockBytes: number): Tree {
  const inodes = table.inodes, entries = table.entries;
  // Each directory's entries in entry order: a counting sort by parent.
  // One array for counts, fill positions and starts (no second one of `inodes`): counted at
  // p + 2, summed, then filled from p + 1, which leaves [childStart[p], childStart[p + 1]).
  const childStart = scratchArray(Uint32Array, inodes + 2);
  for (let e = 0; e < entries; e++) childStart[table.entryParent[e] + 2]++;
  for (let i = 0; i <= inodes; i++) childStart[i + 1] += childStart[i];
  const childList = scratchArray(Int32Array, entries);
  for (let e = 0; e < entries; e++) childList[childStart[table.entryParent[e] + 1]++] = e;
  const indexOf = new Int32Array(inodes).fill(-1);
  const inodeOf = new Int32Array(inodes);
  // Names of files are needed only for data a directory scan shares per directory.
  const entryOf = new Int32Array(table.refs.some((ref) => ref?.kind === "child") ? inodes : 0);
  const nlink = new Uint32Array(inodes);
  let count = 0;
  const add = (inode: number, entry: number): number => {
    indexOf[inode] = count;
    inodeOf[count] = inode;
    if (entryOf.length > 0) entryOf[count] = entry;
    return count++;
  };
  add(0, -1);
  nlink[0] = 2;
  const dirs = new Map<number, DirectoryPlan>();
  const pool = table.pool, nameStart = table.nameStart, nameLength = table.nameLength;
  const compareEntries = (a: number, b: number): number => {
    const la = nameLength[a], lb = nameLength[b];
    const sa = nameStart[a], sb = nameStart[b];
    const n = la < lb ? la : lb;
    for (let k = 0; k < n; k++) {
      const d = pool[sa + k] - pool[sb + k];
      if (d !== 0) return d;
    }
    return la - lb;
  };
  const compareToBytes = (e: number, bytes: Uint8Array): number => {
    const le = nameLength[e], se = nameStart[e];
    const n = le < bytes.length ? le : bytes.length;
    for (let k = 0; k < n; k++) {
      const d = pool[se + k] - bytes[k];
      if (d !== 0) return d;
    }
    return le - bytes.length;
  };
  // Directory indexes (and their parents) in breadth-first order.
  const queue: number[] = [0, 0];
  for (let head = 0; head < queue.length; head += 2) {
    const dir = queue[head], parent = queue[head + 1];
    const from = childStart[inodeOf[dir]], to = childStart[inodeOf[dir] + 1];
    for (let k = from; k < to; k++) {
      const e = childList[k];
      const child = table.entryInode[e];
      const isDir = table.kindCode(child) === KIND_DIR;
      let target = indexOf[child];
      if (target >= 0 && isDir) {
        throw new FormatError(`directory reachable twice (at ${table.nameOf(e)}): not a tree`);
      }
      if (target < 0) target = add(child, e);
      if (isDir) {
        nlink[target] = 2;
        nlink[dir]++;
        queue.push(target, dir);
      } else {
        nlink[target]++;
      }
    }
    const sorted = childList.subarray(from, to).sort(compareEntries);
    for (let k = 1; k < sorted.length; k++) {
      if (compareEntries(sorted[k - 1], sorted[k]) === 0) {
        throw new FormatError("duplicate name in a directory");
      }
    }
    // "." and ".." among the names, where their bytes put them.
    const merged = new Int32Array(sorted.length + 2);
    let at = 0, k = 0, dotDone = false, dotdotDone = false;
    while (at < merged.length) {
      if (!dotDone && (k >= sorted.length || compareToBytes(sorted[k], DOT_BYTES) > 0)) {
        merged[at++] = DOT;
        dotDone = true;
      } else if (
        dotDone && !dotdotDone &&
        (k >= sorted.length || compareToBytes(sorted[k], DOTDOT_BYTES) > 0)
      ) {
        merged[at++] = DOTDOT;
        dotdotDone = true;
      } else {
        merged[at++] = sorted[k++];
      }
    }
    const lengths = Array.from(merged, (e) => e === DOT ? 1 : e === DOTDOT ? 2 : nameLength[e]);
    const packed = packDirectory(lengths, blockBytes);
    dirs.set(dir, { self: dir, parent, entries: merged, perBlock: packed.perBlock });
    table.size.set(inodeOf[dir], packed.sizeBytes);
  }
  releaseArray(childList);
  releaseArray(childStart);
  // Symlinks' sizes join the table's (files' are there, directories' set above; others 0).
  for (const inode of table.extras.keys()) {
    if (table.kindCode(inode) === KIND_SYMLINK) {
      table.size.set(inode, table.targetOf(inode)?.length ?? 0);
    }
  }
  // Every inode is reachable unless a tar member replaced some: copy only then.
  const fit = (a: Int32Array) => count === inodes ? a : a.slice(0, count);
  return {
    inodeOf: fit(inodeOf),
    indexOf,
    entryOf: entryOf.length > 0 ? fit(entryOf) : entryOf,
    nlink: count === inodes ? nlink : nlink.slice(0, count),
    dirs,
  };
}

/** The inode index entry `k` of directory `plan` points at. */
export function direntTarget(
  layout: { table: NodeTable; indexOf: Int32Array },
  plan: DirectoryPlan,
  k: number,
): number {
  const e = plan.entries[k];
  return e === DOT
    ? plan.self
    : e === DOTDOT
    ? plan.parent
    : layout.indexOf[layout.table.entryInode[e]];
}

/** erofs_dirent.file_type of a node kind. */
export function fileTypeOf(kind: NodeKind): number {
  return FILE_TYPE[kind];
}

function alignUp(n: number, to: number): number {
  return smallInt(Math.ceil(n / to) * to);
}

/**
 * `n` (an integer) as a small integer when it is one: a division or Math.ceil yields a double
 * even when integral, and a field that once held a double keeps every object's value boxed
 * (100,000 entries: ~10 MB of heap numbers across offset, nid, sizes, mtimes).
 */
export function smallInt(n: number): number {
  return n >= -0x80000000 && n <= 0x7fffffff ? n | 0 : n;
}
