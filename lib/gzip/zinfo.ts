/**
 * zinfo: the table of gzip checkpoints written by `mkfs.erofs --gzinfo` (erofs-utils 1.9,
 * "AWS SOCI-compatible v2"). Little-endian, packed: header `u32 count, u64 span`, then `count`
 * checkpoints of `u64 in, u64 out, u8 bits, 32768-byte window` (../shared/docs/formats.md §5).
 *
 * The table (17 bytes per checkpoint) is held in memory; windows stay in the file and are read
 * when a checkpoint is used, so a zinfo of a 100 GB layer costs ~0.5 MB, not 800 MB.
 */
import { FormatError } from "../errors.ts";
import type { Source } from "../source/source.ts";

export const ZINFO_HEADER_BYTES = 12;
export const ZINFO_WINDOW_BYTES = 32768;
export const ZINFO_CHECKPOINT_BYTES = 17 + ZINFO_WINDOW_BYTES;
/**
 * Largest zinfo `index` writes, as large as a mount takes from a registry (tar_index_artifact.ts
 * MAX_META_BYTES) and reads whole to check its digest. Each gzip member costs a checkpoint of
 * 32 KiB, so a layer of tiny members (~20 bytes each) would otherwise make a zinfo ~1,600 times
 * its size: 10 MB of hostile layer, 16 GB of zinfo.
 */
export const MAX_ZINFO_CHECKPOINTS = Math.floor(
  ((1 << 30) - ZINFO_HEADER_BYTES) / ZINFO_CHECKPOINT_BYTES,
);
/** erofs-utils' span (lib/tar.c, no CLI knob). */
export const DEFAULT_SPAN_BYTES = 4 * 1024 * 1024;
/** A gzip member header is at least 10 bytes, so no deflate data starts earlier. */
const MIN_DEFLATE_START = 10;
/**
 * Deflate expands at most 1032:1 (a 258-byte match per 1-bit length code + 1-bit distance
 * code, RFC 1951 §3.2.5); a checkpoint claiming more output than that for its input is a lie.
 */
const MAX_DEFLATE_RATIO = 1032;

export interface ZinfoCheckpoint {
  /** Offset in the gzip blob of the first whole byte of the deflate block. */
  compressedOffset: number;
  /** Offset in the uncompressed stream where the block's output starts. */
  uncompressedOffset: number;
  /** Bits (0..7) at the top of byte `compressedOffset − 1` that belong to the block. */
  bits: number;
}

/** A parsed, validated zinfo whose windows are read on demand from `source`. */
export class Zinfo {
  private constructor(
    readonly spanBytes: number,
    readonly checkpoints: readonly ZinfoCheckpoint[],
    readonly source: Source,
  ) {}

  /**
   * Reads and checks a zinfo against the gzip blob it indexes (`blobBytes` = its size).
   * Throws FormatError naming the first inconsistency; nothing else is checked later.
   */
  static async open(source: Source, blobBytes: number, signal?: AbortSignal): Promise<Zinfo> {
    if (source.size < ZINFO_HEADER_BYTES) {
      throw zinfoError(`${source.size} bytes, shorter than its ${ZINFO_HEADER_BYTES}-byte header`);
    }
    const header = new DataView((await source.read(0, ZINFO_HEADER_BYTES, signal)).slice().buffer);
    const count = header.getUint32(0, true);
    const span = header.getBigUint64(4, true);
    const expected = ZINFO_HEADER_BYTES + count * ZINFO_CHECKPOINT_BYTES;
    if (count === 0 || expected !== source.size) {
      throw zinfoError(
        `${source.size} bytes but its header says ${count} checkpoints (${expected} bytes)`,
        count !== 0 && source.size === expected - ZINFO_CHECKPOINT_BYTES
          ? "a v1 zinfo (implicit first checkpoint) is not supported; rebuild it"
          : undefined,
      );
    }
    const checkpoints: ZinfoCheckpoint[] = [];
    // Stream the file in bounded pieces and keep only each checkpoint's 17-byte head.
    const perRead = 32;
    for (let first = 0; first < count; first += perRead) {
      const n = Math.min(perRead, count - first);
      const start = ZINFO_HEADER_BYTES + first * ZINFO_CHECKPOINT_BYTES;
      const bytes = await source.read(start, n * ZINFO_CHECKPOINT_BYTES, signal);
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      for (let j = 0; j < n; j++) {
        const at = j * ZINFO_CHECKPOINT_BYTES;
        checkpoints.push({
          compressedOffset: safe(view.getBigUint64(at, true), first + j, "in"),
          uncompressedOffset: safe(view.getBigUint64(at + 8, true), first + j, "out"),
          bits: view.getUint8(at + 16),
        });
      }
    }
    validateCheckpoints(checkpoints, blobBytes);
    return new Zinfo(
      span > BigInt(Number.MAX_SAFE_INTEGER) ? 0 : Number(span),
      checkpoints,
      source,
    );
  }

