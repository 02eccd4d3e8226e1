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

export interface PlannedInode {
  node: BuildNode;
  ino: number;
  nlink: number;
  extended: boolean;
  xattrBody?: Uint8Array;
  sizeBytes: number;
  /** Bytes of the last partial block kept after the inode (FLAT_INLINE); 0 = FLAT_PLAIN. */
  inlineTailBytes: number;
  /** Blocks of data outside the inode. */
  blocks: number;
  blockAddress: number;
  offset: number;
  nid: number;
  /** Tar-index files: log2 of the one chunk's size, and where the chunk index sits. */
  chunkBits?: number;
  chunkIndexOffset?: number;
  /**
   * Directories: entry names sorted by their bytes ("." and ".." included) with each entry's
   * inode at the same index (two arrays: an object per entry cost 40 bytes more), and the
   * entries per block.
   */
  names?: string[];
  targets?: PlannedInode[];
  perBlock?: number[];
}

export interface ImageLayout {
  blockSizeBits: number;
  blockBytes: number;
  inodes: PlannedInode[];
  root: PlannedInode;
  shared: { offset: number; bytes: Uint8Array }[];
  /** Bytes from the image start up to the first data block (all metadata). */
  metadataBytes: number;
  /** Regular files with data blocks, in the order their data is written. */
  dataOrder: PlannedInode[];
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
  const planned = new Map<BuildNode, PlannedInode>();
  const inodes: PlannedInode[] = [];
  const plan = (node: BuildNode): PlannedInode => {
    let p = planned.get(node);
    if (!p) {
      p = {
        node,
        ino: inodes.length + 1,
        nlink: 0,
        extended: false,
        sizeBytes: node.kind === "file"
          ? node.sizeBytes
          : node.kind === "symlink"
          ? (node.target?.length ?? 0)
          : 0,
        inlineTailBytes: 0,
        blocks: 0,
        blockAddress: 0,
        offset: 0,
        nid: 0,
      };
      planned.set(node, p);
      inodes.push(p);
    }
    return p;
  };

  // Breadth-first: every node once (hard links are one node reached twice).
  const rootPlan = plan(root);
  rootPlan.nlink = 2;
  const queue: [PlannedInode, PlannedInode][] = [[rootPlan, rootPlan]];
  for (let head = 0; head < queue.length; head++) {
    const [dir, parent] = queue[head];
    const names = [".", ".."];
    const targets = [dir, parent];
    for (const [name, child] of dir.node.children ?? []) {
      if (child.kind === "dir" && planned.has(child)) {
        throw new FormatError(`directory reachable twice (at ${name}): not a tree`);
      }
      const target = plan(child);
      names.push(name);
      targets.push(target);
      if (child.kind === "dir") {
        target.nlink = 2;
        dir.nlink++;
        queue.push([target, dir]);
      } else {
        target.nlink++;
      }
    }
    const sorted = names.map((_, i) => i).sort((a, b) => compareNames(names[a], names[b]));
    dir.names = sorted.map((i) => names[i]);
    dir.targets = sorted.map((i) => targets[i]);
    for (let i = 1; i < dir.names.length; i++) {
      if (dir.names[i - 1] === dir.names[i]) {
        throw new FormatError("duplicate name in a directory");
      }
    }
    const packed = packDirectory(dir.names.map(utf8Length), blockBytes);
    dir.perBlock = packed.perBlock;
    dir.sizeBytes = smallInt(packed.sizeBytes);
  }

