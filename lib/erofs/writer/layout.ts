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
 * inode: 300,000 entries held ~250 bytes each of plan objects, maps and sets; now ~60.
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
import { type BuildNode, compareNames, utf8Length } from "./tree.ts";
import { orderFiles } from "./layout_order.ts";

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
 * A directory's entries sorted by their bytes ("." and ".." included): names, and the inode
 * index of each entry at the same position; and the entries per block.
 */
export interface DirectoryPlan {
  names: string[];
  targets: Int32Array;
  perBlock: number[];
}

export interface ImageLayout {
  blockSizeBits: number;
  blockBytes: number;
  /** Inodes in inode-number order (ino = index + 1); the root is index 0. */
  nodes: BuildNode[];
  /** Per inode (same index): the name it was first reached by (undefined for the root). */
  entryNames: (string | undefined)[];
  /** Per inode: nid (its byte offset is nid * 32). */
  nid: Float64Array;
  nlink: Uint32Array;
  /** Per inode: 1 when it needs the 64-byte extended form. */
  extended: Uint8Array;
  /** Per inode: i_size (regular files: the data; directories: their entries; symlinks). */
  sizeBytes: Float64Array;
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
}

const MAX_BLOCK_ADDRESS = 0xffffffff;

/** Plans the whole image; throws FormatError for trees EROFS cannot represent. */
export function layoutImage(root: BuildNode, options: LayoutOptions): ImageLayout {
  const blockSizeBits = options.tarIndex ? 9 : options.blockSizeBits ?? 12;
  const blockBytes = 2 ** blockSizeBits;
  const inlineMax = options.inlineTailMaxBytes ?? DEFAULT_INLINE_TAIL_MAX_BYTES;
  const tree = collectTree(root, blockBytes);
  const { nodes, nlink, sizeBytes, dirs } = tree;
  const count = nodes.length;

  // Xattr pairs on two inodes or more are stored once, in the shared area after the superblock.
  const uses = new Map<string, { name: string; value: Uint8Array; count: number }>();
  for (const node of nodes) {
    for (const [name, value] of node.xattrs) {
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

  const nid = new Float64Array(count);
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
    const node = nodes[i];
    if (node.xattrs.size > 0) {
      const ids: number[] = [];
      const inline: [string, Uint8Array][] = [];
      const sorted = [...node.xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      for (const [name, value] of sorted) {
        const id = sharedIds.get(xattrKey(name, value));
        if (id !== undefined) ids.push(id);
        else inline.push([name, value]);
      }
      const body = encodeXattrBody(ids, inline);
      if (body) xattrBodies.set(i, body);
    }
    const size = sizeBytes[i];
    const isExtended = node.uid > 0xffff || node.gid > 0xffff || nlink[i] > 0xffff ||
      size > 0xffffffff || node.mtimeSec !== options.buildTimeSec ||
      node.mtimeNsec !== options.buildTimeNsec;
    extended[i] = isExtended ? 1 : 0;
    const base = (isExtended ? EXTENDED_INODE_BYTES : COMPACT_INODE_BYTES) +
      (xattrBodies.get(i)?.length ?? 0);
    if (options.tarIndex && node.kind === "file") {
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
      (node.kind === "dir" || node.kind === "symlink" ||
        (tail <= inlineMax && !options.virtualData));
    inlineTailBytes[i] = inlineWanted && base + tail <= blockBytes ? tail : 0;
    const record = base + inlineTailBytes[i];
    if (record <= blockBytes && (cursor % blockBytes) + record > blockBytes) {
      cursor = alignUp(cursor, blockBytes);
    }
    nid[i] = cursor / INODE_SLOT_BYTES;
    cursor = alignUp(cursor + record, INODE_SLOT_BYTES);
    blocks[i] = Math.floor(size / blockBytes) + (tail > 0 && inlineTailBytes[i] === 0 ? 1 : 0);
  };
  for (const i of dirs.keys()) place(i);
  // Directory blocks are only sized once their inodes are placed (inline tails decide).
  placeDirectoryBlocks();
  for (let i = 0; i < count; i++) if (nodes[i].kind !== "dir") place(i);
  if (nid[0] > 0xffff) throw new FormatError("root inode beyond nid 65535");

  let nextBlock = Math.ceil(cursor / blockBytes);
  for (let i = 0; i < count; i++) {
    const kind = nodes[i].kind;
    if (kind !== "file" && kind !== "dir" && blocks[i] > 0) {
      blockAddress[i] = nextBlock;
      nextBlock += blocks[i];
    }
  }
  const metadataBytes = nextBlock * blockBytes;
  const orderUnmatched: string[] = [];
  const dataOrder = options.tarIndex
    ? new Int32Array(0)
    : options.virtualData
    ? byTarOffset(nodes, blocks)
    : orderFiles(root, { nodes, blocks, dirs }, options.order ?? [], orderUnmatched);
  for (const i of dataOrder) {
    if (nextBlock + blocks[i] > MAX_BLOCK_ADDRESS) throw new FormatError("image over 16 TiB");
    blockAddress[i] = nextBlock;
    nextBlock += blocks[i];
  }
  return {
    blockSizeBits,
    blockBytes,
    nodes,
    entryNames: tree.entryNames,
    nid,
    nlink,
    extended,
    sizeBytes,
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
  };
}

/** Regular files with data blocks in the order of their `{kind: "tar"}` data offsets. */
function byTarOffset(nodes: BuildNode[], blocks: Uint32Array): Int32Array {
  const files: number[] = [];
  for (let i = 0; i < nodes.length; i++) {
    if (nodes[i].kind === "file" && blocks[i] > 0) files.push(i);
  }
  return Int32Array.from(files.sort((a, b) => tarOffsetOf(nodes[a]) - tarOffsetOf(nodes[b])));
}

function tarOffsetOf(node: BuildNode): number {
  const data = node.data;
  if (data?.kind !== "tar") throw new FormatError("virtual data needs tar offsets");
  return data.offset;
}

interface Tree {
  nodes: BuildNode[];
  entryNames: (string | undefined)[];
  nlink: Uint32Array;
  sizeBytes: Float64Array;
  dirs: Map<number, DirectoryPlan>;
}

/**
 * Every node once, breadth-first (hard links are one node reached twice), with link counts,
 * sizes and each directory's sorted entries. A node's index is kept in its `layoutSlot` while
 * this runs and is valid only where `nodes[slot] === node` (so stale slots of an earlier
 * layout, or of another tree, never match).
 */
function collectTree(root: BuildNode, blockBytes: number): Tree {
  const nodes: BuildNode[] = [];
  const entryNames: (string | undefined)[] = [];
  let nlink = new Uint32Array(1024);
  const indexOf = (node: BuildNode, name: string | undefined): number => {
    const slot = node.layoutSlot;
    if (slot >= 0 && slot < nodes.length && nodes[slot] === node) return slot;
    const index = nodes.length;
    node.layoutSlot = index;
    nodes.push(node);
    entryNames.push(name);
    if (index >= nlink.length) {
      const grown = new Uint32Array(nlink.length * 2);
      grown.set(nlink);
      nlink = grown;
    }
    return index;
  };
  const dirs = new Map<number, DirectoryPlan>();
  const dirSizes = new Map<number, number>();
  indexOf(root, undefined);
  nlink[0] = 2;
  // Directory indexes (and their parents) in breadth-first order.
  const queue: number[] = [0, 0];
  for (let head = 0; head < queue.length; head += 2) {
    const dir = queue[head], parent = queue[head + 1];
    const names = [".", ".."];
    const targets = [dir, parent];
    for (const [name, child] of nodes[dir].children ?? []) {
      const known = nodes.length;
      const target = indexOf(child, name);
      if (child.kind === "dir" && target < known) {
        throw new FormatError(`directory reachable twice (at ${name}): not a tree`);
      }
      names.push(name);
      targets.push(target);
      if (child.kind === "dir") {
        nlink[target] = 2;
        nlink[dir]++;
        queue.push(target, dir);
      } else {
        nlink[target]++;
      }
    }
    const order = names.map((_, i) => i).sort((a, b) => compareNames(names[a], names[b]));
    const plan: DirectoryPlan = {
      names: order.map((i) => names[i]),
      targets: Int32Array.from(order, (i) => targets[i]),
      perBlock: [],
    };
    for (let i = 1; i < plan.names.length; i++) {
      if (plan.names[i - 1] === plan.names[i]) {
        throw new FormatError("duplicate name in a directory");
      }
    }
    const packed = packDirectory(plan.names.map(utf8Length), blockBytes);
    plan.perBlock = packed.perBlock;
    dirs.set(dir, plan);
    dirSizes.set(dir, packed.sizeBytes);
  }
  const sizeBytes = new Float64Array(nodes.length);
  for (let i = 0; i < nodes.length; i++) {
    const node = nodes[i];
    sizeBytes[i] = node.kind === "file"
      ? node.sizeBytes
      : node.kind === "symlink"
      ? (node.target?.length ?? 0)
      : node.kind === "dir"
      ? dirSizes.get(i)!
      : 0;
  }
  return { nodes, entryNames, nlink: nlink.slice(0, nodes.length), sizeBytes, dirs };
}

/** erofs_dirent.file_type of a node. */
export function fileTypeOf(node: BuildNode): number {
  return FILE_TYPE[node.kind];
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
