/**
 * Builds a zinfo while a gzip blob streams through once, emitting its uncompressed bytes on
 * the way (for the tar reader), so `index` needs no temporary copy of the tar.
 *
 * Checkpoints follow erofs-utils 1.9 (lib/tar.c behaviour recorded in
 * ../shared/fixtures/README.md): one at the first deflate block of every gzip member, and one
 * at a deflate block boundary once the output since the previous checkpoint exceeds the span
 * (zlib's Z_BLOCK return with data_type bit 128 set and bit 64 clear: not after a member's
 * last block). Every member's CRC-32 and length are checked against its trailer.
 */
import { FormatError } from "../errors.ts";
import {
  crc32,
  DATA_TYPE_BLOCK_END,
  DATA_TYPE_LAST_BLOCK,
  DEFLATE_WINDOW_BYTES,
  nativeBytes,
  RawInflater,
  Z_BLOCK,
  Z_STREAM_END,
} from "../../ffi/zlib.ts";
import { GZIP_TRAILER_BYTES, gzipHeaderLength } from "./gzip_header.ts";
import { PieceHasher } from "../source/piece_hasher.ts";
import {
  DEFAULT_SPAN_BYTES,
  encodeZinfo,
  encodeZinfoHeader,
  MAX_CHECKPOINT_GAP_BYTES,
  MAX_ZINFO_CHECKPOINTS,
  maxCheckpointsFor,
  TOO_MANY_MEMBERS_HINT,
  ZINFO_CHECKPOINT_BYTES,
  type ZinfoCheckpoint,
} from "./zinfo.ts";

const OUTPUT_BUFFER_BYTES = 256 * 1024;
const HEADER_STEP_BYTES = 4096;

export type BuiltCheckpoint = ZinfoCheckpoint & { window: Uint8Array<ArrayBuffer> };

type State = "header" | "deflate" | "trailer" | "between" | "padding";

export class ZinfoBuilder {
  readonly spanBytes: number;
  /** Checkpoints made so far (empty when they go to `onCheckpoint` instead). */
  readonly checkpoints: BuiltCheckpoint[] = [];
  checkpointCount = 0;
  /** Compressed bytes taken so far. */
  compressedBytes = 0;
  /** Uncompressed bytes produced so far. */
  uncompressedBytes = 0;
  members = 0;

  #state: State = "header";
  #held: Uint8Array = new Uint8Array(0);
  #inflater: RawInflater | undefined;
  #crc = 0;
  #memberBytes = 0;
  readonly #output = nativeBytes(OUTPUT_BUFFER_BYTES);
  readonly #onCheckpoint?: (checkpoint: BuiltCheckpoint) => void;
  readonly #pieces?: PieceHasher;
  #pieceDigests?: Uint8Array<ArrayBuffer>;
  #lastCheckpointOut = 0;
  readonly #maxCheckpoints: number;
  readonly #blobBytes: number;

  /**
   * `onCheckpoint` takes each checkpoint as it is made (e.g. ZinfoFileWriter.add), so a huge
   * layer does not hold 32 KiB per span in memory; without it they collect in `checkpoints`.
   */
  constructor(
    options: {
      spanBytes?: number;
      onCheckpoint?: (checkpoint: BuiltCheckpoint) => void;
      /** Also digest every piece of this size (see piece_digests.ts). */
      pieceBytes?: number;
      /** More checkpoints than this are a FormatError. Default MAX_ZINFO_CHECKPOINTS (1 GiB). */
      maxCheckpoints?: number;
      /**
       * The whole compressed size, when known: checkpoints are bounded as for a blob of that
       * size (maxCheckpointsFor), as the zinfo's readers bound them. Bounded by the bytes read
       * so far, a layer whose many small members come first (as eStargz puts them) was refused.
       */
      blobBytes?: number;
    } = {},
  ) {
    this.spanBytes = options.spanBytes ?? DEFAULT_SPAN_BYTES;
    this.#maxCheckpoints = options.maxCheckpoints ?? MAX_ZINFO_CHECKPOINTS;
    this.#blobBytes = options.blobBytes ?? 0;
    this.#onCheckpoint = options.onCheckpoint;
    if (options.pieceBytes) this.#pieces = new PieceHasher(options.pieceBytes);
  }

