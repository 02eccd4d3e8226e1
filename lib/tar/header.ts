/**
 * One 512-byte tar header block: field layout, numeric fields and checksum.
 *
 * Layouts: POSIX.1-2001 ustar (pax spec, "ustar Interchange Format"), GNU tar's `struct
 * posix_header`/`struct oldgnu_header` (tar.h in the GNU tar manual, "Basic Tar Format"), and
 * v7 (no magic). Only the fields this reader uses are named here.
 */
import { FormatError } from "../errors.ts";

export const BLOCK_BYTES = 512;

// ustar field offsets and lengths (pax spec, "ustar Header Block").
const NAME = [0, 100] as const;
const MODE = [100, 8] as const;
const UID = [108, 8] as const;
const GID = [116, 8] as const;
const SIZE = [124, 12] as const;
const MTIME = [136, 12] as const;
const CHKSUM = [148, 8] as const;
const TYPEFLAG = 156;
const LINKNAME = [157, 100] as const;
const MAGIC = [257, 8] as const; // magic (6) + version (2)
const UNAME = [265, 32] as const;
const GNAME = [297, 32] as const;
const DEVMAJOR = [329, 8] as const;
const DEVMINOR = [337, 8] as const;
const PREFIX = [345, 155] as const;
// Old GNU sparse header (GNU tar manual, "struct oldgnu_header"): 4 in-header entries.
const GNU_SPARSE = 386;
const GNU_SPARSE_ENTRIES = 4;
const GNU_IS_EXTENDED = 482;
const GNU_REALSIZE = [483, 12] as const;
/** An old GNU sparse extension block holds 21 entries and an isextended flag at byte 504. */
export const GNU_EXT_ENTRIES = 21;
export const GNU_EXT_IS_EXTENDED = 504;

/** Which header family the magic field says this is; it decides whether `prefix` exists. */
export type HeaderFormat = "ustar" | "gnu" | "v7";

export interface SparseSegment {
  /** Offset of this data run inside the logical file. */
  offset: number;
  /** Length of the run; the runs are stored back to back in the archive. */
  length: number;
}

/** A decoded header block; strings are still raw bytes (decoding is the reader's choice). */
export interface HeaderBlock {
  format: HeaderFormat;
  typeflag: string;
  /** name, or prefix + "/" + name for ustar. */
  name: Uint8Array;
  linkname: Uint8Array;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeSec: number;
  uname: Uint8Array;
  gname: Uint8Array;
  devMajor: number;
  devMinor: number;
  /** Old GNU sparse ('S'): the in-header map, whether extension blocks follow, real size. */
  gnuSparse?: { segments: SparseSegment[]; isExtended: boolean; realSize: number };
}

const field = (block: Uint8Array, [offset, length]: readonly [number, number]) =>
  block.subarray(offset, offset + length);

/** Bytes up to the first NUL (C string in a fixed-size field). */
export function cString(bytes: Uint8Array): Uint8Array {
  const nul = bytes.indexOf(0);
  return nul < 0 ? bytes : bytes.subarray(0, nul);
}

export function isZeroBlock(block: Uint8Array): boolean {
  for (let i = 0; i < block.length; i++) if (block[i] !== 0) return false;
  return true;
}

/**
 * A numeric field: octal ASCII (NUL/space terminated, leading spaces allowed) or GNU base-256
 * (high bit of the first byte set; 0xff first byte means negative, two's complement).
 */
export function parseNumeric(bytes: Uint8Array, what: string, allowNegative = false): number {
  if (bytes.length > 0 && bytes[0] & 0x80) return parseBase256(bytes, what, allowNegative);
  let i = 0;
  while (i < bytes.length && bytes[i] === 0x20) i++;
  let value = 0;
  for (; i < bytes.length; i++) {
    const c = bytes[i];
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) throw new FormatError(`tar header: bad octal digit in ${what}`);
    value = value * 8 + (c - 0x30);
  }
  if (!Number.isSafeInteger(value)) throw new FormatError(`tar header: ${what} too large`);
  return value;
}

function parseBase256(bytes: Uint8Array, what: string, allowNegative: boolean): number {
  const negative = bytes[0] === 0xff;
  if (negative && !allowNegative) throw new FormatError(`tar header: negative ${what}`);
  let value = 0n;
  for (let i = 0; i < bytes.length; i++) {
    let b = i === 0 ? bytes[0] & 0x7f : bytes[i];
    if (negative) b = (i === 0 ? 0x7f : 0xff) & ~b; // one's complement; +1 below
    value = (value << 8n) | BigInt(b);
  }
  const result = negative ? -(value + 1n) : value;
  if (result > BigInt(Number.MAX_SAFE_INTEGER) || result < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new FormatError(`tar header: ${what} out of range`);
  }
  return Number(result);
}

