/**
 * Writes a laid-out image: the metadata in image order through a fixed window, then each file's
 * data from its source (small files gathered into one buffered write, large ones by
 * copy_file_range). Memory is the layout, not the metadata area or the data.
 */
import { closeFd, errno, libc, O_CLOEXEC, O_RDONLY, SysError, unwrap } from "../../../ffi/libc.ts";
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
import {
  fileTypeOf,
  type ImageLayout,
  type PlannedInode,
  TAR_INDEX_DEVICE_SLOT,
} from "./layout.ts";
import { xattrCount } from "./xattrs.ts";
import { copyRange, pathBytes, preadInto } from "./data_copy.ts";
import { BlockBatch, SMALL_FILE_BYTES } from "./data_batch.ts";
import { MetadataWriter } from "./meta_writer.ts";
import type { FileData } from "./tree.ts";

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
  const isDir = (p: PlannedInode) => p.node.kind === "dir";
  const scratch = new Uint8Array(Math.max(bs, EXTENDED_INODE_BYTES));
  for (const p of layout.inodes) if (isDir(p)) writeRecord(out, p, layout, scratch);
  for (const p of layout.inodes) if (isDir(p)) writeBlocks(out, p, bs);
  for (const p of layout.inodes) if (!isDir(p)) writeRecord(out, p, layout, scratch);
  for (const p of layout.inodes) if (p.node.kind === "symlink") writeBlocks(out, p, bs);
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
    rootNid: layout.root.nid,
    inodes: layout.inodes.length,
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
      inodes: layout.inodes.length,
      dataBytes: 0,
      orderUnmatched: [],
    };
  }

  const totalData = layout.dataOrder.reduce(
    (n, p) => n + Math.min(p.sizeBytes, p.blocks * bs),
    0,
  );
  let done = 0;
  options.onProgress?.(0, totalData);
  const batch = new BlockBatch(fd, bs);
  for (const p of layout.dataOrder) {
    const length = Math.min(p.sizeBytes, p.blocks * bs);
    withSource(p.node.data, (src, offset, what) => {
      if (length <= SMALL_FILE_BYTES) {
        preadInto(src, batch.take(p.blockAddress * bs, length), offset, what);
        done += length;
        options.onProgress?.(done, totalData);
      } else {
        batch.flush();
        copyRange(src, offset, fd, p.blockAddress * bs, length, what, (n) => {
          done += n;
          options.onProgress?.(done, totalData);
        });
      }
    });
  }
  batch.flush();
  const sizeBytes = layout.totalBlocks * bs;
  unwrap(libc().ftruncate(fd, BigInt(sizeBytes)), "ftruncate", "(image)");
  return {
    sizeBytes,
    metadataBytes: layout.metadataBytes,
    inodes: layout.inodes.length,
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
  p: PlannedInode,
  layout: ImageLayout,
  scratch: Uint8Array,
): void {
  const node = p.node;
  const inodeBytes = p.extended ? EXTENDED_INODE_BYTES : COMPACT_INODE_BYTES;
  let u = p.blockAddress;
  if (node.kind === "chardev" || node.kind === "blockdev") {
    u = encodeRdev(node.rdevMajor, node.rdevMinor);
  } else if (node.kind === "fifo" || node.kind === "socket") u = 0;
  let dataLayout = p.inlineTailBytes > 0 ? DATALAYOUT_FLAT_INLINE : DATALAYOUT_FLAT_PLAIN;
  if (p.chunkBits !== undefined) {
    dataLayout = DATALAYOUT_CHUNK_BASED;
    u = chunkFormat(p.chunkBits, layout.blockSizeBits);
  }
  scratch.fill(0, 0, inodeBytes);
  encodeInode(scratchView(scratch), 0, {
    extended: p.extended,
    dataLayout,
    xattrCount: xattrCount(p.xattrBody?.length ?? 0),
    mode: MODE_TYPE[node.kind] | (node.mode & 0o7777),
    nlink: p.nlink,
    sizeBytes: p.sizeBytes,
    u,
    ino: p.ino,
    uid: node.uid,
    gid: node.gid,
    mtimeSec: node.mtimeSec,
    mtimeNsec: node.mtimeNsec,
  });
  out.write(p.offset, scratch.subarray(0, inodeBytes));
  const xattrAt = p.offset + inodeBytes;
  if (p.xattrBody) out.write(xattrAt, p.xattrBody);
  if (p.chunkBits !== undefined) out.write(p.chunkIndexOffset!, chunkIndex(p, layout.blockBytes));
  if (p.inlineTailBytes === 0) return;
  const tailAt = xattrAt + (p.xattrBody?.length ?? 0);
  const contents = metadataContents(p, layout.blockBytes);
  if (contents) {
    out.write(tailAt, contents.subarray(p.blocks * layout.blockBytes));
  } else if (node.kind === "file") {
    const tail = scratch.subarray(0, p.inlineTailBytes);
    withSource(
      node.data,
      (fd, offset, what) => preadInto(fd, tail, offset + p.sizeBytes - p.inlineTailBytes, what),
    );
    out.write(tailAt, tail);
  }
}

const views = new WeakMap<Uint8Array, DataView>();
/** One DataView per scratch buffer (a view per record was 100,000 objects of garbage). */
function scratchView(scratch: Uint8Array): DataView {
  let view = views.get(scratch);
  if (!view) views.set(scratch, view = new DataView(scratch.buffer));
  return view;
}

/** The full blocks of a directory or symlink (they live in the metadata area). */
function writeBlocks(out: MetadataWriter, p: PlannedInode, bs: number): void {
  if (p.blocks === 0) return;
  const contents = metadataContents(p, bs)!;
  out.write(p.blockAddress * bs, contents.subarray(0, Math.min(p.blocks * bs, contents.length)));
}

/** The one chunk index entry of a tar-index file: {le16 startblk_hi, le16 device 1, le32 lo}. */
function chunkIndex(p: PlannedInode, blockBytes: number): Uint8Array {
  const data = p.node.data;
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
function metadataContents(p: PlannedInode, bs: number): Uint8Array | undefined {
  if (p.node.kind === "symlink") return p.node.target ?? new Uint8Array();
  if (p.node.kind !== "dir") return undefined;
  const targets = p.targets!;
  const entries = p.names!.map((name, i) => ({
    name,
    nid: targets[i].nid,
    fileType: fileTypeOf(targets[i]),
  }));
  return encodeDirectory(entries, p.perBlock!, p.sizeBytes, bs);
}

function withSource<T>(
  data: FileData | undefined,
  use: (fd: number, offset: number, what: string) => T,
): T {
  if (!data) throw new FormatError("regular file without a data source");
  if (data.kind === "fd") return use(data.fd, data.offset, "(spooled data)");
  if (data.kind === "tar") throw new FormatError("tar-index data cannot be copied");
  const path = data.kind === "child" ? `${data.dir}/${data.name}` : data.path;
  const fd = Number(libc().open(pathBytes(path), O_RDONLY | O_CLOEXEC, 0));
  if (fd < 0) throw new SysError("open", errno(), path);
  try {
    return use(fd, 0, path);
  } finally {
    closeFd(fd);
  }
}
