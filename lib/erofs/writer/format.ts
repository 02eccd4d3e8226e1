/**
 * On-disk records the writer emits, from linux/fs/erofs/erofs_fs.h (all little-endian):
 * `erofs_super_block`, `erofs_inode_compact` (32 B), `erofs_inode_extended` (64 B),
 * `erofs_dirent` (12 B). Uncompressed layouts only.
 */
import { crc32cRaw } from "./crc32c.ts";
import type { NodeKind } from "./tree.ts";
import {
  EROFS_SUPER_MAGIC as EROFS_SUPER_MAGIC_V1,
  EROFS_SUPER_OFFSET,
  EROFS_SUPER_SIZE as SUPERBLOCK_BYTES,
} from "../superblock.ts";
import { COMPACT_INODE_BYTES, EXTENDED_INODE_BYTES, INODE_SLOT_BYTES } from "../inode_layout.ts";

// The format's constants have one definition, the reader's; the writer uses the same.
export {
  COMPACT_INODE_BYTES,
  EROFS_SUPER_MAGIC_V1,
  EROFS_SUPER_OFFSET,
  EXTENDED_INODE_BYTES,
  INODE_SLOT_BYTES,
  SUPERBLOCK_BYTES,
};
export const DIRENT_BYTES = 12;
/** i_format bits: version in bit 0, data layout in bits 1..3. */
export const INODE_LAYOUT_EXTENDED = 1;
export const DATALAYOUT_FLAT_PLAIN = 0;
export const DATALAYOUT_FLAT_INLINE = 2;
export const DATALAYOUT_CHUNK_BASED = 4;
export const FEATURE_COMPAT_SB_CHKSUM = 0x1;
export const FEATURE_INCOMPAT_CHUNKED_FILE = 0x4;
export const FEATURE_INCOMPAT_DEVICE_TABLE = 0x8;

/** erofs_dirent.file_type (EROFS_FT_*). */
export const FILE_TYPE: Record<NodeKind, number> = {
  file: 1,
  dir: 2,
  chardev: 3,
  blockdev: 4,
  fifo: 5,
  socket: 6,
  symlink: 7,
};

/** S_IF* type bits of i_mode. */
export const MODE_TYPE: Record<NodeKind, number> = {
  file: 0o100000,
  dir: 0o040000,
  chardev: 0o020000,
  blockdev: 0o060000,
  fifo: 0o010000,
  socket: 0o140000,
  symlink: 0o120000,
};

export interface InodeFields {
  extended: boolean;
  dataLayout: number;
  xattrCount: number;
  mode: number;
  nlink: number;
  sizeBytes: number;
  /** i_u: start block, rdev, or chunk format. */
  u: number;
  ino: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
}

/** Writes an inode at `view` offset `at` (the caller zeroed the bytes). */
export function encodeInode(view: DataView, at: number, f: InodeFields): void {
  view.setUint16(at, (f.extended ? INODE_LAYOUT_EXTENDED : 0) | (f.dataLayout << 1), true);
  view.setUint16(at + 2, f.xattrCount, true);
  view.setUint16(at + 4, f.mode, true);
  if (f.extended) {
    view.setBigUint64(at + 8, BigInt(f.sizeBytes), true);
    view.setUint32(at + 16, f.u >>> 0, true);
    view.setUint32(at + 20, f.ino >>> 0, true);
    view.setUint32(at + 24, f.uid >>> 0, true);
    view.setUint32(at + 28, f.gid >>> 0, true);
    view.setBigInt64(at + 32, BigInt(f.mtimeSec), true);
    view.setUint32(at + 40, f.mtimeNsec, true);
    view.setUint32(at + 44, f.nlink, true);
  } else {
    // Compact inodes take their time from the superblock: only used when they match it.
    view.setUint16(at + 6, f.nlink, true);
    view.setUint32(at + 8, f.sizeBytes, true);
    view.setUint32(at + 16, f.u >>> 0, true);
    view.setUint32(at + 20, f.ino >>> 0, true);
    view.setUint16(at + 24, f.uid, true);
    view.setUint16(at + 26, f.gid, true);
  }
}