  /** The piece digests (NAME.pieces bytes), after finish() when `pieceBytes` was given. */
  get pieceDigests(): Uint8Array<ArrayBuffer> | undefined {
    return this.#pieceDigests;
  }

  /**
   * Takes the next compressed bytes; yields their uncompressed bytes in pieces of at most
   * 256 KiB (fresh copies), so memory stays bounded whatever the compression ratio.
   */
  *feed(chunk: Uint8Array): Generator<Uint8Array> {
    const input = nativeBytes(chunk.length);
    input.set(chunk);
    let at = 0, stalls = 0;
    while (at < input.length) {
      const rest = input.subarray(at);
      switch (this.#state) {
        case "header":
        case "between":
          at += this.#takeHeader(rest);
          break;
        case "trailer":
          at += this.#takeTrailer(rest);
          break;
        case "padding":
          if (rest.some((b) => b !== 0)) {
            throw new FormatError(
              `gzip: unexpected bytes after the last member at compressed offset ${this.compressedBytes}`,
            );
          }
          this.compressedBytes += rest.length;
          at = input.length;
          break;
        case "deflate": {
          const step = this.#inflater!.inflate(rest, this.#output, Z_BLOCK);
          // A block-end return may make no progress once; twice in a row means zlib is stuck.
          stalls = step.consumed === 0 && step.produced === 0 ? stalls + 1 : 0;
          if (stalls > 2) {
            throw new FormatError(
              `gzip: inflate stalled at compressed offset ${this.compressedBytes}`,
            );
          }
          at += step.consumed;
          this.compressedBytes += step.consumed;
          if (step.produced > 0) {
            const out = this.#output.subarray(0, step.produced);
            this.#crc = crc32(this.#crc, out);
            this.#memberBytes += step.produced;
            this.uncompressedBytes += step.produced;
            this.#pieces?.update(out);
            yield out.slice();
          }
          if (step.status === Z_STREAM_END) {
            this.#state = "trailer";
            this.#held = new Uint8Array(0);
          } else if (
            (step.dataType & DATA_TYPE_BLOCK_END) && !(step.dataType & DATA_TYPE_LAST_BLOCK) &&
            this.uncompressedBytes - this.#lastCheckpointOut > this.spanBytes
          ) {
            this.#add({
              compressedOffset: this.compressedBytes,
              uncompressedOffset: this.uncompressedBytes,
              bits: step.dataType & 7,
              window: this.#inflater!.window(),
            });
          }
          if (this.uncompressedBytes - this.#lastCheckpointOut > MAX_CHECKPOINT_GAP_BYTES) {
            // A mount refuses such a zinfo (zinfo.ts): every read there would inflate it all.
            throw new FormatError(
              `gzip: no deflate block ends in ${MAX_CHECKPOINT_GAP_BYTES} bytes of output after ` +
                `uncompressed offset ${this.#lastCheckpointOut}: too far apart for random reads`,
              "recompress the layer (gzip, pigz, zlib and Go end a block every few MiB at most)",
            );
          }
          break;
        }
      }
    }
  }

  /**
   * Checks the stream ended after a whole member; returns the zinfo file bytes (with
   * `onCheckpoint`: only the 12-byte header, to be written at offset 0).
   */
  finish(): Uint8Array<ArrayBuffer> {
    this.#inflater?.end();
    this.#inflater = undefined;
    const idle = this.#state === "padding" || (this.#state === "between" && !this.#held.length);
    if (this.members === 0 || !idle) {
      throw new FormatError(
        `gzip data truncated after ${this.compressedBytes} bytes`,
        "the layer blob is incomplete",
      );
    }
    this.#pieceDigests = this.#pieces?.finish();
    if (!this.#onCheckpoint) return encodeZinfo(this.spanBytes, this.checkpoints);
    return encodeZinfoHeader(this.checkpointCount, this.spanBytes);
  }

  #add(checkpoint: BuiltCheckpoint): void {
    const size = Math.max(this.#blobBytes, this.compressedBytes);
    const allowed = Math.min(this.#maxCheckpoints, maxCheckpointsFor(size));
    if (this.checkpointCount >= allowed) {
      throw new FormatError(
        `gzip: ${this.members} members in ${
          this.#blobBytes ? `the first ${this.compressedBytes} of ${size}` : this.compressedBytes
        } compressed bytes need more ` +
          `than ${allowed} checkpoints: the zinfo would exceed ` +
          `${allowed * ZINFO_CHECKPOINT_BYTES} bytes`,
        TOO_MANY_MEMBERS_HINT,
      );
    }
    this.#pieces?.checkpoint();
    this.checkpointCount++;
    this.#lastCheckpointOut = checkpoint.uncompressedOffset;
    if (this.#onCheckpoint) this.#onCheckpoint(checkpoint);
    else this.checkpoints.push(checkpoint);
  }

  /** Frees zlib memory when the stream is abandoned (finish() does it too). */
  close(): void {
    this.#inflater?.end();
    this.#inflater = undefined;
  }

  #takeHeader(rest: Uint8Array): number {
    if (this.#state === "between" && this.#held.length === 0 && rest[0] === 0) {
      // gzip(1) accepts zero padding after the last member (tape blocking); so do we.
      this.#state = "padding";
      return 0;
    }
    const take = rest.subarray(0, HEADER_STEP_BYTES);
    const held = concat(this.#held, take);
    const headerStart = this.compressedBytes - this.#held.length;
    const length = gzipHeaderLength(held, headerStart);
    if (length === undefined) {
      this.#held = held;
      this.compressedBytes += take.length;
      return take.length;
    }
    const used = length - this.#held.length;
    this.#held = new Uint8Array(0);
    this.compressedBytes += used;
    this.members++;
    this.#crc = 0;
    this.#memberBytes = 0;
    if (this.#inflater) this.#inflater.reset();
    else this.#inflater = new RawInflater();
    // A member start needs no dictionary; erofs-utils' window there is unused, we write zeros.
    this.#add({
      compressedOffset: this.compressedBytes,
      uncompressedOffset: this.uncompressedBytes,
      bits: 0,
      window: nativeBytes(DEFLATE_WINDOW_BYTES),
    });
    this.#state = "deflate";
    return used;
  }

  #takeTrailer(rest: Uint8Array): number {
    const take = rest.subarray(0, GZIP_TRAILER_BYTES - this.#held.length);
    this.#held = concat(this.#held, take);
    this.compressedBytes += take.length;
    if (this.#held.length < GZIP_TRAILER_BYTES) return take.length;
    const view = new DataView(this.#held.buffer, this.#held.byteOffset, GZIP_TRAILER_BYTES);
    const crc = view.getUint32(0, true), size = view.getUint32(4, true);
    if (crc !== this.#crc || size !== this.#memberBytes % 2 ** 32) {
      throw new FormatError(
        `gzip member ${this.members} fails its check (CRC-32 or length) ` +
          `at compressed offset ${this.compressedBytes}`,
        "the layer blob is corrupt",
      );
    }
    this.#held = new Uint8Array(0);
    this.#state = "between";
    return take.length;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b.slice();
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Streams `compressed` once through a ZinfoBuilder, yielding uncompressed pieces; `builder`
 * holds the checkpoints afterwards (call `finish()` for the file bytes).
 */
export async function* gunzipIndexed(
  compressed: AsyncIterable<Uint8Array>,
  builder: ZinfoBuilder,
): AsyncGenerator<Uint8Array> {
  try {
    for await (const chunk of compressed) yield* builder.feed(chunk);
  } finally {
    builder.close();
  }
}

/** The zinfo of a whole gzip stream (uncompressed bytes discarded). */
export async function buildZinfo(
  compressed: AsyncIterable<Uint8Array>,
  options: { spanBytes?: number } = {},
): Promise<{ zinfo: Uint8Array<ArrayBuffer>; uncompressedBytes: number; members: number }> {
  const builder = new ZinfoBuilder(options);
  try {
    for await (const chunk of compressed) for (const _ of builder.feed(chunk)) { /* discard */ }
    const zinfo = builder.finish();
    return { zinfo, uncompressedBytes: builder.uncompressedBytes, members: builder.members };
  } finally {
    builder.close();
  }
}
