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

  readonly #out: (text: string) => void;

  constructor(
    label: string,
    enabled = Deno.stderr.isTerminal(),
    out: (text: string) => void = writeStderr,
  ) {
    this.#label = label;
    this.#enabled = enabled;
    this.#out = out;
  }

  /** Redraws at most every 100 ms (and always at completion). */
  update(doneBytes: number, totalBytes?: number): void {
    const complete = totalBytes !== undefined && doneBytes >= totalBytes;
    this.#draw(
      complete,
      () =>
        totalBytes
          ? `${formatBytes(doneBytes)} / ${formatBytes(totalBytes)} (${
            Math.floor((doneBytes / totalBytes) * 100)
          }%)`
          : formatBytes(doneBytes),
    );
  }

  /** The same for work counted in entries (files, tar members), not bytes. */
  updateEntries(entries: number): void {
    this.#draw(false, () => `${entries.toLocaleString("en-US")} entries`);
  }

  #draw(complete: boolean, amount: () => string): void {
    if (!this.#enabled) return;
    const now = Date.now();
    if (!complete && now - this.#lastDrawMs < REDRAW_INTERVAL_MS) return;
    this.#lastDrawMs = now;
    this.#write(`\r\x1b[K${this.#label} ${amount()}`);
    this.#drawn = true;
  }

  /** Ends the line so later output starts on a fresh one. */
  finish(): void {
    if (this.#enabled && this.#drawn) this.#write("\n");
    this.#drawn = false;
  }

  #write(text: string): void {
    this.#out(text);
  }
}

function writeStderr(text: string): void {
  try {
    Deno.stderr.writeSync(new TextEncoder().encode(text));
  } catch { /* a closed stderr must not fail the transfer */ }
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
