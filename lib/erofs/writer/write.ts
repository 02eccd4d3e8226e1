/**
 * Writes a laid-out image: all metadata as one buffer at the start, then each file's data
 * streamed from its source (copy_file_range where possible). Memory is the metadata, not data.
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
import { copyRange, pathBytes, preadInto, pwriteAll } from "./data_copy.ts";
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
  const meta = new Uint8Array(layout.metadataBytes);
  const view = new DataView(meta.buffer);
  for (const entry of layout.shared) meta.set(entry.bytes, entry.offset);

  for (const p of layout.inodes) {
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
      writeChunkIndex(view, p, layout.blockBytes);
    }
    encodeInode(view, p.offset, {
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
    const xattrAt = p.offset + inodeBytes;
    if (p.xattrBody) meta.set(p.xattrBody, xattrAt);
    const tailAt = xattrAt + (p.xattrBody?.length ?? 0);
    const contents = metadataContents(p, bs);
    if (contents) {
      // Directories and symlinks live wholly in the metadata area: full blocks, then the tail.
      const full = p.blocks * bs;
      if (p.blocks > 0) {
        meta.set(contents.subarray(0, Math.min(full, contents.length)), p.blockAddress * bs);
      }
      if (p.inlineTailBytes > 0) meta.set(contents.subarray(full), tailAt);
    } else if (node.kind === "file" && p.inlineTailBytes > 0) {
      const tail = meta.subarray(tailAt, tailAt + p.inlineTailBytes);
      withSource(
        node.data,
        (fd, offset, what) => preadInto(fd, tail, offset + p.sizeBytes - p.inlineTailBytes, what),
      );
    }
  }
  if (layout.tarIndex) {
    encodeDeviceSlot(
      view,
      TAR_INDEX_DEVICE_SLOT * DEVICE_SLOT_BYTES,
      layout.tarIndex.tarBlocks,
      layout.totalBlocks,
    );
  }
  encodeSuperblock(meta, {
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
  pwriteAll(fd, meta, 0);

  const totalData = layout.dataOrder.reduce(
    (n, p) => n + Math.min(p.sizeBytes, p.blocks * bs),
    0,
  );
  let done = 0;
  options.onProgress?.(0, totalData);
  for (const p of layout.dataOrder) {
    const length = Math.min(p.sizeBytes, p.blocks * bs);
    withSource(
      p.node.data,
      (src, offset, what) =>
        copyRange(src, offset, fd, p.blockAddress * bs, length, what, (n) => {
          done += n;
          options.onProgress?.(done, totalData);
        }),
    );
  }
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

/** The one chunk index entry of a tar-index file: {le16 startblk_hi, le16 device 1, le32 lo}. */
function writeChunkIndex(view: DataView, p: PlannedInode, blockBytes: number): void {
  const data = p.node.data;
  if (data?.kind !== "tar") throw new FormatError("tar-index file without a tar offset");
  const block = data.offset / blockBytes;
  if (!Number.isInteger(block) || block > 0xffffffff) {
    throw new FormatError(`tar data offset ${data.offset} cannot be indexed`);
  }
  view.setUint16(p.chunkIndexOffset!, 0, true);
  view.setUint16(p.chunkIndexOffset! + 2, 1, true);
  view.setUint32(p.chunkIndexOffset! + 4, block, true);
}

/** The bytes of a directory or symlink; undefined for other kinds. */
function metadataContents(p: PlannedInode, bs: number): Uint8Array | undefined {
  if (p.node.kind === "symlink") return p.node.target ?? new Uint8Array();
  if (p.node.kind !== "dir") return undefined;
  const entries = p.entries!.map((e) => ({
    name: e.name,
    nid: e.target.nid,
    fileType: fileTypeOf(e.target),
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
  const fd = Number(libc().open(pathBytes(data.path), O_RDONLY | O_CLOEXEC, 0));
  if (fd < 0) throw new SysError("open", errno(), data.path);
  try {
    return use(fd, 0, data.path);
  } finally {
    closeFd(fd);
  }
}
