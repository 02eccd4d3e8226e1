/**
 * Writes a laid-out image: the metadata in image order through a fixed window, then each file's
 * data from its source (small files gathered into one buffered write, large ones by
 * copy_file_range). Memory is the layout, not the metadata area or the data.
 */
import { closeFd, Errno, libc, SysError, unwrap } from "../../../ffi/libc.ts";
import { DeferredCloses, S_IFMT, S_IFREG } from "../../../ffi/files.ts";
import {
  openDirNoSymlinks,
  openFileAt,
  openFileNoSymlinks,
  statIdentity,
} from "../../../ffi/path_resolve.ts";
import { FormatError } from "../../errors.ts";
import {
  chunkFormat,
  COMPACT_INODE_BYTES,
  DATALAYOUT_CHUNK_BASED,
  DATALAYOUT_FLAT_INLINE,
  DATALAYOUT_FLAT_PLAIN,
  DEVICE_SLOT_BYTES,
  encodeDeviceSlot,
  encodeInode,
  encodeRdev,
  encodeSuperblock,
  EXTENDED_INODE_BYTES,
  FEATURE_INCOMPAT_DEVICE_TABLE,
  MODE_TYPE,
} from "./format.ts";
import { encodeDirectory } from "./dirs.ts";
import { fileTypeOf, type ImageLayout, TAR_INDEX_DEVICE_SLOT } from "./layout.ts";
import { direntTarget } from "./layout_tree.ts";
import { xattrCount } from "./xattrs.ts";
import { copyRange, pathBytes, preadInto, pwriteAll } from "./data_copy.ts";
import { BlockBatch, SMALL_FILE_BYTES } from "./data_batch.ts";
import { MetadataWriter } from "./meta_writer.ts";
import { INODE_SLOT_BYTES } from "./format.ts";
import type { FileData } from "./tree.ts";
import { DOT, DOTDOT, KIND_DIR, KIND_SYMLINK } from "./node_table.ts";

