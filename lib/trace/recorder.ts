/**
 * Records the reads the kernel makes of each layer (what the application needed), for
 * `erofs-oci trace`. Memory stays bounded: accesses are merged whenever the list grows past
 * COMPACT_AT, and a layer stops taking new ranges once MAX_TRACE_RANGES are held.
 */
import type { Source } from "../source/source.ts";
import { isDirectReadable } from "../source/direct_reads.ts";
import {
  type Access,
  buildTrace,
  MAX_TRACE_RANGES,
  mergeAccesses,
  type Trace,
  type TraceLayer,
} from "./format.ts";

const COMPACT_AT = 4 * MAX_TRACE_RANGES;

export class TraceRecorder {
  #seq = 0;
  readonly #layers: { layer: TraceLayer; accesses: Access[]; full: boolean }[] = [];

  /** Registers a layer; returns its index for record(). */
  addLayer(layer: TraceLayer): number {
    return this.#layers.push({ layer, accesses: [], full: false }) - 1;
  }

  record(layerIndex: number, offset: number, length: number): void {
    const entry = this.#layers[layerIndex];
    if (!entry || length <= 0) return;
    const seq = this.#seq++;
    if (entry.full) {
      // Only reads inside ranges held already are merged in; new ranges are dropped.
      return;
    }
    entry.accesses.push({ offset, length, seq });
    if (entry.accesses.length >= COMPACT_AT) {
      entry.accesses = mergeAccesses(entry.accesses);
      if (entry.accesses.length >= MAX_TRACE_RANGES) entry.full = true;
    }
  }

  trace(): Trace {
    return buildTrace(this.#layers.map(({ layer, accesses }) => ({ layer, accesses })));
  }
}

/** What the exports may use besides read() (kept so wrapping costs no copy). */
interface ReadIntoSource extends Source {
  readInto?(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
  stats?(): unknown;
}

/**
 * Passes reads through to `inner` and tells `onRead` about each one first (the trace
 * recorder, and the prefetch scheduler that skips what a reader asked for already).
 */
export function observedSource(
  inner: ReadIntoSource,
  onRead: (offset: number, length: number) => void,
): ReadIntoSource {
  const observed: ReadIntoSource = {
    size: inner.size,
    read(offset, length, signal) {
      onRead(offset, length);
      return inner.read(offset, length, signal);
    },
    close: inner.close ? () => inner.close!() : undefined,
  };
  if (inner.readInto) {
    observed.readInto = (offset, dest, signal) => {
      onRead(offset, dest.length);
      return inner.readInto!(offset, dest, signal);
    };
  }
  // Reads served straight from the disk cache are told afterwards, in batches (same order).
  if (isDirectReadable(inner)) {
    const direct = inner;
    Object.assign(observed, {
      openDirectReads: () => direct.openDirectReads(),
      noteDirectReads: (ranges: readonly number[]) => {
        for (let i = 0; i + 1 < ranges.length; i += 2) onRead(ranges[i], ranges[i + 1]);
        direct.noteDirectReads(ranges);
      },
    });
  }
  return observed;
}
