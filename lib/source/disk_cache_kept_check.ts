/**
 * The check of a blob's kept chunks against the table of the source below it (stored_check.ts):
 * chunks found in the cache files (filled by another process, or before a restart) are checked
 * once in this process before any reader gets them, as its own fills were, in spans of whole
 * units of both the table and the chunks; chunks that fail are dropped (as eviction drops them)
 * and fetched again. Its read path (disk_cache_read.ts) runs it, and the whole-blob digest check
 * before its hash (disk_cache_parts.ts wires both).
 */
import type { BlobChunks } from "./disk_cache_chunks.ts";
import type { BlobFiller } from "./disk_cache_fill.ts";
import { isPresent } from "./disk_cache_present.ts";
import { sleep } from "../timers.ts";
import type { CheckedChunks, StoredBytesChecker } from "./stored_check.ts";

/** What the check needs of its blob (DiskCachedSource hands its own state). */
export interface KeptBlob {
  /** The blob's files without .map/.data (for messages). */
  readonly base: string;
  readonly size: number;
  readonly chunkBytes: number;
  readonly chunkCount: number;
  /** Aborted when the source closes. */
  readonly closing: AbortSignal;
  readonly checker: StoredBytesChecker;
  /** The chunks checked (or fetched) in this process. */
  readonly checked: CheckedChunks;
  readonly filler: BlobFiller;
  /** The chunks in the files (disk_cache_chunks.ts): read and dropped through it. */
  readonly chunks: BlobChunks;
  warn(message: string): void;
}

/** Rounds of checkAll: a damaged chunk is dropped, fetched again, then checked. */
const CHECK_ALL_ROUNDS = 4;

/** The kept-chunk check of one blob (see above). */
export class KeptChunkCheck {
  readonly #blob: KeptBlob;
  /** Checks of kept spans under way, by span: reads of one span wait for one check. */
  readonly #checking = new Map<number, Promise<boolean>>();
  #damaged = 0;

  constructor(blob: KeptBlob) {
    this.#blob = blob;
  }

  /** Chunks dropped because their kept bytes failed the check. */
  get damagedChunks(): number {
    return this.#damaged;
  }

  /** Resolves once no check of a span is under way (close). */
  async settled(): Promise<void> {
    await Promise.allSettled(this.#checking.values());
  }

  /** Checks every chunk not checked here yet (check), a few rounds; true when all are. */
  async checkAll(): Promise<boolean> {
    for (let round = 0; round < CHECK_ALL_ROUNDS; round++) {
      if (this.#blob.closing.aborted) return false;
      const unchecked = this.#blob.checked.uncheckedIn(0, this.#blob.chunkCount);
      if (unchecked.length === 0 || await this.check(unchecked)) return true;
    }
    return false;
  }

  /**
   * Checks the chunks of `chunks` found in the files (not fetched here) against the table of
   * the source below, in spans of whole units of both the table and the chunks; a span's
   * chunks not in the files are fetched first (the source below checks them). Chunks whose
   * bytes fail are dropped, to be fetched again. True when every one of `chunks` is checked.
   */
  async check(chunks: number[]): Promise<boolean> {
    const spanChunks = this.#spanChunks();
    let all = true;
    for (const span of new Set(chunks.map((c) => Math.floor(c / spanChunks)))) {
      let check = this.#checking.get(span);
      if (!check) {
        check = this.#checkSpan(
          span * spanChunks,
          Math.min(this.#blob.chunkCount, (span + 1) * spanChunks),
        )
          .finally(() => this.#checking.delete(span));
        this.#checking.set(span, check);
      }
      if (!(await check)) all = false;
    }
    return all;
  }

  /** Chunks per span of check: the least common multiple of both units, in chunks. */
  #spanChunks(): number {
    const unit = this.#blob.checker.checkUnitBytes;
    const gcd = (a: number, b: number): number => b === 0 ? a : gcd(b, a % b);
    return unit / gcd(unit, this.#blob.chunkBytes);
  }

  async #checkSpan(first: number, end: number): Promise<boolean> {
    const checker = this.#blob.checker;
    const offset = first * this.#blob.chunkBytes;
    const bytes = new Uint8Array(Math.min(this.#blob.size, end * this.#blob.chunkBytes) - offset);
    const read = this.#blob.chunks.readKept(first, end, bytes, offset);
    if (read === "busy") {
      await sleep(1);
      return false;
    }
    if (read === "missing") {
      const absent: number[] = [];
      this.#blob.chunks.readMap(first, end).forEach((byte, i) =>
        !isPresent(byte) && !this.#blob.filler.isWritten(first + i) && absent.push(first + i)
      );
      for (const c of absent) this.#blob.checked.forget(c);
      if (absent.length) await this.#blob.filler.fillReadable(absent, []);
      return false;
    }
    const unitBytes = checker.checkUnitBytes;
    const units: Promise<boolean>[] = [];
    for (let at = 0; at < bytes.length; at += unitBytes) {
      const unit = bytes.subarray(at, Math.min(bytes.length, at + unitBytes));
      units.push(checker.checkStored((offset + at) / unitBytes, unit));
    }
    // Hashed side by side (Web Crypto runs them on the blocking pool).
    let badFrom = -1, badTo = -1;
    (await Promise.all(units)).forEach((good, k) => {
      if (good) return;
      if (badFrom < 0) badFrom = offset + k * unitBytes;
      badTo = Math.min(offset + bytes.length, offset + (k + 1) * unitBytes);
    });
    if (this.#blob.closing.aborted) return false;
    if (badFrom < 0) {
      // Chunks evicted while they were hashed are not marked: their next bytes are checked.
      const now = this.#blob.chunks.readMap(first, end);
      let all = true;
      now.forEach((byte, i) => {
        if (isPresent(byte) || this.#blob.filler.isWritten(first + i)) {
          this.#blob.checked.mark(first + i, first + i + 1);
        } else all = false;
      });
      return all;
    }
    const from = Math.floor(badFrom / this.#blob.chunkBytes);
    const to = Math.ceil(badTo / this.#blob.chunkBytes);
    this.#blob.warn(
      `disk cache ${this.#blob.base}: the kept bytes at offset ${badFrom} do not match the layer's ` +
        "chunk table (damaged on disk?); fetching them again",
    );
    this.#dropDamaged(from, to);
    return false;
  }

  /**
   * Marks chunks [first, end) absent and punches their bytes out (as eviction does), unless a
   * reader or filler of some process holds them now: then they stay, still unchecked here.
   */
  #dropDamaged(first: number, end: number): void {
    for (let index = first; index < end; index++) {
      if (this.#blob.filler.isWritten(index)) continue;
      try {
        if (this.#blob.chunks.dropChunk(index) > 0) this.#damaged++;
      } catch (error) {
        this.#blob.warn(`disk cache ${this.#blob.base}: ${(error as Error).message}`);
        return;
      }
    }
  }
}
