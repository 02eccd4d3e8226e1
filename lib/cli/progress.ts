/** A single self-overwriting progress line on stderr, shown only when stderr is a terminal. */
import { formatBytes } from "./table.ts";

const REDRAW_INTERVAL_MS = 100;

/**
 * Progress of one transfer. Silent unless stderr is a TTY, so logs and pipes stay clean.
 *
 * @example
 * const progress = new ProgressLine("pulling sha256:abcd…");
 * progress.update(received, total);
 * progress.finish();
 */
export class ProgressLine {
  readonly #label: string;
  readonly #enabled: boolean;
  #lastDrawMs = 0;
  #drawn = false;

  constructor(label: string, enabled = Deno.stderr.isTerminal()) {
    this.#label = label;
    this.#enabled = enabled;
  }

  /** Redraws at most every 100 ms (and always at completion). */
  update(doneBytes: number, totalBytes?: number): void {
    if (!this.#enabled) return;
    const now = Date.now();
    const complete = totalBytes !== undefined && doneBytes >= totalBytes;
    if (!complete && now - this.#lastDrawMs < REDRAW_INTERVAL_MS) return;
    this.#lastDrawMs = now;
    const amount = totalBytes
      ? `${formatBytes(doneBytes)} / ${formatBytes(totalBytes)} (${
        Math.floor((doneBytes / totalBytes) * 100)
      }%)`
      : formatBytes(doneBytes);
    this.#write(`\r\x1b[K${this.#label} ${amount}`);
    this.#drawn = true;
  }

  /** Ends the line so later output starts on a fresh one. */
  finish(): void {
    if (this.#enabled && this.#drawn) this.#write("\n");
    this.#drawn = false;
  }

  #write(text: string): void {
    try {
      Deno.stderr.writeSync(new TextEncoder().encode(text));
    } catch { /* a closed stderr must not fail the transfer */ }
  }
}

/**
 * One progress line per layer read whole (`index IMAGE`, `mount --index-missing`): the line of
 * the previous layer ends when the next one starts.
 */
export class LayerProgress {
  readonly #verb: string;
  #layer: number | undefined;
  #line: ProgressLine | undefined;

  constructor(verb: string) {
    this.#verb = verb;
  }

  update(layer: { index: number; sizeBytes: number }, doneBytes: number): void {
    if (this.#layer !== layer.index) {
      this.#line?.finish();
      this.#layer = layer.index;
      this.#line = new ProgressLine(`${this.#verb} layer ${layer.index}`);
    }
    this.#line!.update(doneBytes, layer.sizeBytes);
  }

  finish(): void {
    this.#line?.finish();
    this.#line = undefined;
    this.#layer = undefined;
  }
}
