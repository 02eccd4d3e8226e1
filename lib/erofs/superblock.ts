/**
 * The EROFS superblock: enough of it to refuse a file that is not EROFS before anything is
 * mounted, and to tell what the image needs (block size, extra devices, features).
 * Layout: `struct erofs_super_block` in linux/fs/erofs/erofs_fs.h (all fields little-endian).
 */
import { FormatError } from "../errors.ts";
import { hexOf } from "../text.ts";

/** Byte offset of the superblock in the image (EROFS_SUPER_OFFSET). */
export const EROFS_SUPER_OFFSET = 1024;
/** EROFS_SUPER_MAGIC_V1, le32 at the superblock start. */
export const EROFS_SUPER_MAGIC = 0xe0f5e1e2;
/** The fixed part of the superblock (`sb_extslots` may extend it). */
export const EROFS_SUPER_SIZE = 128;
/** Bytes to read from the start of an image to check it. */
export const EROFS_SUPER_END = EROFS_SUPER_OFFSET + EROFS_SUPER_SIZE;

/** feature_compat bits (EROFS_FEATURE_COMPAT_*). */
const COMPAT_FEATURES: [number, string][] = [
  [0x1, "sb_csum"],
  [0x2, "mtime"],
  [0x4, "xattr_filter"],
  [0x8, "shared_ea_in_metabox"],
  [0x10, "plain_xattr_pfx"],
];

/** feature_incompat bits (EROFS_FEATURE_INCOMPAT_*; some bits carry two names upstream). */
const INCOMPAT_FEATURES: [number, string][] = [
  [0x1, "zero_padding"],
  [0x2, "compr_cfgs/big_pcluster"],
  [0x4, "chunked_file"],
  [0x8, "device_table"],
  [0x10, "ztailpacking"],
  [0x20, "fragments/dedupe"],
  [0x40, "xattr_prefixes"],
  [0x80, "48bit"],
  [0x100, "metabox"],
];
/** Every incompat bit a 6.18 kernel knows; others make it refuse the mount. */
const KNOWN_INCOMPAT = INCOMPAT_FEATURES.reduce((all, [bit]) => all | bit, 0);

export interface ErofsSuperblock {
  /** log2 of the block size (9..16 accepted here; the kernel wants ≤ PAGE_SHIFT). */
  blockSizeBits: number;
  blockSizeBytes: number;
  /** Blocks of the primary device (statfs). */
  blocks: number;
  inodes: bigint;
  /** Nid of the root directory (`rootnid_8b` when the 48bit feature sets it). */
  rootNid: number;
  /** Block of nid 0: inode `nid` is at `metaBlockAddress * blockSizeBytes + nid * 32`. */
  metaBlockAddress: number;
  /** First block of the shared xattr area (0 when there is none). */
  xattrBlockAddress: number;
  buildTime: bigint;
  featureCompat: number;
  featureIncompat: number;
  /** Names of the feature bits set, compat first. */
  features: string[];
  /** Incompat bits this code does not know (a newer mkfs); the kernel may refuse them. */
  unknownIncompat: number;
  /** Devices besides the primary one (blob layers of a tar-index image, …). */
  extraDevices: number;
  uuid: string;
  volumeName: string;
}

/** True when `head` (an image's first bytes) has the EROFS magic where the superblock starts. */
export function hasErofsMagic(head: Uint8Array): boolean {
  if (head.length < EROFS_SUPER_END) return false;
  return new DataView(head.buffer, head.byteOffset).getUint32(EROFS_SUPER_OFFSET, true) ===
    EROFS_SUPER_MAGIC;
}

/**
 * Parses the superblock from the first bytes of an image (at least `EROFS_SUPER_END`).
 * Throws FormatError "not an EROFS image" when the magic is wrong or the file is too short.
 *
 * @example
 * const head = await readHead(file, EROFS_SUPER_END);
 * const sb = checkErofsSuperblock(head); // sb.blockSizeBytes === 4096
 */
export function checkErofsSuperblock(bytes: Uint8Array, what = "image"): ErofsSuperblock {
  if (bytes.length < EROFS_SUPER_END) {
    throw new FormatError(
      `not an EROFS image: ${what} has ${bytes.length} bytes, fewer than a superblock needs`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + EROFS_SUPER_OFFSET, EROFS_SUPER_SIZE);
  const magic = view.getUint32(0, true);
  if (magic !== EROFS_SUPER_MAGIC) {
    throw new FormatError(
      `not an EROFS image: ${what} has magic 0x${hex(magic)} at byte ${EROFS_SUPER_OFFSET}`,
      `EROFS images carry 0x${hex(EROFS_SUPER_MAGIC)} there`,
    );
  }
  const blockSizeBits = view.getUint8(12);
  if (blockSizeBits < 9 || blockSizeBits > 16) {
    throw new FormatError(`bad EROFS superblock in ${what}: block size 2^${blockSizeBits}`);
  }
  const featureCompat = view.getUint32(8, true);
  const featureIncompat = view.getUint32(80, true);
  const features = [
    ...COMPAT_FEATURES.filter(([bit]) => featureCompat & bit).map(([, name]) => name),
    ...INCOMPAT_FEATURES.filter(([bit]) => featureIncompat & bit).map(([, name]) => name),
  ];
  const deviceTable = (featureIncompat & 0x8) !== 0;
  // 48bit images reuse the u16 at 14 as blocks_hi and put the root nid at 112 (when non-zero).
  const rootNid8b = (featureIncompat & 0x80) ? view.getBigUint64(112, true) : 0n;
  return {
    blockSizeBits,
    blockSizeBytes: 2 ** blockSizeBits,
    blocks: view.getUint32(36, true),
    inodes: view.getBigUint64(16, true),
    rootNid: rootNid8b && rootNid8b <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(rootNid8b)
      : view.getUint16(14, true),
    metaBlockAddress: view.getUint32(40, true),
    xattrBlockAddress: view.getUint32(44, true),
    buildTime: view.getBigUint64(24, true),
    featureCompat,
    featureIncompat,
    features,
    unknownIncompat: featureIncompat & ~KNOWN_INCOMPAT,
    extraDevices: deviceTable ? view.getUint16(86, true) : 0,
    uuid: formatUuid(bytes.subarray(EROFS_SUPER_OFFSET + 48, EROFS_SUPER_OFFSET + 64)),
    volumeName: cString(bytes.subarray(EROFS_SUPER_OFFSET + 64, EROFS_SUPER_OFFSET + 80)),
  };
}

function hex(value: number): string {
  return value.toString(16).padStart(8, "0");
}

function formatUuid(bytes: Uint8Array): string {
  const h = hexOf(bytes);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}