export interface WriteOptions {
  uuid: Uint8Array;
  volumeName?: string;
  /** Data bytes copied so far and the total, for a progress line. */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export interface WriteResult {
  sizeBytes: number;
  metadataBytes: number;
  inodes: number;
  dataBytes: number;
  /** `order` paths that name no regular file of the tree. */
  orderUnmatched: string[];
}

/** Writes `layout` to the open, empty, writable file `fd`. */
export function writeImage(layout: ImageLayout, fd: number, options: WriteOptions): WriteResult {
  const bs = layout.blockBytes;
  const out = new MetadataWriter(fd, bs);
  for (const entry of layout.shared) out.write(entry.offset, entry.bytes);
  // The layout's regions in image order: directory records, multi-block directory blocks,
  // other records, long symlink blocks (each region ascending in the same inode order).
  const scratch = new Uint8Array(Math.max(bs, EXTENDED_INODE_BYTES));
  const count = layout.inodeOf.length;
  const kindCode = (i: number) => layout.table.kindCode(layout.inodeOf[i]);
  // Inline tails of files that also have data blocks are copied with those blocks (one open
  // of the file instead of two; 2,363 of the benchmark tree's 8,144 files), unless they lie
  // in the first block, whose checksum is taken before the data is copied.
  const headBytes = out.head.length;
  const tailWithData = (i: number) =>
    layout.blocks[i] > 0 && tailOffset(layout, i) + layout.inlineTailBytes[i] > headBytes;
  const sources = new Sources(layout);
  try {
    for (const i of layout.dirs.keys()) writeRecord(out, i, sources, scratch, tailWithData);
    for (const i of layout.dirs.keys()) writeBlocks(out, i, layout);
    for (let i = 0; i < count; i++) {
      if (kindCode(i) !== KIND_DIR) writeRecord(out, i, sources, scratch, tailWithData);
    }
    return writeRest(layout, fd, out, sources, scratch, tailWithData, options);
  } finally {
    sources.close();
  }
}

/** writeImage's part after the records: symlink blocks, superblock, then the file data. */
function writeRest(
  layout: ImageLayout,
  fd: number,
  out: MetadataWriter,
  sources: Sources,
  scratch: Uint8Array<ArrayBuffer>,
  tailWithData: (i: number) => boolean,
  options: WriteOptions,
): WriteResult {
  const bs = layout.blockBytes;
  const count = layout.inodeOf.length;
  const kindCode = (i: number) => layout.table.kindCode(layout.inodeOf[i]);
  for (let i = 0; i < count; i++) {
    if (kindCode(i) === KIND_SYMLINK) writeBlocks(out, i, layout);
  }
  const head = new DataView(out.head.buffer);
  if (layout.tarIndex) {
    encodeDeviceSlot(
      head,
      TAR_INDEX_DEVICE_SLOT * DEVICE_SLOT_BYTES,
      layout.tarIndex.tarBlocks,
      layout.totalBlocks,
    );
  }
  encodeSuperblock(out.head, {
    blockSizeBits: layout.blockSizeBits,
    rootNid: layout.nid[0],
    inodes: count,
    buildTimeSec: layout.buildTimeSec,
    buildTimeNsec: layout.buildTimeNsec,
    blocks: layout.totalBlocks,
    metaBlockAddress: 0,
    xattrBlockAddress: 0,
    uuid: options.uuid,
    volumeName: options.volumeName,
    ...(layout.tarIndex
      ? {
        featureIncompat: FEATURE_INCOMPAT_DEVICE_TABLE,
        extraDevices: 1,
        deviceTableSlotOffset: TAR_INDEX_DEVICE_SLOT,
      }
      : {}),
  });
  out.finish();
  if (layout.virtualData) {
    unwrap(libc().ftruncate(fd, BigInt(layout.metadataBytes)), "ftruncate", "(image)");
    return {
      sizeBytes: layout.totalBlocks * bs,
      metadataBytes: layout.metadataBytes,
      inodes: count,
      dataBytes: 0,
      orderUnmatched: [],
    };
  }

  const { blocks, blockAddress } = layout;
  let totalData = 0;
  for (const i of layout.dataOrder) totalData += Math.min(layout.sizeOf(i), blocks[i] * bs);
  let done = 0;
  options.onProgress?.(0, totalData);
  const batch = new BlockBatch(fd, bs);
  for (const i of layout.dataOrder) {
    const length = Math.min(layout.sizeOf(i), blocks[i] * bs);
    const at = blockAddress[i] * bs;
    const tailBytes = layout.inlineTailBytes[i] > 0 && tailWithData(i)
      ? layout.inlineTailBytes[i]
      : 0;
    sources.with(i, (src, offset, what) => {
      if (length <= SMALL_FILE_BYTES) {
        // The tail follows the blocks in the file: one read for both, into the batch's room
        // past the blocks (this file's blocks are whole: the tail is its last bytes).
        const room = batch.take(at, length, tailBytes);
        preadInto(src, room, offset, what);
        if (tailBytes > 0) pwriteAll(fd, room.subarray(length), tailOffset(layout, i));
        done += length;
        options.onProgress?.(done, totalData);
        return;
      }
      batch.flush();
      copyRange(src, offset, fd, at, length, what, (n) => {
        done += n;
        options.onProgress?.(done, totalData);
      });
      if (tailBytes > 0) {
        const tail = scratch.subarray(0, tailBytes);
        preadInto(src, tail, offset + length, what);
        pwriteAll(fd, tail, tailOffset(layout, i));
      }
    });
  }
  batch.flush();
  const sizeBytes = layout.totalBlocks * bs;
  unwrap(libc().ftruncate(fd, BigInt(sizeBytes)), "ftruncate", "(image)");
  return {
    sizeBytes,
    metadataBytes: layout.metadataBytes,
    inodes: count,
    dataBytes: totalData,
    orderUnmatched: layout.orderUnmatched,
  };
}

/**
 * One inode record: the inode, its xattrs, then its chunk index (tar-index files) or inline
 * tail (a directory's or symlink's last block, or a file's last bytes read from its source).
 */
function writeRecord(
  out: MetadataWriter,
  i: number,
  sources: Sources,
  scratch: Uint8Array,
  tailWithData: (i: number) => boolean,
): void {
  const layout = sources.layout;
  const table = layout.table;
  const inode = layout.inodeOf[i];
  const kind = table.kindOf(inode);
  const isExtended = layout.extended[i] === 1;
  const inodeBytes = isExtended ? EXTENDED_INODE_BYTES : COMPACT_INODE_BYTES;
  const inlineTailBytes = layout.inlineTailBytes[i];
  const sizeBytes = layout.sizeOf(i);
  const xattrBody = layout.xattrBodies.get(i);
  const chunkBits = layout.chunkBits?.[i] ?? 0;
  let u = layout.blockAddress[i];
  if (kind === "chardev" || kind === "blockdev") {
    const [major, minor] = table.rdevOf(inode);
    u = encodeRdev(major, minor);
  } else if (kind === "fifo" || kind === "socket") u = 0;
  let dataLayout = inlineTailBytes > 0 ? DATALAYOUT_FLAT_INLINE : DATALAYOUT_FLAT_PLAIN;
  if (chunkBits > 0) {
    dataLayout = DATALAYOUT_CHUNK_BASED;
    u = chunkFormat(chunkBits, layout.blockSizeBits);
  }
  scratch.fill(0, 0, inodeBytes);
  encodeInode(scratchView(scratch), 0, {
    extended: isExtended,
    dataLayout,
    xattrCount: xattrCount(xattrBody?.length ?? 0),
    mode: MODE_TYPE[kind] | table.modeOf(inode),
    nlink: layout.nlink[i],
    sizeBytes,
    u,
    ino: i + 1,
    uid: table.uid.get(inode),
    gid: table.gid.get(inode),
    mtimeSec: table.mtimeSec.get(inode),
    mtimeNsec: table.mtimeNsec.get(inode),
  });
  const offset = layout.nid[i] * INODE_SLOT_BYTES;
  out.write(offset, scratch.subarray(0, inodeBytes));
  const xattrAt = offset + inodeBytes;
  if (xattrBody) out.write(xattrAt, xattrBody);
  if (chunkBits > 0) {
    out.write(layout.chunkIndexOffset![i], chunkIndex(layout.dataOf(i), layout.blockBytes));
  }
  if (inlineTailBytes === 0) return;
  const tailAt = tailOffset(layout, i);
  const contents = metadataContents(i, layout);
  if (contents) {
    out.write(tailAt, contents.subarray(layout.blocks[i] * layout.blockBytes));
  } else if (kind === "file" && !tailWithData(i)) {
    const tail = scratch.subarray(0, inlineTailBytes);
    sources.with(
      i,
      (fd, offset, what) => preadInto(fd, tail, offset + sizeBytes - inlineTailBytes, what),
    );
    out.write(tailAt, tail);
  }
}

/** Image offset of inode `i`'s inline tail: after the inode and its xattrs. */
function tailOffset(layout: ImageLayout, i: number): number {
  const inodeBytes = layout.extended[i] === 1 ? EXTENDED_INODE_BYTES : COMPACT_INODE_BYTES;
  return layout.nid[i] * INODE_SLOT_BYTES + inodeBytes + (layout.xattrBodies.get(i)?.length ?? 0);
}

const views = new WeakMap<Uint8Array, DataView>();
/** One DataView per scratch buffer (a view per record was 100,000 objects of garbage). */
function scratchView(scratch: Uint8Array): DataView {
  let view = views.get(scratch);
  if (!view) views.set(scratch, view = new DataView(scratch.buffer));
  return view;
}

/** The full blocks of a directory or symlink (they live in the metadata area). */
function writeBlocks(out: MetadataWriter, i: number, layout: ImageLayout): void {
  const blocks = layout.blocks[i];
  if (blocks === 0) return;
  const bs = layout.blockBytes;
  const contents = metadataContents(i, layout)!;
  out.write(
    layout.blockAddress[i] * bs,
    contents.subarray(0, Math.min(blocks * bs, contents.length)),
  );
}

/** The one chunk index entry of a tar-index file: {le16 startblk_hi, le16 device 1, le32 lo}. */
function chunkIndex(data: FileData | undefined, blockBytes: number): Uint8Array {
  if (data?.kind !== "tar") throw new FormatError("tar-index file without a tar offset");
  const block = data.offset / blockBytes;
  if (!Number.isInteger(block) || block > 0xffffffff) {
    throw new FormatError(`tar data offset ${data.offset} cannot be indexed`);
  }
  const bytes = new Uint8Array(8);
  const view = new DataView(bytes.buffer);
  view.setUint16(2, 1, true);
  view.setUint32(4, block, true);
  return bytes;
}

/** The bytes of a directory or symlink; undefined for other kinds. */
function metadataContents(i: number, layout: ImageLayout): Uint8Array | undefined {
  const table = layout.table;
  const inode = layout.inodeOf[i];
  if (table.kindCode(inode) === KIND_SYMLINK) return table.targetOf(inode) ?? new Uint8Array();
  const dir = layout.dirs.get(i);
  if (!dir) return undefined;
  const entries = Array.from(dir.entries, (e, k) => {
    const target = direntTarget(layout, dir, k);
    return {
      name: e === DOT ? "." : e === DOTDOT ? ".." : table.nameBytesOf(e),
      nid: layout.nid[target],
      fileType: fileTypeOf(layout.kindOf(target)),
    };
  });
  return encodeDirectory(entries, dir.perBlock, layout.sizeOf(i), layout.blockBytes);
}

/**
 * Opens the sources of file data, and closes them in batches (DeferredCloses). A directory
 * scan's file is opened by its name in a descriptor of its directory (that directory resolved
 * once without symlinks, as openFileNoSymlinks resolves a whole path, and kept for the next
 * files there: the data order is depth first, so a few stay open), not by its whole path: an
 * openat2 of each file's path, with its C string and open_how built per call, was the biggest
 * cost of writing a tree of small files (50,000 files: 0.4 of 2.4 s CPU).
 */
class Sources {
  /** Open O_PATH descriptors of directories by their path, oldest first. */
  readonly #dirs = new Map<string, number>();
  /** The files' descriptors, closed in batches. */
  readonly #closes = new DeferredCloses();

