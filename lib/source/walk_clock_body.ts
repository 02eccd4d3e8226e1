/**
 * The walk clock: tells a metadata walk (a cold `find`: reads of pinned pages only, at a walk's
 * rate) from a few pinned reads (mount(2)'s superblock and root directory, an `ls`), and how long
 * a walk must be silent to be over. The main thread runs one over the reads it is told of
 * (PrefetchedSource), and each reader thread one over the reads it answers itself, published
 * through shared memory (read_activity_cell.ts) so that a main thread busy with a background fill
 * sees a walk as it begins, not when it gets to the reader's reports. `walkClockBody` is
 * self-contained (no imports, no outer variables): workers get it as a helper, shipped as source
 * text (ffi/libc_worker.ts).
 */

/** What makes a walk (background_windows.ts WALK_RULES). */
export interface WalkRules {
  /** This many pinned-only reads within `spanMs` are a walk. */
  minReads: number;
  spanMs: number;
  /** A walk is over once silent for `quietGaps` times its longest pause, within these bounds. */
  quietMinMs: number;
  quietMaxMs: number;
  quietGaps: number;
}

export interface WalkClock {
  /** A read of pinned pages only at `nowMs`. */
  note(nowMs: number): void;
  /** The last pinned read that came at a walk's rate (-Infinity: none). */
  readonly walkMs: number;
  /** How long after its last read the walk counts as over. */
  readonly quietMs: number;
}

/** Worker helper (self-contained): a WalkClock following `rules`. */
export function walkClockBody(rules: WalkRules): WalkClock {
  let spanStartMs = -Infinity;
  let reads = 0;
  let lastNoteMs = -Infinity;
  /** The longest pause between the current walk's reads. */
  let gapMs = 0;
  let walkMs = -Infinity;
  return {
    note(nowMs: number): void {
      const gap = nowMs - lastNoteMs;
      if (gap > rules.quietMaxMs) gapMs = 0; // a new walk, if any
      else if (walkMs === lastNoteMs) gapMs = Math.max(gapMs, gap);
      lastNoteMs = nowMs;
      if (nowMs - spanStartMs > rules.spanMs) {
        spanStartMs = nowMs;
        reads = 0;
      }
      if (++reads >= rules.minReads) walkMs = nowMs;
    },
    get walkMs(): number {
      return walkMs;
    },
    get quietMs(): number {
      return Math.min(rules.quietMaxMs, Math.max(rules.quietMinMs, rules.quietGaps * gapMs));
    },
  };
}
