/**
 * The whole-blob digest check of a disk-cached blob. A layer without a chunk-digest table is
 * checked by nothing else: the bytes a registry sent are kept in the cache and read by later
 * mounts of the same origin. So once such a blob's data is complete (a cold read of every file,
 * a blob found complete at open, fills of this process, `--fetch-all`), it is hashed against
 * its digest once, in the background: a mismatch drops every chunk (no mount reads them again)
 * and fails the source's reads, a match is recorded in the blob's files (`<base>.sum`,
 * disk_cache_sum.ts) so that the next open of the complete blob does not hash it again. A blob
 * with a table is hashed only when asked (`--fetch-all`), after its kept chunks are checked.
 * Bounded memory, and the event loop is yielded between pieces (digestOfPieces).
 */
import { digestOfPieces } from "./disk_cache_digest.ts";
import { beginSumCheck, recordSum, type SumFiles } from "./disk_cache_sum.ts";
import { after, sleep, type Timer } from "../timers.ts";

/** The whole-blob digest check of one DiskCachedSource, as DiskCache asks for it. */
export interface DigestCheckOptions {
  /** The blob's digest: a blob without a chunk table is checked against it once complete. */
  digest: string;
  /** Check by itself once complete (false: only when checkDigest is called). */
  auto: boolean;
  /** Told the end of every check that hashed the blob. */
  report: (digest: string, end: DigestCheckEnd, tookMs: number) => void;
}

/**
 * "ok": the blob hashed to the digest (now or, recorded, before); "mismatch": it did not, its
 * chunks are dropped and its reads fail; "incomplete": a chunk is absent (evicted meanwhile) or
 * the source closed, nothing is known.
 */
export type DigestCheckEnd = "ok" | "mismatch" | "incomplete";

export interface WholeCheckBlob extends SumFiles {
  size: number;
  closing: AbortSignal;
  /** The disk failed or the bytes were refused: nothing to check any more. */
  stopped(): boolean;
  /** Every chunk is present now. */
  isComplete(): boolean;
  /** Copies the bytes at `offset` if every chunk there is present (read-locked), else false. */
  readPresentInto(into: Uint8Array, offset: number): Promise<boolean>;
  /** Drops every chunk and fails every read from now on with `reason`. */
  refuse(reason: string): Promise<void>;
  warn(message: string): void;
}

export interface WholeCheckOptions {
  /**
   * Given for a blob without a chunk table: the digest it is checked against by itself once
   * complete (unless `auto` is false), and passed checks are recorded in `<base>.sum`.
   */
  ownDigest?: string;
  /** Check by itself once complete (default true with ownDigest). */
  auto?: boolean;
  /** Run before each hash (a table's kept chunks are checked first); false: incomplete. */
  prepare?: () => Promise<boolean>;
  /** Told the end of every check that hashed the blob (not of one found recorded). */
  report: (digest: string, end: DigestCheckEnd, tookMs: number) => void;
}

/** After a fill completes the blob, readers are likely still at it: the hash waits this long. */
const AUTO_DELAY_MS = 250;
const POLL_MS = 10;
/** Tries of a step of the record (disk_cache_sum.ts) while a chunk's lock is held. */
const BUSY_TRIES = 100;

export class WholeDigestCheck {
  readonly #blob: WholeCheckBlob;
  readonly #options: WholeCheckOptions;
  #running?: { digest: string; end: Promise<DigestCheckEnd> };
  /** Every check started, for close() to wait for. */
  #all: Promise<unknown> = Promise.resolve();
  #timer?: Timer;
  /** Settles when the pending automatic check's timer has run (or was cleared). */
  #timerRan?: Promise<void>;
  #timerRanResolve?: () => void;
  /** A fill ended while a check ran: once it ends, look again. */
  #filledWhileRunning = false;
  /** Hashes of the whole blob started (a blob found recorded is not hashed). */
  hashes = 0;

  constructor(blob: WholeCheckBlob, options: WholeCheckOptions) {
    this.#blob = blob;
    this.#options = options;
  }