  /** Index of the last checkpoint whose output starts at or before `offset`. */
  checkpointFor(offset: number): number {
    const cps = this.checkpoints;
    let low = 0, high = cps.length - 1;
    while (low < high) {
      const mid = (low + high + 1) >>> 1;
      if (cps[mid].uncompressedOffset <= offset) low = mid;
      else high = mid - 1;
    }
    return low;
  }

  /** The 32 KiB of output before checkpoint `index` (the dictionary to inflate from it). */
  async window(index: number, signal?: AbortSignal): Promise<Uint8Array> {
    const start = ZINFO_HEADER_BYTES + index * ZINFO_CHECKPOINT_BYTES + 17;
    return await this.source.read(start, ZINFO_WINDOW_BYTES, signal);
  }
}

/** The structural rules a zinfo must meet to be usable on a blob of `blobBytes`. */
export function validateCheckpoints(cps: readonly ZinfoCheckpoint[], blobBytes: number): void {
  if (cps[0].uncompressedOffset !== 0) {
    throw zinfoError(`first checkpoint starts at output ${cps[0].uncompressedOffset}, not 0`);
  }
  for (let i = 0; i < cps.length; i++) {
    const { compressedOffset: at, uncompressedOffset: out, bits } = cps[i];
    if (bits > 7) throw zinfoError(`checkpoint ${i} has bits=${bits} (0..7 allowed)`);
    if (at < MIN_DEFLATE_START || at >= blobBytes) {
      throw zinfoError(
        `checkpoint ${i} points at compressed offset ${at}, outside the ${blobBytes}-byte blob`,
        "the zinfo was made for another layer",
      );
    }
    if (i === 0) continue;
    const prev = cps[i - 1];
    if (at <= prev.compressedOffset || out < prev.uncompressedOffset) {
      throw zinfoError(
        `checkpoint ${i} (in ${at}, out ${out}) does not follow checkpoint ${i - 1} ` +
          `(in ${prev.compressedOffset}, out ${prev.uncompressedOffset})`,
      );
    }
    if (out - prev.uncompressedOffset > MAX_DEFLATE_RATIO * (at - prev.compressedOffset + 1)) {
      throw zinfoError(
        `checkpoint ${i} claims ${out - prev.uncompressedOffset} bytes of output from ` +
          `${at - prev.compressedOffset} compressed bytes (deflate expands at most 1032:1)`,
      );
    }
  }
}

/** The 12-byte zinfo header. */
export function encodeZinfoHeader(count: number, spanBytes: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(ZINFO_HEADER_BYTES);
  const view = new DataView(out.buffer);
  view.setUint32(0, count, true);
  view.setBigUint64(4, BigInt(spanBytes), true);
  return out;
}

/** One checkpoint record: in, out, bits, then its 32 KiB window. */
export function encodeCheckpoint(
  cp: ZinfoCheckpoint & { window: Uint8Array },
): Uint8Array<ArrayBuffer> {
  if (cp.window.length !== ZINFO_WINDOW_BYTES) throw new Error("zinfo window must be 32 KiB");
  const out = new Uint8Array(ZINFO_CHECKPOINT_BYTES);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(cp.compressedOffset), true);
  view.setBigUint64(8, BigInt(cp.uncompressedOffset), true);
  view.setUint8(16, cp.bits);
  out.set(cp.window, 17);
  return out;
}

/** Bytes of a zinfo file: header, then each checkpoint with its window. */
export function encodeZinfo(
  spanBytes: number,
  checkpoints: readonly (ZinfoCheckpoint & { window: Uint8Array })[],
): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(ZINFO_HEADER_BYTES + checkpoints.length * ZINFO_CHECKPOINT_BYTES);
  out.set(encodeZinfoHeader(checkpoints.length, spanBytes));
  checkpoints.forEach((cp, i) => {
    out.set(encodeCheckpoint(cp), ZINFO_HEADER_BYTES + i * ZINFO_CHECKPOINT_BYTES);
  });
  return out;
}

function safe(value: bigint, index: number, field: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw zinfoError(`checkpoint ${index} has ${field}=${value}, beyond any real blob`);
  }
  return Number(value);
}

function zinfoError(message: string, hint?: string): FormatError {
  return new FormatError(`bad zinfo: ${message}`, hint ?? "rebuild it with `erofs-oci index`");
}
