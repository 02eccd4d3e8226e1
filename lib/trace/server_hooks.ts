/**
 * What the mount server does for traces, configured by the environment like the disk cache
 * (the detached server inherits what `mount` or `trace` set):
 * - TRACE_RECORD_ENV=PATH: record the kernel's reads of each layer; the trace is written to
 *   PATH when the server stops (`erofs-oci trace`).
 * - PREFETCH_FILE_ENV=PATH: a trace `mount` found; once the metadata is in, its ranges are
 *   read in order through each registry layer's caches ahead of the application.
 */
import type { LayerSpec } from "../state/mount_spec.ts";
import type { Source } from "../source/source.ts";
import { encodeTrace, MAX_TRACE_BYTES, parseTrace, rangesForLayers } from "./format.ts";
import { readRegularFileSync } from "../../ffi/files.ts";
import { type PrefetchProgress, type PrefetchTarget, TracePrefetcher } from "./prefetch.ts";
import { observedSource, TraceRecorder } from "./recorder.ts";
import { abortable } from "../source/abortable.ts";

export const TRACE_RECORD_ENV = "EROFS_OCI_TRACE_FILE";
export const PREFETCH_FILE_ENV = "EROFS_OCI_PREFETCH_FILE";
/** Set with PREFETCH_FILE_ENV when only some of the image's layers are mounted. */
export const PREFETCH_SUBSET_ENV = "EROFS_OCI_PREFETCH_SUBSET";

export class ServerTraceHooks {
  readonly #recordPath?: string;
  readonly #recorder?: TraceRecorder;
  readonly #layers: LayerSpec[];
  readonly #prefetchTrace?: Uint8Array;
  readonly #targets: (PrefetchTarget | undefined)[] = [];
  #prefetcher?: TracePrefetcher;

  /**
   * True while a trace is recorded or replayed: the application's own reads are what counts,
   * and the kernel's readahead over a page-cached FUSE file would record, or fetch, bytes it
   * never read (a traced `cat` then waited for GETs of the next file).
   */
  get wantsExactReads(): boolean {
    return this.#recorder !== undefined || this.#prefetchTrace !== undefined;
  }

  constructor(layers: LayerSpec[]) {
    this.#layers = layers;
    this.#recordPath = Deno.env.get(TRACE_RECORD_ENV) || undefined;
    if (this.#recordPath) this.#recorder = new TraceRecorder();
    const prefetchPath = Deno.env.get(PREFETCH_FILE_ENV);
    if (prefetchPath && !this.#recorder) {
      try {
        // Regular files only, bounded: nothing else is what `mount` wrote.
        this.#prefetchTrace = readRegularFileSync(prefetchPath, MAX_TRACE_BYTES, "trace file");
      } catch (error) {
        console.warn(`trace prefetch: cannot read ${prefetchPath}: ${(error as Error).message}`);
      }
    }
  }

  /**
   * Wraps the source a layer is exported with: the recorder sees each kernel read, the
   * prefetch drops queued pieces a reader asked for. `target` is what the prefetch reads
   * through (undefined: this layer is not prefetched, e.g. a local file).
   */
  wrap<S extends Source>(index: number, exported: S, target?: PrefetchTarget): S {
    this.#targets[index] = target;
    const recorder = this.#recorder;
    if (recorder) {
      const layer = this.#layers[index];
      const traced = recorder.addLayer({ digest: layer.digest ?? "", size: layer.sizeBytes });
      // A tar-indexed layer is served as [meta][tar], not as its blob: its offsets would not
      // be the blob's, and nothing prefetches it, so it is listed without ranges.
      if (!target) return exported;
      return observedSource(
        exported,
        (offset, length) => recorder.record(traced, offset, length),
      ) as S;
    }
    if (!this.#prefetchTrace || !target) return exported;
    const observed = observedSource(
      exported,
      (offset, length) => this.#prefetcher?.noteRead(index, offset, length),
    );
    // A read inside traced pieces not in yet waits for them, read ahead of the queue, instead
    // of fetching the same bytes again around them (whole cache chunks, over a memory cache).
    const read = observed.read, readInto = observed.readInto;
    observed.read = (offset, length, signal) => {
      const claimed = this.#prefetcher?.claim(index, offset, length);
      if (!claimed) return read(offset, length, signal);
      return abortable(claimed, signal).then(
        () => exported.read(offset, length, signal),
        () => signal?.aborted ? Promise.reject(signal.reason) : read(offset, length, signal),
      );
    };
    const inner = exported as {
      readInto?(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
    };
    if (readInto && inner.readInto) {
      const exportedReadInto = inner.readInto.bind(exported);
      observed.readInto = (offset, dest, signal) => {
        const claimed = this.#prefetcher?.claim(index, offset, dest.length);
        if (!claimed) return readInto(offset, dest, signal);
        return abortable(claimed, signal).then(
          () => exportedReadInto(offset, dest, signal),
          () => signal?.aborted ? Promise.reject(signal.reason) : readInto(offset, dest, signal),
        );
      };
    }
    return observed as S;
  }

  /**
   * Starts the prefetch (the metadata is in). `budgetBytes[i]`: what layer i may take when
   * only a memory cache holds it; `groupBytes[i]`: the unit layer i's source fetches whole
   * (TracePrefetcher). Never rejects; logs one summary line.
   */
  startPrefetch(
    signal: AbortSignal,
    budgetBytes: (number | undefined)[],
    groupBytes?: (number | undefined)[],
  ): void {
    if (!this.#prefetchTrace) return;
    try {
      const ranges = rangesForLayers(parseTrace(this.#prefetchTrace), this.#layers, {
        subset: Deno.env.get(PREFETCH_SUBSET_ENV) === "1",
      });
      this.#prefetcher = new TracePrefetcher(this.#targets, ranges, { budgetBytes, groupBytes });
    } catch (error) {
      console.warn(`trace prefetch: ${(error as Error).message}`);
      return;
    }
    console.log(`trace prefetch: ${this.#prefetcher.pieceCount} pieces queued`);
    this.#prefetcher.run(signal).then((summary) =>
      // A prefetch the registry's failures stopped is a warning, not news.
      summary.startsWith("trace prefetch stopped:") ? console.warn(summary) : console.log(summary)
    );
  }

  /** The prefetch has read (or is reading) these bytes of layer `index`: see covers(). */
  prefetched(index: number, offset: number, length: number): boolean {
    return this.#prefetcher?.covers(index, offset, length) ?? false;
  }

  progress(index: number): PrefetchProgress | undefined {
    return this.#prefetcher?.progress(index);
  }

  /** Writes the recorded trace (when recording); called once the exports are closed. */
  finish(): void {
    if (!this.#recorder || !this.#recordPath) return;
    try {
      Deno.writeFileSync(this.#recordPath, encodeTrace(this.#recorder.trace()), { mode: 0o600 });
      console.log(`trace written to ${this.#recordPath}`);
    } catch (error) {
      console.error(`trace: cannot write ${this.#recordPath}: ${(error as Error).message}`);
    }
  }
}
