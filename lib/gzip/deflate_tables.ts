/**
 * Deflate's static tables and canonical Huffman decoding tables (RFC 1951 §3.2.2, §3.2.5-7),
 * for the TypeScript inflater.
 */
import { FormatError } from "../errors.ts";

// RFC 1951 §3.2.5: base lengths/distances and extra bits per code.
export const LENGTH_BASE = [
  3,
  4,
  5,
  6,
  7,
  8,
  9,
  10,
  11,
  13,
  15,
  17,
  19,
  23,
  27,
  31,
  35,
  43,
  51,
  59,
  67,
  83,
  99,
  115,
  131,
  163,
  195,
  227,
  258,
];
export const LENGTH_EXTRA = [
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  1,
  1,
  1,
  1,
  2,
  2,
  2,
  2,
  3,
  3,
  3,
  3,
  4,
  4,
  4,
  4,
  5,
  5,
  5,
  5,
  0,
];
export const DIST_BASE = [
  1,
  2,
  3,
  4,
  5,
  7,
  9,
  13,
  17,
  25,
  33,
  49,
  65,
  97,
  129,
  193,
  257,
  385,
  513,
  769,
  1025,
  1537,
  2049,
  3073,
  4097,
  6145,
  8193,
  12289,
  16385,
  24577,
];
export const DIST_EXTRA = [
  0,
  0,
  0,
  0,
  1,
  1,
  2,
  2,
  3,
  3,
  4,
  4,
  5,
  5,
  6,
  6,
  7,
  7,
  8,
  8,
  9,
  9,
  10,
  10,
  11,
  11,
  12,
  12,
  13,
  13,
];
// §3.2.7: order of the code length code lengths.
export const CLEN_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/** A canonical Huffman code as a direct lookup table: entry = symbol << 4 | length. */
export interface Table {
  entries: Int32Array;
  bits: number;
}

export function buildTable(lengths: ArrayLike<number>, count: number): Table {
  let maxBits = 0;
  const blCount = new Int32Array(16);
  for (let i = 0; i < count; i++) {
    blCount[lengths[i]]++;
    if (lengths[i] > maxBits) maxBits = lengths[i];
  }
  blCount[0] = 0;
  const nextCode = new Int32Array(16);
  let code = 0, left = 1;
  for (let bits = 1; bits <= 15; bits++) {
    left = (left << 1) - blCount[bits];
    if (left < 0) throw new FormatError("corrupt deflate data: over-subscribed code lengths");
    code = (code + blCount[bits - 1]) << 1;
    nextCode[bits] = code;
  }
  const size = 1 << Math.max(maxBits, 1);
  const entries = new Int32Array(size).fill(-1);
  for (let symbol = 0; symbol < count; symbol++) {
    const len = lengths[symbol];
    if (len === 0) continue;
    let c = nextCode[len]++, reversed = 0;
    for (let i = 0; i < len; i++) {
      reversed = (reversed << 1) | (c & 1);
      c >>= 1;
    }
    for (let at = reversed; at < size; at += 1 << len) entries[at] = (symbol << 4) | len;
  }
  return { entries, bits: Math.max(maxBits, 1) };
}

let fixed: [Table, Table] | undefined;
export function fixedTables(): [Table, Table] {
  if (!fixed) {
    const lit = new Uint8Array(288);
    lit.fill(8, 0, 144).fill(9, 144, 256).fill(7, 256, 280).fill(8, 280, 288);
    fixed = [buildTable(lit, 288), buildTable(new Uint8Array(30).fill(5), 30)];
  }
  return fixed;
}
