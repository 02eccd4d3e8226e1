/**
 * zinfo: the table of gzip checkpoints written by `mkfs.erofs --gzinfo` (erofs-utils 1.9,
 * "AWS SOCI-compatible v2"). Little-endian, packed: header `u32 count, u64 span`, then `count`
 * checkpoints of `u64 in, u64 out, u8 bits, 32768-byte window` (../shared/docs/formats.md §5).
 *
 * The table (17 bytes per checkpoint) is held in memory; windows stay in the file and are read
 * when a checkpoint is used, so a zinfo of a 100 GB layer costs ~0.5 MB, not 800 MB.
 */
import { FormatError } from "../errors.ts";
import { readSourceInto, type Source } from "../source/source.ts";
import { createHash } from "../node_builtins.ts";
import { crc32 } from "../../ffi/zlib.ts";

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
/**
 * Most checkpoints a gzip stream of `compressedBytes` may have: one per span and one per
 * member start, 32 KiB each on disk (windows are read from the file when used, not held).
 * Members are the producer's choice: eStargz starts one per file (a 1.9 MB layer of 3,000
 * small files: 98 MB of zinfo), and a hostile layer of ~20-byte members (30,000 in 600 KB)
 * made a 946 MB zinfo. Allowed: 2,048, plus one per 512 compressed bytes (a zinfo of at most
 * 64 MiB plus 64 times the layer).
 */
export function maxCheckpointsFor(compressedBytes: number): number {
  return Math.min(MAX_ZINFO_CHECKPOINTS, 2048 + Math.floor(compressedBytes / 512));
}

/** What to do about a layer of more gzip members than maxCheckpointsFor allows. */
export const TOO_MANY_MEMBERS_HINT = "every gzip member costs a 32 KiB checkpoint: mount the " +
  "image converted (`erofs-oci convert IMAGE DEST`), or recompress the layer as one member";

/** erofs-utils' span (lib/tar.c, no CLI knob). */
export const DEFAULT_SPAN_BYTES = 4 * 1024 * 1024;
/** Largest `erofs-oci index --span`: its zinfos must stay within MAX_CHECKPOINT_GAP_BYTES. */
export const MAX_SPAN_BYTES = 16 * 1024 * 1024;
/**
 * Most uncompressed bytes a zinfo may leave between consecutive checkpoints, and from the last
 * one to the end of the stream: a read inflates from the checkpoint before it, so this bounds
 * the work of any read (a hostile zinfo with one checkpoint made every 4 KiB read of a 1 GB
 * layer inflate up to 1 GB).
 *
 * Producers checkpoint at the first deflate block boundary after `span` bytes (and at every
 * member start), so their gap is at most span + one block's output. zlib (memLevel 9) and GNU
 * gzip end a block after at most 32,767 symbols, 32,767 × 258 = 8,453,886 bytes on runs of
 * zeros. Measured 2026-12-02 on 100 MB of zeros and 124 MB of `seq` output, gzip -1/-6/-9 and
 * Python zlib 1.2.13: mkfs.erofs 1.9.3 --gzinfo and `erofs-oci index` made the same
 * checkpoints, largest gap 8,453,886 (zeros; 4.2-4.4 MB on text), last gap ≤ 7.1 MB. Worst
 * case at the 4 MiB span 12.6 MB, at MAX_SPAN_BYTES 25.2 MB: 64 MiB is 5× and 2.5× that.
 */
export const MAX_CHECKPOINT_GAP_BYTES = 64 * 1024 * 1024;
/** A gzip member header is at least 10 bytes, so no deflate data starts earlier. */
const MIN_DEFLATE_START = 10;
/**
 * Deflate expands at most 1032:1 (a 258-byte match per 1-bit length code + 1-bit distance
 * code, RFC 1951 §3.2.5); a checkpoint claiming more output than that for its input is a lie.
 */
const MAX_DEFLATE_RATIO = 1032;

/** What Zinfo.open / checkZinfoBytes check beyond the structure. */
export interface ZinfoCheckOptions {
  /** Names the zinfo (file, layer) in errors. */
  name?: string;
  /**
   * Uncompressed bytes of the stream (the tar) when known: the gap from the last checkpoint to
   * it is checked too. Unknown, the reader bounds it per read (GzipRandomAccess).
   */
  streamBytes?: number;
}

export interface ZinfoCheckpoint {
  /** Offset in the gzip blob of the first whole byte of the deflate block. */
  compressedOffset: number;
  /** Offset in the uncompressed stream where the block's output starts. */
  uncompressedOffset: number;
  /** Bits (0..7) at the top of byte `compressedOffset − 1` that belong to the block. */
  bits: number;
}

/**
 * A parsed, validated zinfo whose windows are read on demand from `source`, each checked
 * against the CRC-32 it had when the zinfo was opened: a file changed in place since (a `cp`
 * over a `--zinfo` file of a mount) fails the reads that need it instead of inflating other
 * bytes than were mounted.
 */
