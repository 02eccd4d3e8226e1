/**
 * sha256 of every piece of the uncompressed stream, made by `erofs-oci index` next to the
 * zinfo (NAME.pieces, its own digest in NAME.index.json). A ranged read of a registry blob
 * cannot be checked against the blob digest, and a zinfo can lie in ways inflate does not
 * notice (a wrong window, offsets into another stream that still decodes); with these digests
 * every piece is checked before it is served, so such a read fails instead of returning wrong
 * bytes.
 *
 * Pieces are `pieceBytes` of output counted from each zinfo checkpoint (the last piece before
 * a checkpoint may be shorter), the unit GzipRandomAccess makes and caches. The file is the
 * 32-byte digests back to back, checkpoint by checkpoint.
 */
import { createHash } from "../node_builtins.ts";
import { FormatError } from "../errors.ts";
import type { ZinfoCheckpoint } from "./zinfo.ts";

export const PIECE_DIGEST_BYTES = 32;
export const DEFAULT_PIECE_BYTES = 1024 * 1024;
/**
 * Piece sizes a reader accepts. A piece is fetched (inflated) and hashed whole before any byte
 * of it is served, and a few are cached: the size, read from an index record (a registry
 * artifact), must not make one 4 KiB read of the kernel take the whole layer into memory.
 */
const MIN_PIECE_BYTES = 4096;
export const MAX_PIECE_BYTES = 16 * 1024 * 1024;

/** FormatError unless `pieceBytes` is a piece size readers accept. */
export function checkPieceBytes(pieceBytes: number): void {
  if (
    !Number.isSafeInteger(pieceBytes) || pieceBytes < MIN_PIECE_BYTES ||
    pieceBytes > MAX_PIECE_BYTES
  ) {
    throw new FormatError(
      `piece digests: bad piece size ${pieceBytes} (${MIN_PIECE_BYTES}..${MAX_PIECE_BYTES} bytes)`,
      "make the index again with `erofs-oci index`",
    );
  }
}

export function sha256(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(bytes).digest());
}

/** The expected digest of each piece, laid out against a zinfo's checkpoints. */
export class PieceDigests {
  readonly #firstOfInterval: number[];

  private constructor(
    readonly bytes: Uint8Array,
    readonly pieceBytes: number,
    /** Uncompressed size of the whole stream (the end of the last interval). */
    readonly totalBytes: number,
    firstOfInterval: number[],
  ) {
    this.#firstOfInterval = firstOfInterval;
  }

  /** Checks that `bytes` has exactly one digest per piece of these checkpoints. */
  static from(
    bytes: Uint8Array,
    pieceBytes: number,
    checkpoints: readonly ZinfoCheckpoint[],
    totalBytes: number,
  ): PieceDigests {
    checkPieceBytes(pieceBytes);
    const last = checkpoints[checkpoints.length - 1].uncompressedOffset;
    if (totalBytes < last) {
      throw new FormatError(
        `piece digests: stream of ${totalBytes} bytes ends before checkpoint at ${last}`,
      );
    }
    const first: number[] = [];
    let count = 0;
    checkpoints.forEach((cp, i) => {
      first.push(count);
      const end = i + 1 < checkpoints.length ? checkpoints[i + 1].uncompressedOffset : totalBytes;
      count += Math.ceil((end - cp.uncompressedOffset) / pieceBytes);
    });
    if (bytes.length !== count * PIECE_DIGEST_BYTES) {
      throw new FormatError(
        `piece digests: ${bytes.length} bytes, expected ${count} digests of ${PIECE_DIGEST_BYTES}`,
        "the piece digests do not belong to this zinfo",
      );
    }
    return new PieceDigests(bytes, pieceBytes, totalBytes, first);
  }

  /** Expected sha256 of piece `k` after checkpoint `interval`, or undefined past its end. */
  expected(interval: number, k: number): Uint8Array | undefined {
    const index = this.#firstOfInterval[interval] + k;
    const next = interval + 1 < this.#firstOfInterval.length
      ? this.#firstOfInterval[interval + 1]
      : this.bytes.length / PIECE_DIGEST_BYTES;
    if (k < 0 || index >= next) return undefined;
    return this.bytes.subarray(index * PIECE_DIGEST_BYTES, (index + 1) * PIECE_DIGEST_BYTES);
  }
}