  // Xattr pairs on two inodes or more are stored once, in the shared area after the superblock.
  const uses = new Map<string, { name: string; value: Uint8Array; count: number }>();
  for (const p of inodes) {
    for (const [name, value] of p.node.xattrs) {
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
  cursor = alignUp(cursor, INODE_SLOT_BYTES);

  // Directories first: a cold `find` (which needs only directories, thanks to d_type) then
  // reads one short prefix, however much file metadata and inline data follows.
  const packing = [
    ...inodes.filter((p) => p.node.kind === "dir"),
    ...inodes.filter((p) => p.node.kind !== "dir"),
  ];
  let dirBlocksPlaced = false;
  const placeDirectoryBlocks = () => {
    // Multi-block directories right behind the directory inodes, still inside the prefix.
    dirBlocksPlaced = true;
    const dirs = packing.filter((p) => p.node.kind === "dir" && p.blocks > 0);
    if (dirs.length === 0) return;
    let block = Math.ceil(cursor / blockBytes);
    for (const p of dirs) {
      p.blockAddress = block;
      block += p.blocks;
    }
    cursor = block * blockBytes;
  };
  for (const p of packing) {
    const node = p.node;
    if (node.kind !== "dir" && !dirBlocksPlaced) placeDirectoryBlocks();
    if (node.xattrs.size > 0) {
      const ids: number[] = [];
      const inline: [string, Uint8Array][] = [];
      const sorted = [...node.xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      for (const [name, value] of sorted) {
        const id = sharedIds.get(xattrKey(name, value));
        if (id !== undefined) ids.push(id);
        else inline.push([name, value]);
      }
      p.xattrBody = encodeXattrBody(ids, inline);
    }
    p.extended = node.uid > 0xffff || node.gid > 0xffff || p.nlink > 0xffff ||
      p.sizeBytes > 0xffffffff || node.mtimeSec !== options.buildTimeSec ||
      node.mtimeNsec !== options.buildTimeNsec;
    const base = (p.extended ? EXTENDED_INODE_BYTES : COMPACT_INODE_BYTES) +
      (p.xattrBody?.length ?? 0);
    if (options.tarIndex && node.kind === "file") {
      // One chunk index entry (8 bytes, 8-aligned) after the xattrs; no data blocks here.
      const indexAt = alignUp(base, 8);
      const record = p.sizeBytes > 0 ? indexAt + 8 : base;
      if (record <= blockBytes && (cursor % blockBytes) + record > blockBytes) {
        cursor = alignUp(cursor, blockBytes);
      }
      p.offset = smallInt(cursor);
      p.nid = smallInt(cursor / INODE_SLOT_BYTES);
      if (p.sizeBytes > 0) {
        p.chunkBits = Math.max(blockSizeBits, Math.ceil(Math.log2(p.sizeBytes)));
        while (2 ** p.chunkBits < p.sizeBytes) p.chunkBits++;
        p.chunkIndexOffset = cursor + indexAt;
      }
      cursor = alignUp(cursor + record, INODE_SLOT_BYTES);
      continue;
    }
    const tail = p.sizeBytes % blockBytes;
    const inlineWanted = tail > 0 &&
      (node.kind === "dir" || node.kind === "symlink" ||
        (tail <= inlineMax && !options.virtualData));
    p.inlineTailBytes = inlineWanted && base + tail <= blockBytes ? smallInt(tail) : 0;
    const record = base + p.inlineTailBytes;
    if (record <= blockBytes && (cursor % blockBytes) + record > blockBytes) {
      cursor = alignUp(cursor, blockBytes);
    }
    p.offset = smallInt(cursor);
    p.nid = smallInt(cursor / INODE_SLOT_BYTES);
    cursor = alignUp(cursor + record, INODE_SLOT_BYTES);
    p.blocks = Math.floor(p.sizeBytes / blockBytes) +
      (tail > 0 && p.inlineTailBytes === 0 ? 1 : 0);
  }
  if (rootPlan.nid > 0xffff) throw new FormatError("root inode beyond nid 65535");

  if (!dirBlocksPlaced) placeDirectoryBlocks();
  let nextBlock = Math.ceil(cursor / blockBytes);
  for (const p of packing) {
    if (p.node.kind !== "file" && p.node.kind !== "dir" && p.blocks > 0) {
      p.blockAddress = nextBlock;
      nextBlock += p.blocks;
    }
  }
  const metadataBytes = nextBlock * blockBytes;
  const orderUnmatched: string[] = [];
  const dataOrder = options.tarIndex
    ? []
    : options.virtualData
    ? inodes.filter((p) => p.node.kind === "file" && p.blocks > 0).sort((a, b) =>
      tarOffsetOf(a) - tarOffsetOf(b)
    )
    : orderFiles(root, planned, options.order ?? [], orderUnmatched);
  for (const p of dataOrder) {
    p.blockAddress = nextBlock;
    nextBlock += p.blocks;
  }
  if (nextBlock > MAX_BLOCK_ADDRESS) throw new FormatError("image over 16 TiB");
  return {
    blockSizeBits,
    blockBytes,
    inodes,
    root: rootPlan,
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

function tarOffsetOf(p: PlannedInode): number {
  const data = p.node.data;
  if (data?.kind !== "tar") throw new FormatError("virtual data needs tar offsets");
  return data.offset;
}

/** Files with data blocks: the `order` list first, then depth-first in name order. */
function orderFiles(
  root: BuildNode,
  planned: Map<BuildNode, PlannedInode>,
  order: string[],
  unmatched: string[],
): PlannedInode[] {
  const out: PlannedInode[] = [];
  const taken = new Set<PlannedInode>();
  /** False when `node` is not a regular file (empty files and repeats count as found). */
  const take = (node: BuildNode | undefined): boolean => {
    const p = node && node.kind === "file" ? planned.get(node) : undefined;
    if (p && p.blocks > 0 && !taken.has(p)) {
      taken.add(p);
      out.push(p);
    }
    return p !== undefined;
  };
  for (const path of order) {
    if (!take(lookup(root, path))) unmatched.push(path);
  }
  // Depth first with an explicit stack: a hostile tar can nest directories very deep.
  const stack: { dir: PlannedInode; next: number }[] = [{ dir: planned.get(root)!, next: 0 }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const names = top.dir.names ?? [];
    if (top.next >= names.length) {
      stack.pop();
      continue;
    }
    const index = top.next++;
    if (names[index] === "." || names[index] === "..") continue;
    const target = top.dir.targets![index];
    if (target.node.kind === "dir") stack.push({ dir: target, next: 0 });
    else take(target.node);
  }
  return out;
}

/** The node at a relative path ("a/b", "./a/b", "/a/b"), not following symlinks. */
export function lookup(root: BuildNode, path: string): BuildNode | undefined {
  let node: BuildNode | undefined = root;
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    node = node?.children?.get(part);
    if (!node) return undefined;
  }
  return node;
}

/** erofs_dirent.file_type of a planned inode. */
export function fileTypeOf(p: PlannedInode): number {
  return FILE_TYPE[p.node.kind];
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
