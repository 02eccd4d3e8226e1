/**
 * Gathers the data blocks of consecutive small files into one buffer written with one pwrite:
 * a tree of many small files otherwise costs a copy_file_range plus three lseeks per file, which
 * made most of a build's time (8,800 files: ~6 syscalls each, 0.5 s of the 1.1 s). All-zero
 * blocks are left out of the writes, so they stay holes of the (sparse) image as they would
 * through copyRange.
 */
import { pwriteAll } from "./data_copy.ts";

/** Files up to this size are read into the batch; larger ones are copied in the kernel. */
export const SMALL_FILE_BYTES = 256 << 10;
const BATCH_BYTES = 1 << 20;

export class BlockBatch {
  readonly #fd: number;
  readonly #blockBytes: number;
  readonly #buffer = new Uint8Array(BATCH_BYTES);
  readonly #words = new Uint32Array(this.#buffer.buffer);
  /** Image offset of the buffer's first byte; bytes used. */
  #start = 0;
  #used = 0;

  constructor(fd: number, blockBytes: number) {
    this.#fd = fd;
    this.#blockBytes = blockBytes;
  }

  /**
   * Room for `length` bytes (at most SMALL_FILE_BYTES) at image offset `at` (block aligned):
   * the caller fills it; the rest of its last block is zeroed here. Earlier bytes are written
   * first when `at` does not continue them or the buffer is full. `spare` (less than a block)
   * more bytes follow the room in the returned array, not part of the batch: read there with
   * the room's bytes in one call (a file's inline tail), and valid until the next call. A room
   * with spare bytes ends on a block boundary (`length` whole blocks).
   */
  take(at: number, length: number, spare = 0): Uint8Array<ArrayBuffer> {
    const bs = this.#blockBytes;
    const padded = Math.ceil(length / bs) * bs;
    if (spare > 0 && (padded !== length || spare >= bs)) {
      throw new Error(`spare bytes after a room of ${length} bytes`);
    }
    if (
      this.#used > 0 &&
      (at !== this.#start + this.#used || this.#used + padded + spare > BATCH_BYTES)
    ) {
      this.flush();
    }
    if (this.#used === 0) this.#start = at;
    const room = this.#buffer.subarray(this.#used, this.#used + padded + spare);
    room.fill(0, length, padded);
    this.#used += padded;
    return room.subarray(0, length + spare);
  }

  /** Writes what is gathered, skipping all-zero blocks. */
  flush(): void {
    const bs = this.#blockBytes;
    let runStart = -1;
    for (let block = 0; block * bs < this.#used; block++) {
      const zero = this.#zeroBlock(block);
      if (!zero && runStart < 0) runStart = block * bs;
      if (zero && runStart >= 0) {
        this.#write(runStart, block * bs);
        runStart = -1;
      }
    }
    if (runStart >= 0) this.#write(runStart, this.#used);
    this.#used = 0;
  }

  #write(from: number, to: number): void {
    pwriteAll(this.#fd, this.#buffer.subarray(from, to), this.#start + from);
  }

  /** Data blocks almost never start with a zero word, so this is one compare per block. */
  #zeroBlock(block: number): boolean {
    const words = this.#words;
    const perBlock = this.#blockBytes >> 2;
    for (let i = block * perBlock, end = i + perBlock; i < end; i++) {
      if (words[i] !== 0) return false;
    }
    return true;
  }
}