/**
 * POSIX sums the header as unsigned bytes with the checksum field read as spaces; some old tars
 * summed signed bytes, so either sum is accepted (as GNU tar does).
 */
export function checksumMatches(block: Uint8Array): boolean {
  let stored: number;
  try {
    stored = parseNumeric(field(block, CHKSUM), "checksum");
  } catch {
    return false; // an unreadable checksum field is a mismatch, not a different error
  }
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK_BYTES; i++) {
    const b = i >= CHKSUM[0] && i < CHKSUM[0] + CHKSUM[1] ? 0x20 : block[i];
    unsigned += b;
    signed += b >= 0x80 ? b - 0x100 : b;
  }
  return stored === unsigned || stored === signed;
}

/** True when `block` (a header, or the start of a tar) has the ustar magic (POSIX or GNU). */
export function hasUstarMagic(block: Uint8Array): boolean {
  if (block.length < MAGIC[0] + 5) return false;
  const m = field(block, MAGIC);
  return m[0] === 0x75 && m[1] === 0x73 && m[2] === 0x74 && m[3] === 0x61 && m[4] === 0x72;
}

function headerFormat(block: Uint8Array): HeaderFormat {
  if (!hasUstarMagic(block)) return "v7";
  // "ustar\0" + "00" is POSIX; "ustar " + " \0" is GNU (its prefix bytes hold atime/ctime).
  return field(block, MAGIC)[5] === 0x20 ? "gnu" : "ustar";
}

/** Parses one non-zero header block; a bad checksum is a FormatError. */
export function parseHeaderBlock(block: Uint8Array, offset: number): HeaderBlock {
  if (!checksumMatches(block)) {
    throw new FormatError(
      `tar header at byte ${offset}: checksum mismatch`,
      "the input is not a tar archive, or it is corrupt",
    );
  }
  const format = headerFormat(block);
  let name = cString(field(block, NAME));
  if (format === "ustar") {
    const prefix = cString(field(block, PREFIX));
    if (prefix.length > 0) {
      const joined = new Uint8Array(prefix.length + 1 + name.length);
      joined.set(prefix);
      joined[prefix.length] = 0x2f;
      joined.set(name, prefix.length + 1);
      name = joined;
    }
  }
  const typeflag = String.fromCharCode(block[TYPEFLAG]);
  const header: HeaderBlock = {
    format,
    typeflag,
    name,
    linkname: cString(field(block, LINKNAME)),
    mode: parseNumeric(field(block, MODE), "mode"),
    uid: parseNumeric(field(block, UID), "uid"),
    gid: parseNumeric(field(block, GID), "gid"),
    size: parseNumeric(field(block, SIZE), "size"),
    mtimeSec: parseNumeric(field(block, MTIME), "mtime", true),
    uname: format === "v7" ? new Uint8Array() : cString(field(block, UNAME)),
    gname: format === "v7" ? new Uint8Array() : cString(field(block, GNAME)),
    devMajor: format === "v7" ? 0 : parseNumeric(field(block, DEVMAJOR), "devmajor"),
    devMinor: format === "v7" ? 0 : parseNumeric(field(block, DEVMINOR), "devminor"),
  };
  if (typeflag === "S") {
    header.gnuSparse = {
      segments: parseSparseEntries(block, GNU_SPARSE, GNU_SPARSE_ENTRIES),
      isExtended: block[GNU_IS_EXTENDED] !== 0,
      realSize: parseNumeric(field(block, GNU_REALSIZE), "sparse realsize"),
    };
  }
  return header;
}

/** Reads up to `count` (offset, numbytes) pairs of 12-byte numeric fields; an empty pair ends. */
export function parseSparseEntries(
  block: Uint8Array,
  start: number,
  count: number,
): SparseSegment[] {
  const segments: SparseSegment[] = [];
  for (let i = 0; i < count; i++) {
    const at = start + i * 24;
    if (block[at] === 0) break;
    segments.push({
      offset: parseNumeric(block.subarray(at, at + 12), "sparse offset"),
      length: parseNumeric(block.subarray(at + 12, at + 24), "sparse numbytes"),
    });
  }
  return segments;
}
