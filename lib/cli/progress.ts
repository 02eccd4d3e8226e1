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
  #lastDrawMs = -Infinity;
  #drawn = false;

  readonly #out: (text: string) => void;
  readonly #nowMs: () => number;
  readonly #startMs: number;
  /** The latest amount a redraw skipped (too soon after the last): finish() shows it. */
  #pending: (() => string) | undefined;

  constructor(
    label: string,
    enabled = Deno.stderr.isTerminal(),
    out: (text: string) => void = writeStderr,
    nowMs: () => number = Date.now,
  ) {
    this.#label = label;
    this.#enabled = enabled;
    this.#out = out;
    this.#nowMs = nowMs;
    this.#startMs = nowMs();
  }

  /** Redraws at most every 100 ms (and always at completion). */
  update(doneBytes: number, totalBytes?: number): void {
    const complete = totalBytes !== undefined && doneBytes >= totalBytes;
    this.#draw(complete, () => bytesOfTotal(doneBytes, totalBytes));
  }

  /** The same for work counted in entries (files, tar members), not bytes. */
  updateEntries(entries: number): void {
    this.#draw(false, () => `${entries.toLocaleString("en-US")} entries`);
  }

  /**
   * Bytes read from a file or a pipe, with the entries found in them: against the total when
   * known, else with the rate since the line began (a pipe's length is known only at its end).
   */
  updateRead(doneBytes: number, totalBytes: number | undefined, entries: number): void {
    this.#draw(false, () => {
      const elapsedMs = this.#nowMs() - this.#startMs;
      const amount = totalBytes !== undefined || elapsedMs <= 0
        ? bytesOfTotal(doneBytes, totalBytes)
        : `${formatBytes(doneBytes)} (${formatBytes(Math.round(doneBytes / elapsedMs * 1000))}/s)`;
      return `${amount}, ${entries.toLocaleString("en-US")} entries`;
    });
  }

  #draw(complete: boolean, amount: () => string): void {
    if (!this.#enabled) return;
    const now = this.#nowMs();
    if (!complete && now - this.#lastDrawMs < REDRAW_INTERVAL_MS) {
      this.#pending = amount;
      return;
    }
    this.#lastDrawMs = now;
    this.#pending = undefined;
    this.#write(`\r\x1b[K${this.#label} ${amount()}`);
    this.#drawn = true;
    openLine = this;
  }

  /** Shows the last amount a redraw skipped, then ends the line for later output. */
  finish(): void {
    if (this.#pending) {
      this.#write(`\r\x1b[K${this.#label} ${this.#pending()}`);
      this.#drawn = true;
    }
    this.end();
  }

  /** Ends the line drawn so far (nothing more drawn), for a message after it. */
  end(): void {
    if (this.#enabled && this.#drawn) this.#write("\n");
    this.#drawn = false;
    this.#pending = undefined;
    if (openLine === this) openLine = undefined;
  }

  #write(text: string): void {
    this.#out(text);
  }
}

/** The progress line drawn last and not finished: a message would be glued to its end. */
let openLine: ProgressLine | undefined;

/** Ends a progress line left open (Ctrl-C in the middle of the work) before a message. */
export function endOpenProgressLine(): void {
  openLine?.end();
}

/** "4.0 KiB / 8.0 KiB (50%)", or the bytes alone without a total. */
function bytesOfTotal(doneBytes: number, totalBytes: number | undefined): string {
  return totalBytes
    ? `${formatBytes(doneBytes)} / ${formatBytes(totalBytes)} (${
      Math.floor((doneBytes / totalBytes) * 100)
    }%)`
    : formatBytes(doneBytes);
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
