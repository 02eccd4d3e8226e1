/**
 * EROFS inodes and directory blocks as the metadata walk reads them: where an inode's metadata
 * and directory data lie, and the entries of one directory block. Pure functions over bytes;
 * every field is hostile, so results are checked by the caller against the image size.
 * Layout: linux/fs/erofs/erofs_fs.h (`erofs_inode_compact`, `erofs_inode_extended`,
 * `erofs_dirent`), checked against ../shared/fixtures/inspect_erofs.py.
 */

/** Inode slots are 32 bytes (EROFS_ISLOTBITS = 5). */
export const INODE_SLOT_BYTES = 32;
export const COMPACT_INODE_BYTES = 32;
export const EXTENDED_INODE_BYTES = 64;
/** sizeof(struct erofs_xattr_ibody_header); each further xattr slot is 4 bytes. */
export const XATTR_IBODY_HEADER_BYTES = 12;
const XATTR_ENTRY_SLOT_BYTES = 4;
/** sizeof(struct erofs_dirent): le64 nid, le16 nameoff, u8 file_type, u8 reserved. */
const DIRENT_BYTES = 12;
/** i_format datalayouts (EROFS_INODE_*). */
export const FLAT_PLAIN = 0;
export const FLAT_INLINE = 2;
export const CHUNK_BASED = 4;
/** i_u of a chunk-based inode: chunk bits mask and "has 8-byte chunk indexes". */
export const CHUNK_FORMAT_BLKBITS_MASK = 0x1f;
export const CHUNK_FORMAT_INDEXES = 0x20;
export const CHUNK_INDEX_BYTES = 8;
const CHUNK_BLKADDR_BYTES = 4;
/** erofs_dirent.file_type of a directory (EROFS_FT_DIR). */
export const FT_DIR = 2;
/**
 * Nids with bit 63 live in the metabox inode (EROFS_DIRENT_NID_METABOX_BIT): not followed, nor
 * are nids beyond 2^53 - 1. Both have a high 32-bit half of at least 2^21 (bit 63 sets 2^31).
 */
const NID_SAFE_HIGH_LIMIT = 2 ** 21;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
/** feature_incompat 48bit: i_u plus the u16 at 6 (startblk_hi) form the block address. */
export const INCOMPAT_48BIT = 0x80;

export interface InodeInfo {
  offset: number;
  isDir: boolean;
  layout: number;
  size: number;
  rawBlockAddress: number;
  /** Byte just past the inode and its inline xattrs. */
  bodyEnd: number;
}

export interface Dirent {
  nid: number;
  /** Up to the first NUL; decoded only by callers that need text. */
  name: Uint8Array;
  fileType: number;
}

/**
 * The inode at `offset`, read through `bytesAt` (undefined when those bytes are not held).
 * Undefined too when its size is beyond 2^53.
 */