export class Zinfo {
  private constructor(
    readonly spanBytes: number,
    readonly checkpoints: readonly ZinfoCheckpoint[],
    readonly source: Source,
    /** sha256 of the whole file as opened (`sha256:…`). */
    readonly digest: string,
    readonly name: string | undefined,
    readonly windowCrcs: Uint32Array,
  ) {}

  /**
   * Reads and checks a zinfo against the gzip blob it indexes (`blobBytes` = its size).
   * Throws FormatError naming the first inconsistency; nothing else is checked later.
   */
  static async open(
    source: Source,
    blobBytes: number,
    signal?: AbortSignal,
    check: ZinfoCheckOptions = {},
  ): Promise<Zinfo> {
    const name = check.name;
    if (source.size < ZINFO_HEADER_BYTES) {
      throw zinfoError(
        `${source.size} bytes, shorter than its ${ZINFO_HEADER_BYTES}-byte header`,
        undefined,
        name,
      );
    }
    const headerBytes = (await source.read(0, ZINFO_HEADER_BYTES, signal)).slice();
    const whole = createHash("sha256").update(headerBytes);
    const header = new DataView(headerBytes.buffer);
    const count = header.getUint32(0, true);
    const span = header.getBigUint64(4, true);
    checkZinfoSize(count, source.size, name);
    const checkpoints: ZinfoCheckpoint[] = [];
    const windowCrcs = new Uint32Array(count);
    // Stream the file in bounded pieces through one buffer and keep only each checkpoint's
    // 17-byte head.
    const perRead = 32;
    const buffer = new Uint8Array(Math.min(count, perRead) * ZINFO_CHECKPOINT_BYTES);
    for (let first = 0; first < count; first += perRead) {
      const n = Math.min(perRead, count - first);
      const start = ZINFO_HEADER_BYTES + first * ZINFO_CHECKPOINT_BYTES;
      const bytes = buffer.subarray(0, n * ZINFO_CHECKPOINT_BYTES);
      await readSourceInto(source, start, bytes, signal);
      whole.update(bytes);
      for (let j = 0; j < n; j++) {
        checkpoints.push(readCheckpoint(bytes, j * ZINFO_CHECKPOINT_BYTES, first + j, name));
        const window = j * ZINFO_CHECKPOINT_BYTES + 17;
        windowCrcs[first + j] = crc32(0, bytes.subarray(window, window + ZINFO_WINDOW_BYTES));
      }
    }
    validateCheckpoints(checkpoints, blobBytes, check);
    return new Zinfo(
      span > BigInt(Number.MAX_SAFE_INTEGER) ? 0 : Number(span),
      checkpoints,
      source,
      `sha256:${whole.digest("hex")}`,
      name,
      windowCrcs,
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

  /** Closes its source (an open file) when it has a close(). */
  close(): void {
    (this.source as { close?(): void }).close?.();
  }

  /** The 32 KiB of output before checkpoint `index` (the dictionary to inflate from it). */
  async window(index: number, signal?: AbortSignal): Promise<Uint8Array> {
    const start = ZINFO_HEADER_BYTES + index * ZINFO_CHECKPOINT_BYTES + 17;
    const window = await this.source.read(start, ZINFO_WINDOW_BYTES, signal);
    if (crc32(0, window as Uint8Array<ArrayBuffer>) !== this.windowCrcs[index]) {
      throw new FormatError(
        `zinfo${this.name ? ` ${this.name}` : ""}: the window of checkpoint ${index} changed ` +
          "since it was opened",
        "a mounted index's files must not be changed: unmount it and mount again",
      );
    }
    return window;
  }
}

/**
 * The same checks as Zinfo.open on a zinfo held in memory (e.g. before a mount, with the
 * index record's tar size as `streamBytes`), without keeping anything.
 */
export function checkZinfoBytes(
  bytes: Uint8Array,
  blobBytes: number,
  check: ZinfoCheckOptions = {},
): void {
  if (bytes.length < ZINFO_HEADER_BYTES) {
    throw zinfoError(
      `${bytes.length} bytes, shorter than its ${ZINFO_HEADER_BYTES}-byte header`,
      undefined,
      check.name,
    );
  }
  const count = new DataView(bytes.buffer, bytes.byteOffset, ZINFO_HEADER_BYTES).getUint32(0, true);
  checkZinfoSize(count, bytes.length, check.name);
  const checkpoints: ZinfoCheckpoint[] = [];
  for (let i = 0; i < count; i++) {
    checkpoints.push(
      readCheckpoint(bytes, ZINFO_HEADER_BYTES + i * ZINFO_CHECKPOINT_BYTES, i, check.name),
    );
  }
  validateCheckpoints(checkpoints, blobBytes, check);
}

/** The structural rules a zinfo must meet to be usable on a blob of `blobBytes`. */
export function validateCheckpoints(
  cps: readonly ZinfoCheckpoint[],
  blobBytes: number,
  check: ZinfoCheckOptions = {},
): void {
  const name = check.name;
  if (cps[0].uncompressedOffset !== 0) {
    throw zinfoError(
      `first checkpoint starts at output ${cps[0].uncompressedOffset}, not 0`,
      undefined,
      name,
    );
  }
  for (let i = 0; i < cps.length; i++) {
    const { compressedOffset: at, uncompressedOffset: out, bits } = cps[i];
    if (bits > 7) {
      throw zinfoError(`checkpoint ${i} has bits=${bits} (0..7 allowed)`, undefined, name);
    }
    if (at < MIN_DEFLATE_START || at >= blobBytes) {
      throw zinfoError(
        `checkpoint ${i} points at compressed offset ${at}, outside the ${blobBytes}-byte blob`,
        "the zinfo was made for another layer",
        name,
      );
    }
    if (i === 0) continue;
    const prev = cps[i - 1];
    if (at <= prev.compressedOffset || out < prev.uncompressedOffset) {
      throw zinfoError(
        `checkpoint ${i} (in ${at}, out ${out}) does not follow checkpoint ${i - 1} ` +
          `(in ${prev.compressedOffset}, out ${prev.uncompressedOffset})`,
        undefined,
        name,
      );
    }
    if (out - prev.uncompressedOffset > MAX_DEFLATE_RATIO * (at - prev.compressedOffset + 1)) {
      throw zinfoError(
        `checkpoint ${i} claims ${out - prev.uncompressedOffset} bytes of output from ` +
          `${at - prev.compressedOffset} compressed bytes (deflate expands at most 1032:1)`,
        undefined,
        name,
      );
    }
    if (out - prev.uncompressedOffset > MAX_CHECKPOINT_GAP_BYTES) {
      throw gapError(
        `checkpoints ${i - 1} and ${i} are ${out - prev.uncompressedOffset} bytes of output apart`,
        name,
      );
    }
  }
  const last = cps[cps.length - 1].uncompressedOffset;
  const allowed = maxCheckpointsFor(blobBytes);
  if (cps.length > allowed) {
    throw zinfoError(
      `${cps.length} checkpoints for a ${blobBytes}-byte gzip blob (at most ${allowed}: 32 KiB ` +
        "each, one per span and per gzip member)",
      TOO_MANY_MEMBERS_HINT,
      name,
    );
  }
  if (check.streamBytes !== undefined && check.streamBytes - last > MAX_CHECKPOINT_GAP_BYTES) {
    throw gapError(
      `its last checkpoint (${cps.length - 1}) is ${check.streamBytes - last} bytes of output ` +
        `before the end of the ${check.streamBytes}-byte tar`,
      name,
    );
  }
}

/** A zinfo leaving more than MAX_CHECKPOINT_GAP_BYTES to inflate before some read. */
function gapError(what: string, name?: string): FormatError {
  return zinfoError(
    `${what} (at most ${MAX_CHECKPOINT_GAP_BYTES} allowed: a read there would inflate all of them)`,
    "rebuild the index with `erofs-oci index`, which checkpoints every 4 MiB",
    name,
  );
}

function checkZinfoSize(count: number, sizeBytes: number, name?: string): void {
  const expected = ZINFO_HEADER_BYTES + count * ZINFO_CHECKPOINT_BYTES;
  if (count === 0 || expected !== sizeBytes) {
    throw zinfoError(
      `${sizeBytes} bytes but its header says ${count} checkpoints (${expected} bytes)`,
      count !== 0 && sizeBytes === expected - ZINFO_CHECKPOINT_BYTES
        ? "a v1 zinfo (implicit first checkpoint) is not supported; rebuild it"
        : undefined,
      name,
    );
  }
}

function readCheckpoint(
  bytes: Uint8Array,
  at: number,
  index: number,
  name?: string,
): ZinfoCheckpoint {
  const view = new DataView(bytes.buffer, bytes.byteOffset + at, 17);
  return {
    compressedOffset: safe(view.getBigUint64(0, true), index, "in", name),
    uncompressedOffset: safe(view.getBigUint64(8, true), index, "out", name),
    bits: view.getUint8(16),
  };
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

function safe(value: bigint, index: number, field: string, name?: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw zinfoError(
      `checkpoint ${index} has ${field}=${value}, beyond any real blob`,
      undefined,
      name,
    );
  }
  return Number(value);
}

function zinfoError(message: string, hint?: string, name?: string): FormatError {
  return new FormatError(
    `bad zinfo${name ? ` ${name}` : ""}: ${message}`,
    hint ?? "rebuild it with `erofs-oci index`",
  );
}
