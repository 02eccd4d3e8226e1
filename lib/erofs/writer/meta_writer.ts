/**
 * Writes the metadata area through a fixed window instead of one buffer of its whole size: with
 * inline tails the area grows with the files (100,000 small files: ~100 MB), which used to be
 * the largest allocation of a build. Writes must come in ascending offsets (the writer walks the
 * layout's regions in order); gaps between them stay zeros. The first block (superblock and
 * whatever shares its checksummed block) is kept until the end, for the checksum.
 */
import { FormatError } from "../../errors.ts";
import { pwriteAll } from "./data_copy.ts";

const WINDOW_BYTES = 1 << 20;

export class MetadataWriter {
  /** The first max(4096, block size) bytes of the image, written by finish(). */
  readonly head: Uint8Array<ArrayBuffer>;
  readonly #fd: number;
  readonly #window = new Uint8Array(WINDOW_BYTES);
  #windowStart: number;
  #used = 0;

  constructor(fd: number, blockBytes: number) {
    this.#fd = fd;
    this.head = new Uint8Array(Math.max(4096, blockBytes));
    this.#windowStart = this.head.length;
  }

  /** Copies `bytes` to image offset `offset` (not below earlier writes past the head). */
  write(offset: number, bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.length) {
      const at = offset + done;
      if (at < this.head.length) {
        const n = Math.min(bytes.length - done, this.head.length - at);
        this.head.set(bytes.subarray(done, done + n), at);
        done += n;
        continue;
      }
      if (at < this.#windowStart) {
        throw new FormatError("metadata written out of order (a writer bug)");
      }
      if (at >= this.#windowStart + WINDOW_BYTES) this.#advance(at);
      const into = at - this.#windowStart;
      const n = Math.min(bytes.length - done, WINDOW_BYTES - into);
      this.#window.set(bytes.subarray(done, done + n), into);
      this.#used = Math.max(this.#used, into + n);
      done += n;
    }
  }

  /** Writes what is left, then the head. */
  finish(): void {
    this.#flush();
    pwriteAll(this.#fd, this.head, 0);
  }

  #advance(at: number): void {
    this.#flush();
    // The next window starts where this one's bytes ended, or at `at` past a gap (a hole).
    if (at - this.#windowStart >= WINDOW_BYTES) this.#windowStart = at;
  }

  #flush(): void {
    if (this.#used === 0) return;
    pwriteAll(this.#fd, this.#window.subarray(0, this.#used), this.#windowStart);
    this.#window.fill(0, 0, this.#used);
    this.#windowStart += this.#used;
    this.#used = 0;
  }
}
