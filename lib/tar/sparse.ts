/**
 * GNU sparse files, all four encodings GNU tar writes (GNU tar manual, "Storing Sparse Files"):
 * old GNU ('S' header + extension blocks), and pax 0.0 (repeated GNU.sparse.offset/numbytes
 * records), 0.1 (GNU.sparse.map="off,len,…") and 1.0 (the map as decimal lines at the start of
 * the data area, padded to a block). In every one the data runs are stored back to back.
 */
import { FormatError } from "../errors.ts";
import { type ByteReader, truncated } from "./byte_reader.ts";
import {
  BLOCK_BYTES,
  GNU_EXT_ENTRIES,
  GNU_EXT_IS_EXTENDED,
  parseSparseEntries,
  type SparseSegment,
} from "./header.ts";
import { paxInteger, type PaxRecord } from "./pax.ts";

/** Sparse information from pax records, before the 1.0 in-data map is read. */
export interface PaxSparse {
  version: "0.0" | "0.1" | "1.0";
  realSize: number;
  /** The real member name (GNU tar puts a placeholder in `path` for sparse members). */
  name?: Uint8Array;
  /** 0.0 and 0.1 only; 1.0 reads its map from the data area. */
  segments?: SparseSegment[];
}

const text = (v: Uint8Array) => new TextDecoder().decode(v);

/** Picks GNU.sparse.* records out of a member's pax records; undefined when not sparse. */
export function paxSparse(records: PaxRecord[], offset: number): PaxSparse | undefined {
  let major: string | undefined;
  let minor: string | undefined;
  let realSize: number | undefined;
  let name: Uint8Array | undefined;
  let map: string | undefined;
  const pairs: SparseSegment[] = [];
  let pendingOffset: number | undefined;
  for (const r of records) {
    switch (r.key) {
      case "GNU.sparse.major":
        major = text(r.value);
        break;
      case "GNU.sparse.minor":
        minor = text(r.value);
        break;
      case "GNU.sparse.size":
      case "GNU.sparse.realsize":
        realSize = paxInteger(r, offset);
        break;
      case "GNU.sparse.name":
        name = r.value;
        break;
      case "GNU.sparse.map":
        map = text(r.value);
        break;
      case "GNU.sparse.offset":
        if (pendingOffset !== undefined) throw badMap(offset, "offset without numbytes");
        pendingOffset = paxInteger(r, offset);
        break;
      case "GNU.sparse.numbytes":
        if (pendingOffset === undefined) throw badMap(offset, "numbytes without offset");
        pairs.push({ offset: pendingOffset, length: paxInteger(r, offset) });
        pendingOffset = undefined;
        break;
    }
  }
  if (major === undefined && map === undefined && pairs.length === 0) return undefined;
  if (realSize === undefined) throw badMap(offset, "no GNU.sparse.size/realsize");
  if (major === "1" && minor === "0") return { version: "1.0", realSize, name };
  if (major !== undefined && major !== "0") {
    throw new FormatError(`tar member at byte ${offset}: unsupported GNU sparse ${major}.${minor}`);
  }
  if (map !== undefined) {
    const numbers = map === "" ? [] : map.split(",").map((n) => parseDecimal(n, offset));
    if (numbers.length % 2 !== 0) throw badMap(offset, "odd number of map values");
    const segments: SparseSegment[] = [];
    for (let i = 0; i < numbers.length; i += 2) {
      segments.push({ offset: numbers[i], length: numbers[i + 1] });
    }
    return { version: "0.1", realSize, name, segments };
  }
  if (pendingOffset !== undefined) throw badMap(offset, "offset without numbytes");
  return { version: "0.0", realSize, name, segments: pairs };
}

/** Reads old GNU extension blocks (21 entries each) that follow an 'S' header. */
export async function readGnuSparseExtensions(
  src: ByteReader,
  segments: SparseSegment[],
  maxSegments: number,
): Promise<void> {
  for (;;) {
    const block = await src.readExact(BLOCK_BYTES, "GNU sparse extension header");
    if (block === null) throw truncated("GNU sparse extension header", src.position);
    segments.push(...parseSparseEntries(block, 0, GNU_EXT_ENTRIES));
    if (segments.length > maxSegments) throw tooManySegments(src.position);
    if (block[GNU_EXT_IS_EXTENDED] === 0) return;
  }
}

/**
 * Reads the pax 1.0 map at the start of the data area: a count, then offset/length pairs, one
 * decimal number per line, padded with NULs to a whole block. Returns the map and its size in
 * bytes (whole blocks), which is not file data.
 */
export async function readSparse1Map(
  src: ByteReader,
  maxBytes: number,
  offset: number,
): Promise<{ segments: SparseSegment[]; mapBytes: number }> {
  const numbers: number[] = [];
  let expected = Infinity;
  let digits = "";
  let mapBytes = 0;
  while (numbers.length < expected) {
    if (mapBytes + BLOCK_BYTES > maxBytes) throw tooManySegments(offset);
    const block = await src.readExact(BLOCK_BYTES, "GNU sparse 1.0 map");
    if (block === null) throw truncated("GNU sparse 1.0 map", src.position);
    mapBytes += BLOCK_BYTES;
    for (let i = 0; i < BLOCK_BYTES && numbers.length < expected; i++) {
      const c = block[i];
      if (c === 0x0a) {
        numbers.push(parseDecimal(digits, offset));
        digits = "";
        if (numbers.length === 1) expected = 1 + 2 * numbers[0];
      } else if (c >= 0x30 && c <= 0x39 && digits.length < 16) {
        digits += String.fromCharCode(c);
      } else {
        throw badMap(offset, "bad character in 1.0 map");
      }
    }
  }
  const segments: SparseSegment[] = [];
  for (let i = 1; i < numbers.length; i += 2) {
    segments.push({ offset: numbers[i], length: numbers[i + 1] });
  }
  return { segments, mapBytes };
}

/**
 * Runs must be in file order, not overlap, end within the real size, and their lengths must
 * add up to the stored data; anything else could make a writer emit wrong bytes.
 */
export function checkSparseMap(
  segments: readonly SparseSegment[],
  realSize: number,
  storedSize: number,
  offset: number,
): void {
  let end = 0;
  let stored = 0;
  for (const { offset: start, length } of segments) {
    if (start < end) throw badMap(offset, "runs overlap or are out of order");
    end = start + length;
    if (end > realSize) throw badMap(offset, "run past the real size");
    stored += length;
  }
  if (stored !== storedSize) {
    throw badMap(offset, `runs hold ${stored} bytes but ${storedSize} are stored`);
  }
}

function parseDecimal(s: string, offset: number): number {
  if (!/^[0-9]{1,16}$/.test(s) || !Number.isSafeInteger(Number(s))) {
    throw badMap(offset, `bad number "${s.slice(0, 20)}"`);
  }
  return Number(s);
}

function badMap(offset: number, why: string): FormatError {
  return new FormatError(`tar member at byte ${offset}: bad GNU sparse map (${why})`);
}

function tooManySegments(offset: number): FormatError {
  return new FormatError(
    `tar member at byte ${offset}: GNU sparse map too large`,
    "the map is bounded like pax metadata (1 MiB); this archive is refused as hostile or broken",
  );
}
