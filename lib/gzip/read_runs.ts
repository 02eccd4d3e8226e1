/**
 * Tells sequential readers of a gzip stream from random ones, so GzipRandomAccess can make
 * pieces and fetch whole intervals ahead of the first and only what is asked for the second.
 * A run is a series of reads each starting near where the run has got to (within `nearBytes`
 * either way: readers in parallel, e.g. the kernel's async reads, arrive slightly out of
 * order); a few runs are followed at once (several files read in parallel).
 */

export interface ReadRun {
  /** Uncompressed offset the run started at. */
  start: number;
  /** Furthest uncompressed end a read of the run reached. */
  end: number;
  /** Reads in the run so far (1: a lone, random read). */
  reads: number;
}

export class ReadRuns {
  readonly #runs: ReadRun[] = [];

  constructor(readonly nearBytes: number, readonly maxRuns = 4) {}

  /** Notes a read of `length` bytes at `offset` and returns the run it belongs to. */
  note(offset: number, length: number): ReadRun {
    const end = offset + length;
    for (let i = this.#runs.length - 1; i >= 0; i--) {
      const run = this.#runs[i];
      if (offset < run.end - this.nearBytes || offset > run.end + this.nearBytes) continue;
      this.#runs.splice(i, 1);
      this.#runs.push(run);
      run.reads++;
      run.end = Math.max(run.end, end);
      return run;
    }
    if (this.#runs.length >= this.maxRuns) this.#runs.shift();
    const run = { start: offset, end, reads: 1 };
    this.#runs.push(run);
    return run;
  }
}

/**
 * How many pieces the run has moved through to reach the piece starting at `pieceStart`: 0
 * for a lone read (one long read is not a pattern) or a run still in its first piece.
 */
export function piecesMoved(run: ReadRun, pieceStart: number, pieceBytes: number): number {
  if (run.reads < 2 || pieceStart <= run.start) return 0;
  return Math.ceil((pieceStart - run.start) / pieceBytes);
}