export function parseInode(
  bytesAt: (offset: number, length: number) => Uint8Array | undefined,
  offset: number,
  is48bit: boolean,
): InodeInfo | undefined {
  const head = bytesAt(offset, COMPACT_INODE_BYTES);
  if (!head) return undefined;
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const format = view.getUint16(0, true);
  const extended = (format & 1) === 1;
  const xattrCount = view.getUint16(2, true);
  const mode = view.getUint16(4, true);
  const startHi = view.getUint16(6, true);
  let size = view.getUint32(8, true);
  const iu = view.getUint32(16, true);
  let inodeBytes = COMPACT_INODE_BYTES;
  if (extended) {
    const ext = bytesAt(offset, EXTENDED_INODE_BYTES);
    if (!ext) return undefined;
    const sizeBig = new DataView(ext.buffer, ext.byteOffset, ext.byteLength).getBigUint64(8, true);
    if (sizeBig > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
    size = Number(sizeBig);
    inodeBytes = EXTENDED_INODE_BYTES;
  }
  const xattrBytes = xattrCount
    ? XATTR_IBODY_HEADER_BYTES + (xattrCount - 1) * XATTR_ENTRY_SLOT_BYTES
    : 0;
  return {
    offset,
    isDir: (mode & S_IFMT) === S_IFDIR,
    layout: (format >> 1) & 7,
    size,
    rawBlockAddress: is48bit ? iu + startHi * 2 ** 32 : iu,
    bodyEnd: offset + inodeBytes + xattrBytes,
  };
}

/**
 * Byte spans past the 64-byte header that the kernel reads for this inode: xattrs, inline
 * tail or chunk indexes (one span from the inode on), and for a directory its data blocks.
 * Spans may be absurd (hostile sizes): the caller bounds them.
 */
export function extentSpans(
  inode: InodeInfo,
  blockBytes: number,
): { offset: number; length: number }[] {
  const bs = blockBytes;
  let end = inode.bodyEnd;
  const spans: { offset: number; length: number }[] = [];
  if (inode.layout === FLAT_INLINE) {
    const blocks = Math.ceil(inode.size / bs);
    end += inode.size - Math.max(0, blocks - 1) * bs;
    if (inode.isDir && blocks > 1) {
      spans.push({ offset: inode.rawBlockAddress * bs, length: (blocks - 1) * bs });
    }
  } else if (inode.layout === FLAT_PLAIN) {
    if (inode.isDir && inode.size > 0) {
      spans.push({ offset: inode.rawBlockAddress * bs, length: inode.size });
    }
  } else if (inode.layout === CHUNK_BASED && !inode.isDir) {
    const chunkFormat = inode.rawBlockAddress & 0xffff;
    const chunkBytes = bs * 2 ** (chunkFormat & CHUNK_FORMAT_BLKBITS_MASK);
    const chunks = Math.ceil(inode.size / chunkBytes);
    if (chunkFormat & CHUNK_FORMAT_INDEXES) {
      end = Math.ceil(end / CHUNK_INDEX_BYTES) * CHUNK_INDEX_BYTES + chunks * CHUNK_INDEX_BYTES;
    } else {
      end += chunks * CHUNK_BLKADDR_BYTES;
    }
  }
  spans.push({ offset: inode.offset, length: end - inode.offset });
  return spans;
}

/**
 * The entries of one directory block, in order. "bad" ends the directory (a broken block:
 * nothing after it can be trusted); "unfollowed" is an entry whose nid this walk cannot
 * follow (metabox, beyond 2^53).
 */
export function* direntsOfBlock(block: Uint8Array): Generator<Dirent | "bad" | "unfollowed"> {
  const length = block.length;
  if (length < DIRENT_BYTES) return yield "bad";
  const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
  const firstNameOffset = view.getUint16(8, true);
  if (
    firstNameOffset < DIRENT_BYTES || firstNameOffset > length || firstNameOffset % DIRENT_BYTES
  ) return yield "bad";
  const count = firstNameOffset / DIRENT_BYTES;
  for (let k = 0; k < count; k++) {
    // The le64 nid as two halves: no BigInt per entry (the walk scans every dirent, and under
    // emulation each allocation counts).
    const nidLow = view.getUint32(k * DIRENT_BYTES, true);
    const nidHigh = view.getUint32(k * DIRENT_BYTES + 4, true);
    const nameStart = view.getUint16(k * DIRENT_BYTES + 8, true);
    const nameEnd = k + 1 < count ? view.getUint16((k + 1) * DIRENT_BYTES + 8, true) : length;
    if (nameStart > nameEnd || nameEnd > length) return yield "bad";
    // Bit 63 (metabox) is bit 31 of the high half; above 2^53 - 1 the high half is >= 2^21.
    if (nidHigh >= NID_SAFE_HIGH_LIMIT) {
      yield "unfollowed";
      continue;
    }
    let name = block.subarray(nameStart, nameEnd);
    const nul = name.indexOf(0);
    if (nul >= 0) name = name.subarray(0, nul);
    yield {
      nid: nidHigh * 2 ** 32 + nidLow,
      name,
      fileType: view.getUint8(k * DIRENT_BYTES + 10),
    };
  }
}