  constructor(readonly layout: ImageLayout) {}

  /** Runs `use` on an open descriptor of inode `i`'s data (closed afterwards when opened here). */
  with<T>(i: number, use: (fd: number, offset: number, what: string) => T): T {
    const layout = this.layout;
    const data = layout.dataOf(i);
    if (!data) throw new FormatError("regular file without a data source");
    if (data.kind === "fd") return use(data.fd, data.offset, "(spooled data)");
    if (data.kind === "tar") throw new FormatError("tar-index data cannot be copied");
    const name = data.kind === "child" ? layout.table.nameOf(layout.entryOf[i]) : "";
    const path = data.kind === "child" ? `${data.dir}/${name}` : data.path;
    // The scan's path has no symlink in it (from_dir.ts): one there now, or something else than
    // a regular file, was put there since, and would show bytes the scan never saw (a secret
    // behind a symlink, as root).
    let fd: number;
    try {
      fd = data.kind === "child" && !name.includes("/")
        ? openFileAt(this.#dir(data.dir, path), pathBytes(name), path)
        : openFileNoSymlinks(path);
    } catch (error) {
      const swapped = error instanceof SysError &&
        (error.errno === Errno.ELOOP || error.errno === Errno.ENOTDIR);
      if (!swapped) throw error;
      throw changedDuringBuild(path, "a symlink is on its path now");
    }
    try {
      const now = statIdentity(fd, "", path);
      if ((now.mode & S_IFMT) !== S_IFREG) {
        throw changedDuringBuild(path, "it is no regular file now");
      }
      // The file the scan saw, not one renamed over it since: its bytes would go out under the
      // scanned file's owner, mode and capabilities (or a private file's under a public name).
      const table = layout.table, inode = layout.inodeOf[i];
      const scannedIno = table.sourceIno.get(inode);
      if (scannedIno !== 0 && Number(now.ino) !== scannedIno) {
        throw changedDuringBuild(path, "another file is at its name now");
      }
      // Nor a new one that got its inode number: the scanned one deleted from a directory the
      // user owns, the user's file created with the freed number, root's capabilities over it.
      const sameOwnerAndMode = now.uid === table.uid.get(inode) &&
        now.gid === table.gid.get(inode) && (now.mode & 0o7777) === table.modeOf(inode);
      if (scannedIno !== 0 && !sameOwnerAndMode) {
        throw changedDuringBuild(path, "its owner or mode is not what the scan saw");
      }
      return use(fd, 0, path);
    } finally {
      this.#closes.add(fd);
    }
  }

  /** The directory `dir` (for the file `path`'s errors), opened without symlinks, kept open. */
  #dir(dir: string, path: string): number {
    const dirs = this.#dirs;
    const open = dirs.get(dir);
    if (open !== undefined) return open;
    // The files' descriptors closed first: the directory's then takes the lowest number free,
    // and the kept directories' stay below those of the files opened next, which so stay in
    // runs that one close_range closes (between kept directories' numbers, runs were ~5 long).
    this.#closes.flush();
    let fd: number;
    try {
      fd = openDirNoSymlinks(dir);
    } catch (error) {
      // Named as the file's own open named it.
      if (error instanceof SysError) throw new SysError("open", error.errno, path);
      throw error;
    }
    if (dirs.size >= KEPT_DIRS) {
      const [oldest, oldFd] = dirs.entries().next().value!;
      dirs.delete(oldest);
      closeFd(oldFd);
    }
    dirs.set(dir, fd);
    return fd;
  }

  close(): void {
    this.#closes.flush();
    for (const fd of this.#dirs.values()) closeFd(fd);
    this.#dirs.clear();
  }
}

/** Directory descriptors Sources keeps open (a depth-first walk returns to its parents). */
const KEPT_DIRS = 32;

function changedDuringBuild(path: string, what: string): FormatError {
  return new FormatError(
    `${path} changed while the image was built (${what})`,
    "build from a tree nothing else writes to while the build runs",
  );
}
