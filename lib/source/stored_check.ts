/**
 * Checking bytes a cache kept: a source whose reads are checked against a table (a chunk-digest
 * table's VerifiedSource) can also check bytes that come back from a disk cache file above it,
 * which the disk may have damaged since they were written, or another run of the tool wrote.
 */
import type { Source } from "./source.ts";

export interface StoredBytesChecker {
  /** Bytes per checked unit, a power of two (the blob's last unit may be shorter). */
  readonly checkUnitBytes: number;
  /** True when `bytes`, all of unit `index`, are the blob's. */
  checkStored(index: number, bytes: Uint8Array): Promise<boolean>;
}

export function storedBytesChecker(source: Source): StoredBytesChecker | undefined {
  const candidate = source as Partial<StoredBytesChecker>;
  return typeof candidate.checkStored === "function" &&
      typeof candidate.checkUnitBytes === "number"
    ? candidate as StoredBytesChecker
    : undefined;
}

/**
 * Which chunks of a blob this process has checked since it opened the blob's cache files (one
 * byte per chunk over shared memory, so that a reader thread answering reads by itself sees
 * them: direct_read_body.ts). Chunks it fetched and checked itself count; chunks found present
 * in the files do not until they are read back and checked.
 */
export class CheckedChunks {
  /** 1 for a checked chunk; over a SharedArrayBuffer. */
  readonly marks: Uint8Array;

  constructor(chunkCount: number) {
    this.marks = new Uint8Array(new SharedArrayBuffer(Math.max(1, chunkCount)));
  }

  has(chunk: number): boolean {
    return Atomics.load(this.marks, chunk) === 1;
  }

  mark(first: number, end: number): void {
    for (let c = first; c < end; c++) Atomics.store(this.marks, c, 1);
  }

  forget(chunk: number): void {
    Atomics.store(this.marks, chunk, 0);
  }

  forgetAll(): void {
    for (let c = 0; c < this.marks.length; c++) Atomics.store(this.marks, c, 0);
  }

  /** The chunks of [first, end) not checked here. */
  uncheckedIn(first: number, end: number): number[] {
    const unchecked: number[] = [];
    for (let c = first; c < end; c++) if (!this.has(c)) unchecked.push(c);
    return unchecked;
  }
}
