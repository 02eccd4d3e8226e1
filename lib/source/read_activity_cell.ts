/**
 * A reader thread's reads, as the pacing of background fills (background_windows.ts) needs them:
 * at once. The FUSE and NBD reader threads answer most reads themselves and report them to the
 * main thread in batches, which a main thread busy verifying and writing a fill gets to late: in
 * the TCG guest a cold find's first 150 READs went by before the reports showed a walk, and the
 * fill in flight went on taking CPU from it (docs/benchmarks.md, session 40). So the reader runs
 * its own walk clock and writes what it sees to shared memory, which the main thread reads
 * whenever it decides.
 *
 * Layout: three Float64 slots, epoch milliseconds (performance.timeOrigin + performance.now(),
 * a clock every thread shares): 0 the last pinned read at a walk's rate, 1 that walk's quiet
 * (WalkClock.quietMs), 2 the last read of other bytes. `activityRecorderBody` (the writer) is
 * self-contained: workers get it as a helper, shipped as source text (ffi/libc_worker.ts).
 */
import { type ReadActivity, WALK_RULES } from "./background_windows.ts";
import type { WalkClock, WalkRules } from "./walk_clock_body.ts";

/** What a reader thread gets (structured clone: the cell is shared, not copied). */
export interface SharedActivityArg {
  cell: SharedArrayBuffer;
  rules: WalkRules;
}

/** The writer's side: a read the thread answered from pinned pages, or from other bytes. */
export interface ActivityRecorder {
  pinned(): void;
  data(): void;
}

/** Worker helper (self-contained): records into `arg.cell`, with a clock from `walkClock`. */
export function activityRecorderBody(
  arg: SharedActivityArg,
  walkClock: (rules: WalkRules) => WalkClock,
): ActivityRecorder {
  const slots = new Float64Array(arg.cell);
  const clock = walkClock(arg.rules);
  const nowMs = () => performance.timeOrigin + performance.now();
  return {
    pinned(): void {
      const now = nowMs();
      clock.note(now);
      if (clock.walkMs !== now) return;
      slots[1] = clock.quietMs; // before the walk's time: a reader of both sees a quiet to go with it
      slots[0] = now;
    },
    data(): void {
      slots[2] = nowMs();
    },
  };
}

/** The main thread's side: one cell, for one source's reader thread. */
export class SharedReadActivity {
  readonly #cell = new SharedArrayBuffer(3 * Float64Array.BYTES_PER_ELEMENT);
  readonly #slots = new Float64Array(this.#cell).fill(-Infinity);

  /** For the reader thread (DirectReadFiles.activity). */
  arg(): SharedActivityArg {
    return { cell: this.#cell, rules: WALK_RULES };
  }

  /** `own` (what this thread saw) with the reader thread's later walk and data reads. */
  merge(own: ReadActivity): ReadActivity {
    const origin = performance.timeOrigin;
    const walkMs = this.#slots[0] - origin;
    const dataMs = Math.max(own.dataMs, this.#slots[2] - origin);
    if (walkMs > own.walkMs) return { walkMs, dataMs, walkQuietMs: this.#slots[1] };
    return { ...own, dataMs };
  }
}
