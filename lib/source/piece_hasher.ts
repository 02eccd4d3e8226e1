/**
 * The sha256 of every fixed-size piece of a stream as it passes: a chunk-digest table's chunks
 * and subchunks (lib/verify/chunk_table.ts), a tar index's pieces (lib/gzip/piece_digests.ts).
 */
import { createHash, type Hash } from "../node_builtins.ts";

const SHA256_BYTES = 32;

export class PieceHasher {
  #hash: Hash | undefined;
  #filled = 0;
  #digests: Uint8Array[] = [];
  #tooMany = false;

  /**
   * `maxPieces`: past this many the hasher stops and keeps none (a stream too long for the
   * digests to be worth their memory); tooMany says so.
   */
  constructor(readonly pieceBytes: number, readonly maxPieces = Infinity) {}

  /** More than maxPieces pieces passed: finish() has nothing. */
  get tooMany(): boolean {
    return this.#tooMany;
  }

  /** A new piece starts here (a tar index's checkpoint): the current one, if any, ends. */
  checkpoint(): void {
    this.#close();
  }

  update(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.length && !this.#tooMany) {
      this.#hash ??= createHash("sha256");
      const n = Math.min(bytes.length - at, this.pieceBytes - this.#filled);
      this.#hash.update(bytes.subarray(at, at + n));
      this.#filled += n;
      at += n;
      if (this.#filled === this.pieceBytes) this.#close();
    }
  }

  /** All digests back to back, 32 bytes each (empty when tooMany). */
  finish(): Uint8Array<ArrayBuffer> {
    this.#close();
    const out = new Uint8Array(this.#digests.length * SHA256_BYTES);
    this.#digests.forEach((d, i) => out.set(d, i * SHA256_BYTES));
    return out;
  }

  #close(): void {
    if (!this.#hash || this.#filled === 0) return;
    this.#digests.push(new Uint8Array(this.#hash.digest()));
    this.#hash = undefined;
    this.#filled = 0;
    if (this.#digests.length > this.maxPieces) {
      this.#tooMany = true;
      this.#digests = [];
    }
  }
}