/** new_encode_dev(): the rdev encoding of i_u for device inodes. */
export function encodeRdev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

export interface SuperblockFields {
  blockSizeBits: number;
  rootNid: number;
  inodes: number;
  buildTimeSec: number;
  buildTimeNsec: number;
  blocks: number;
  metaBlockAddress: number;
  xattrBlockAddress: number;
  uuid: Uint8Array;
  volumeName?: string;
  featureIncompat?: number;
  extraDevices?: number;
  /** Byte offset of the device table / 128 (`devt_slotoff`). */
  deviceTableSlotOffset?: number;
}

/** Device table slots are 128 bytes (`erofs_deviceslot`): tag[64], le32 blocks, le32 uniaddr. */
export const DEVICE_SLOT_BYTES = 128;

/**
 * Fills the superblock into `head` (the image's first bytes, at least up to the end of the
 * checksummed range) and stores its checksum: crc32c(~0) over the block size minus 1024 bytes
 * from the superblock on (the whole block when blocks are 1 KiB or smaller), computed with
 * the checksum field zero.
 */
export function encodeSuperblock(head: Uint8Array, f: SuperblockFields): void {
  const block0 = head;
  const view = new DataView(block0.buffer, block0.byteOffset, block0.byteLength);
  const at = EROFS_SUPER_OFFSET;
  view.setUint32(at, EROFS_SUPER_MAGIC_V1, true);
  view.setUint32(at + 4, 0, true);
  view.setUint32(at + 8, FEATURE_COMPAT_SB_CHKSUM, true);
  view.setUint8(at + 12, f.blockSizeBits);
  view.setUint16(at + 14, f.rootNid, true);
  view.setBigUint64(at + 16, BigInt(f.inodes), true);
  view.setBigUint64(at + 24, BigInt(f.buildTimeSec), true);
  view.setUint32(at + 32, f.buildTimeNsec, true);
  view.setUint32(at + 36, f.blocks, true);
  view.setUint32(at + 40, f.metaBlockAddress, true);
  view.setUint32(at + 44, f.xattrBlockAddress, true);
  block0.set(f.uuid.subarray(0, 16), at + 48);
  const name = new TextEncoder().encode(f.volumeName ?? "").subarray(0, 16);
  block0.set(name, at + 64);
  view.setUint32(at + 80, f.featureIncompat ?? 0, true);
  view.setUint16(at + 86, f.extraDevices ?? 0, true);
  view.setUint16(at + 88, f.deviceTableSlotOffset ?? 0, true);
  const blockBytes = 1 << f.blockSizeBits;
  const length = blockBytes > EROFS_SUPER_OFFSET ? blockBytes - EROFS_SUPER_OFFSET : blockBytes;
  const crc = crc32cRaw(0xffffffff, block0.subarray(at, at + length));
  view.setUint32(at + 4, crc, true);
}

/** Parses "xxxxxxxx-xxxx-…" (or 32 hex digits) into 16 bytes; undefined when malformed. */
export function parseUuid(text: string): Uint8Array | undefined {
  const hex = text.replaceAll("-", "");
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) return undefined;
  return Uint8Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16));
}

/** A random version-4 UUID. */
export function randomUuid(): Uint8Array {
  return parseUuid(crypto.randomUUID())!;
}

/** One extra device: its size in blocks and where it starts in a flat [image][device] view. */
export function encodeDeviceSlot(
  view: DataView,
  at: number,
  blocks: number,
  mappedBlockAddress: number,
): void {
  view.setUint32(at + 64, blocks, true);
  view.setUint32(at + 68, mappedBlockAddress, true);
}

/** i_u of a chunk-based inode with 8-byte chunk indexes (EROFS_CHUNK_FORMAT_INDEXES). */
export function chunkFormat(chunkBits: number, blockSizeBits: number): number {
  return 0x20 | (chunkBits - blockSizeBits);
}