  get #auto(): boolean {
    return this.#options.ownDigest !== undefined && this.#options.auto !== false;
  }

  /**
   * Checks the complete blob against `digest`, joining a check of the same digest under way.
   * The source's close() waits for it (through close() here).
   */
  check(digest: string): Promise<DigestCheckEnd> {
    if (this.#blob.closing.aborted) return Promise.resolve("incomplete");
    if (this.#running?.digest === digest) return this.#running.end;
    const startedMs = Date.now();
    const end = this.#run(digest).then(({ end, hashed }) => {
      if (hashed) this.#options.report(digest, end, Date.now() - startedMs);
      return end;
    });
    const running = { digest, end };
    this.#running = running;
    this.#all = Promise.allSettled([this.#all, end]);
    const after = () => {
      if (this.#running === running) this.#running = undefined;
      if (this.#filledWhileRunning) {
        this.#filledWhileRunning = false;
        this.soon();
      }
    };
    end.then(after, after);
    return end;
  }

  /**
   * The blob was opened, or a fill here marked chunks: once it is complete, it is checked
   * against its own digest, a moment later (off the readers' way).
   */
  soon(): void {
    if (!this.#auto || this.#blob.closing.aborted) return;
    if (this.#running) {
      this.#filledWhileRunning = true;
      return;
    }
    if (this.#timer !== undefined) return;
    this.#timerRan = new Promise((resolve) => this.#timerRanResolve = resolve);
    this.#timer = after(AUTO_DELAY_MS, () => {
      this.#timer = undefined;
      this.#timerRanResolve!();
      if (this.#blob.closing.aborted || this.#blob.stopped()) return;
      try {
        if (!this.#blob.isComplete()) return;
      } catch {
        return; // the map unreadable: the reads that need it say so
      }
      this.check(this.#options.ownDigest!).catch((error) =>
        this.#blob.warn(`digest check of ${this.#blob.base}: ${(error as Error).message}`)
      );
    });
  }

  /**
   * @internal for tests: resolves once no automatic check is pending and none runs (the
   * checks' ends are known, or none was due).
   */
  async settled(): Promise<void> {
    while (this.#timer !== undefined || this.#running) {
      if (this.#timer !== undefined) await this.#timerRan;
      else await this.#running!.end.catch(() => {});
    }
  }

  /** Stops a pending automatic check and waits for the checks under way (they see `closing`). */
  async close(): Promise<void> {
    this.#timer?.cancel();
    this.#timer = undefined;
    this.#timerRanResolve?.();
    await this.#all;
  }

  async #run(digest: string): Promise<{ end: DigestCheckEnd; hashed: boolean }> {
    const incomplete = { end: "incomplete", hashed: false } as const;
    if (this.#options.prepare && !(await this.#options.prepare())) return incomplete;
    const recording = this.#options.ownDigest === digest;
    let token: string | undefined;
    if (recording) {
      const begun = await this.#whenNotBusy(() => beginSumCheck(this.#blob, digest));
      if (begun === "recorded") return { end: "ok", hashed: false };
      if (begun === "incomplete" || begun === "busy") return incomplete;
      token = begun?.token; // undefined: the record could not be written, the hash still runs
    }
    this.hashes++;
    const readPiece = (into: Uint8Array, offset: number) =>
      this.#blob.readPresentInto(into, offset);
    const actual = await digestOfPieces(readPiece, this.#blob.size, digest, this.#blob.closing);
    if (actual === undefined) return incomplete; // closed, or a chunk evicted meanwhile
    if (actual === digest) {
      if (token !== undefined) await this.#whenNotBusy(() => recordSum(this.#blob, digest, token));
      return { end: "ok", hashed: true };
    }
    await this.#blob.refuse(
      `layer ${digest}: the fetched bytes hash to ${actual}, not to the layer digest; reads fail`,
    );
    return { end: "mismatch", hashed: true };
  }

  /**
   * Runs a step of the record until no filler or evictor holds a chunk; undefined when the
   * files fail (said once: the check goes on without its record).
   */
  async #whenNotBusy<T>(step: () => T | "busy"): Promise<T | "busy" | undefined> {
    try {
      for (let tries = 1;; tries++) {
        const result = step();
        if (result !== "busy" || tries >= BUSY_TRIES || this.#blob.closing.aborted) return result;
        await sleep(POLL_MS);
      }
    } catch (error) {
      this.#blob.warn(`disk cache ${this.#blob.base}.sum: ${(error as Error).message}`);
      return undefined;
    }
  }
}
