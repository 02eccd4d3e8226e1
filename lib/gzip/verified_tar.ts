/**
 * An uncompressed tar layer read from its (ranged, untrusted) blob with every 1 MiB piece
 * checked against NAME.pieces before any byte of it is served. Verified pieces stay in a
 * small LRU so the kernel's 4-128 KiB reads of one piece hash it once; bytes evicted and read
 * again are fetched and checked again (a registry may answer differently the second time).
 */
import { FormatError } from "../errors.ts";
import { checkReadRange, type Source } from "../source/source.ts";
import { checkPieceBytes, PIECE_DIGEST_BYTES, sha256 } from "./piece_digests.ts";

export interface VerifiedTarOptions {
  /** Budget of verified pieces held (default 16 MiB). */
  cacheBytes?: number;
}

export class VerifiedPlainTar implements Source {
  readonly size: number;
  readonly #pieces = new Map<number, Uint8Array | Promise<Uint8Array>>();
  readonly #maxPieces: number;

  constructor(
    readonly blob: Source,
    readonly digests: Uint8Array,
    readonly pieceBytes: number,
    options: VerifiedTarOptions = {},
  ) {
    checkPieceBytes(pieceBytes);
    const count = Math.ceil(blob.size / pieceBytes);
    if (digests.length !== count * PIECE_DIGEST_BYTES) {
      throw new FormatError(
        `piece digests: ${digests.length} bytes, expected ${count} digests for a ` +
          `${blob.size}-byte tar`,
        "the piece digests do not belong to this layer",
      );
    }
    this.size = blob.size;
    this.#maxPieces = Math.max(2, Math.floor((options.cacheBytes ?? 16 << 20) / pieceBytes));
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    checkReadRange(offset, length, this.size);
    const out = new Uint8Array(length);
    await this.readInto(offset, out, signal);
    return out;
  }

  async readInto(offset: number, out: Uint8Array, signal?: AbortSignal): Promise<void> {
    const length = out.length;
    checkReadRange(offset, length, this.size);
    if (length === 0) return;
    const first = Math.floor(offset / this.pieceBytes);
    const last = Math.floor((offset + length - 1) / this.pieceBytes);
    const pieces = [];
    for (let k = first; k <= last; k++) pieces.push(this.#piece(k, signal));
    const bytes = await Promise.all(pieces);
    for (let k = first; k <= last; k++) {
      const start = k * this.pieceBytes;
      const from = Math.max(offset, start), to = Math.min(offset + length, start + this.pieceBytes);
      out.set(bytes[k - first].subarray(from - start, to - start), from - offset);
    }
  }

  #piece(k: number, signal?: AbortSignal): Promise<Uint8Array> {
    const held = this.#pieces.get(k);
    if (held) {
      this.#pieces.delete(k);
      this.#pieces.set(k, held);
      return Promise.resolve(held);
    }
    const made = this.#fetch(k, signal);
    this.#pieces.set(k, made);
    made.then(
      (bytes) => {
        if (this.#pieces.get(k) === made) this.#pieces.set(k, bytes);
      },
      () => {
        if (this.#pieces.get(k) === made) this.#pieces.delete(k);
      },
    );
    while (this.#pieces.size > this.#maxPieces) {
      this.#pieces.delete(this.#pieces.keys().next().value!);
    }
    return made;
  }

  async #fetch(k: number, signal?: AbortSignal): Promise<Uint8Array> {
    const start = k * this.pieceBytes;
    const bytes = await this.blob.read(start, Math.min(this.pieceBytes, this.size - start), signal);
    const want = this.digests.subarray(k * PIECE_DIGEST_BYTES, (k + 1) * PIECE_DIGEST_BYTES);
    const got = sha256(bytes);
    if (!got.every((b, i) => b === want[i])) {
      throw new FormatError(
        `tar bytes ${start}..${start + bytes.length} do not match their recorded digest`,
        "the registry served other bytes than the indexed layer",
      );
    }
    return bytes;
  }

  async close(): Promise<void> {
    this.#pieces.clear();
    await this.blob.close?.();
  }
}
