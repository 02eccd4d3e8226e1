/**
 * Writes a laid-out image: the metadata in image order through a fixed window, then each file's
 * data from its source (small files gathered into one buffered write, large ones by
 * copy_file_range). Memory is the layout, not the metadata area or the data.
 */
import { closeFd, Errno, libc, SysError, unwrap } from "../../../ffi/libc.ts";
import { S_IFMT, S_IFREG } from "../../../ffi/files.ts";
import { openFileNoSymlinks, statIdentity } from "../../../ffi/path_resolve.ts";
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
import { copyRange, preadInto, pwriteAll } from "./data_copy.ts";
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
  for (const i of layout.dirs.keys()) writeRecord(out, i, layout, scratch, tailWithData);
  for (const i of layout.dirs.keys()) writeBlocks(out, i, layout);
  for (let i = 0; i < count; i++) {
    if (kindCode(i) !== KIND_DIR) writeRecord(out, i, layout, scratch, tailWithData);
  }
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
    const tailBytes = layout.inlineTailBytes[i];
    withSource(layout, i, (src, offset, what) => {
      if (length <= SMALL_FILE_BYTES) {
        preadInto(src, batch.take(at, length), offset, what);
        done += length;
        options.onProgress?.(done, totalData);
      } else {
        batch.flush();
        copyRange(src, offset, fd, at, length, what, (n) => {
          done += n;
          options.onProgress?.(done, totalData);
        });
      }
      if (tailBytes > 0 && tailWithData(i)) {
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
  layout: ImageLayout,
  scratch: Uint8Array,
  tailWithData: (i: number) => boolean,
): void {
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
    withSource(
      layout,
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

/** Runs `use` on an open descriptor of inode `i`'s data (closed afterwards when opened here). */
function withSource<T>(
  layout: ImageLayout,
  i: number,
  use: (fd: number, offset: number, what: string) => T,
): T {
  const data = layout.dataOf(i);
  if (!data) throw new FormatError("regular file without a data source");
  if (data.kind === "fd") return use(data.fd, data.offset, "(spooled data)");
  if (data.kind === "tar") throw new FormatError("tar-index data cannot be copied");
  const path = data.kind === "child"
    ? `${data.dir}/${layout.table.nameOf(layout.entryOf[i])}`
    : data.path;
  // The scan's path has no symlink in it (from_dir.ts): one there now, or something else than
  // a regular file, was put there since, and would show bytes the scan never saw (a secret
  // behind a symlink, as root).
  let fd: number;
  try {
    fd = openFileNoSymlinks(path);
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
    closeFd(fd);
  }
}

function changedDuringBuild(path: string, what: string): FormatError {
  return new FormatError(
    `${path} changed while the image was built (${what})`,
    "build from a tree nothing else writes to while the build runs",
  );
}
