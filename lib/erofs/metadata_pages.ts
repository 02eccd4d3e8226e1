/**
 * The page store of the metadata walk: which pages of the image are held, and a fetcher that
 * reads missing ones in coalesced ranged reads under a hard budget. Wanted pages are passed as
 * ranges, never as lists of page numbers: a hostile inode can claim terabytes, and even the list
 * of its page numbers must not be built (issue 9: 2,000 directories each claiming 256 MiB took
 * the server to 2.6 GB).
 */

export type ReadRange = (offset: number, length: number, signal?: AbortSignal) => Promise<
  Uint8Array
>;

/** Pages [first, last] (inclusive), by page index. */
export interface PageRange {
  first: number;
  last: number;
}

export interface PageBudget {
  /** Pages held at most; every held page counts as a whole page, even a short last one. */
  maxPages: number;
  /** Bytes the reads may return in total (pages plus the gaps read to coalesce them). */
  maxFetchBytes: number;
}

export interface FetchPolicy {
  concurrency: number;
  /** Pages closer than this are fetched in one read (the gap is read and dropped). */
  gapBytes: number;
  /** Largest single read. */
  maxReadBytes: number;
  /**
   * Bytes of the speculative first read from offset 0 (0: none). Later windows double while
   * the previous one was mostly metadata, up to `maxReadBytes`.
   */
  readAheadBytes?: number;
  signal?: AbortSignal;
}

/**
 * A speculative read: its pages are stored (and so pinned) only once the walk wants them, so
 * file data read along with metadata costs fetch budget but holds no page.
 */
interface ReadAhead {
  start: number;
  bytes: Uint8Array;
  /** Pages of it the walk wanted so far. */
  used: number;
}

export class MetadataPages {
  readonly pages: Map<number, Uint8Array>;
  pageBytes: number;
  /** Bytes of the held pages (short last page counted as it is). */
  heldBytes = 0;
  reads = 0;
  bytesRead = 0;
  /** Why a fetch left pages out (budget), sticky once set. */
  exhausted?: string;
  /** Reads that failed (their pages are not asked again). */
  failedReads = 0;
  readonly #sizeBytes: number;
  readonly #failed = new Set<number>();
  readonly #onPage?: (offset: number, bytes: Uint8Array) => void;
  readonly #read: ReadRange;
  #ahead?: ReadAhead;
  #speculated = false;

  constructor(
    read: ReadRange,
    sizeBytes: number,
    pageBytes: number,
    known?: Map<number, Uint8Array>,
    onPage?: (offset: number, bytes: Uint8Array) => void,
  ) {
    this.#read = read;
    this.#sizeBytes = sizeBytes;
    this.pageBytes = pageBytes;
    this.pages = new Map(known ?? []);
    for (const page of this.pages.values()) this.heldBytes += page.length;
    this.#onPage = onPage;
  }

  /** Switches to a larger page size (a block); pages held at the old size are dropped. */
  resize(pageBytes: number): void {
    if (pageBytes === this.pageBytes) return;
    this.pages.clear();
    this.#failed.clear();
    this.heldBytes = 0;
    this.pageBytes = pageBytes;
    if (this.#ahead) this.#ahead.used = 0;
  }

  /** The pages covering [offset, offset + length), or undefined when not inside the image. */
  rangeOf(offset: number, length: number): PageRange | undefined {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 ||
      length <= 0 || offset + length > this.#sizeBytes
    ) return undefined;
    return {
      first: Math.floor(offset / this.pageBytes),
      last: Math.floor((offset + length - 1) / this.pageBytes),
    };
  }

  /** Bytes at [offset, offset + length) when every page is held. */
  bytes(offset: number, length: number): Uint8Array | undefined {
    if (!this.rangeOf(offset, length)) return undefined;
    const pb = this.pageBytes;
    const first = Math.floor(offset / pb);
    const last = Math.floor((offset + length - 1) / pb);
    if (first === last) {
      const page = this.pages.get(first);
      const start = offset - first * pb;
      if (!page || page.length < start + length) return undefined;
      return page.subarray(start, start + length);
    }
    for (let p = first; p <= last; p++) if (!this.pages.has(p)) return undefined;
    const out = new Uint8Array(length);
    for (let p = first; p <= last; p++) {
      const page = this.pages.get(p)!;
      const from = Math.max(offset, p * pb);
      const to = Math.min(offset + length, p * pb + page.length);
      if (to < Math.min(offset + length, (p + 1) * pb)) return undefined;
      out.set(page.subarray(from - p * pb, to - p * pb), from - offset);
    }
    return out;
  }

  /**
   * Fetches the missing pages of `wanted` that fit the budget, in coalesced reads
   * (`concurrency` at a time). Pages beyond the budget are left out and `exhausted` says so.
   * A failed read drops its pages (never asked again); it does not reject.
   */
  async fetch(wanted: PageRange[], budget: PageBudget, policy: FetchPolicy): Promise<void> {
    let missing = this.#takeFromAhead(this.#admit(wanted, budget));
    if (!missing.length) return;
    const window = this.#nextWindow(missing, budget, policy);
    if (window && !policy.signal?.aborted) {
      await this.#readAhead(window.start, window.end, policy.signal);
      missing = this.#takeFromAhead(missing);
      if (!missing.length) return;
    }
    const pb = this.pageBytes;
    const gapPages = Math.floor(policy.gapBytes / pb);
    const maxRunPages = Math.max(1, Math.floor(policy.maxReadBytes / pb));
    // Each run holds the admitted pages it covers; the gaps between them are read and dropped.
    const runs: number[][] = [];
    for (const page of missing) {
      const run = runs.at(-1);
      if (run && page - run.at(-1)! - 1 <= gapPages && page - run[0] < maxRunPages) run.push(page);
      else runs.push([page]);
    }
    let next = 0;
    const worker = async () => {
      while (next < runs.length) {
        if (policy.signal?.aborted) return;
        const run = runs[next++];
        const start = run[0] * pb;
        const end = Math.min(this.#sizeBytes, (run.at(-1)! + 1) * pb);
        if (this.bytesRead + (end - start) > budget.maxFetchBytes) {
          this.exhausted ??= `reads above ${budget.maxFetchBytes} bytes`;
          return;
        }
        // Counted before the read so parallel workers cannot overshoot together.
        this.bytesRead += end - start;
        try {
          const bytes = await this.#read(start, end - start, policy.signal);
          if (bytes.length !== end - start) throw new Error("short read");
          this.reads++;
          for (const page of run) {
            const from = page * pb - start;
            // A copy: the read's buffer (gaps included) must not stay alive for one page.
            this.#store(page, bytes.slice(from, Math.min(from + pb, bytes.length)));
          }
        } catch {
          this.failedReads++;
          for (const page of run) this.#failed.add(page);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(policy.concurrency, runs.length) }, worker));
  }

  /**
   * The next speculative read, if any: the image's first bytes on a fresh store's first fetch,
   * then — only while the previous window was at least half wanted pages and the walk now wants
   * a page in the window right behind it — that window, twice as large (a packed metadata
   * prefix, as `erofs-oci build` writes, then comes in one or two reads instead of one per tree
   * level; metadata spread between file data, as mkfs.erofs writes it, stops it after the first).
   * Speculation never takes more than half of the fetch budget left, nor a quarter of the pages.
   */
  #nextWindow(
    missing: number[],
    budget: PageBudget,
    policy: FetchPolicy,
  ): { start: number; end: number } | undefined {
    const first = policy.readAheadBytes ?? 0;
    if (first <= 0) return undefined;
    const pb = this.pageBytes;
    let start: number, length: number;
    const ahead = this.#ahead;
    if (!ahead) {
      if (this.#speculated || this.reads > 0 || this.failedReads > 0 || missing[0] !== 0) {
        return undefined;
      }
      start = 0;
      length = first;
    } else {
      const pages = Math.ceil(ahead.bytes.length / pb);
      if (ahead.used * 2 < pages) return undefined;
      start = ahead.start + ahead.bytes.length;
      // Doubled, or up to the last page wanted now when that is further (one read, not two).
      length = Math.min(
        policy.maxReadBytes,
        Math.max(2 * ahead.bytes.length, (missing[missing.length - 1] + 1) * pb - start),
      );
      const wantedAt = missing[0] * pb;
      if (start % pb !== 0 || wantedAt < start || wantedAt >= start + length) return undefined;
    }
    length = Math.min(
      length,
      Math.floor((budget.maxFetchBytes - this.bytesRead) / 2),
      Math.floor(budget.maxPages / 4) * pb,
      this.#sizeBytes - start,
    );
    if (length < 2 * pb) return undefined;
    return { start, end: start + length };
  }

  async #readAhead(start: number, end: number, signal?: AbortSignal): Promise<void> {
    this.bytesRead += end - start;
    this.#ahead = undefined;
    this.#speculated = true;
    try {
      const bytes = await this.#read(start, end - start, signal);
      if (bytes.length !== end - start) throw new Error("short read");
      this.reads++;
      this.#ahead = { start, bytes, used: 0 };
    } catch {
      // Speculative: its pages are asked again by the ordinary reads; no branch is lost.
    }
  }

  /** Stores the pages of `missing` the read-ahead holds; returns the others. */
  #takeFromAhead(missing: number[]): number[] {
    const ahead = this.#ahead;
    if (!ahead || !missing.length) return missing;
    const pb = this.pageBytes;
    const end = ahead.start + ahead.bytes.length;
    return missing.filter((page) => {
      const from = page * pb;
      const to = Math.min(from + pb, this.#sizeBytes);
      if (from < ahead.start || to > end) return true;
      ahead.used++;
      this.#store(page, ahead.bytes.slice(from - ahead.start, to - ahead.start));
      return false;
    });
  }

  /**
   * Missing pages of `wanted`, ascending, no more than the budget leaves room for. Walks the
   * merged ranges page by page but stops once the budget is full, so the work is bounded by
   * the pages held plus the budget, whatever the ranges claim.
   */
  #admit(wanted: PageRange[], budget: PageBudget): number[] {
    const merged = [...wanted].sort((a, b) => a.first - b.first);
    const room = budget.maxPages - this.pages.size;
    const out: number[] = [];
    let from = 0;
    for (const range of merged) {
      for (let page = Math.max(range.first, from); page <= range.last; page++) {
        if (this.pages.has(page) || this.#failed.has(page)) continue;
        if (out.length >= room) {
          this.exhausted ??= `metadata above ${budget.maxPages} pages of ${this.pageBytes} bytes`;
          return out;
        }
        out.push(page);
      }
      from = Math.max(from, range.last + 1);
    }
    return out;
  }

  #store(index: number, bytes: Uint8Array): void {
    if (this.pages.has(index)) return;
    this.pages.set(index, bytes);
    this.heldBytes += bytes.length;
    this.#onPage?.(index * this.pageBytes, bytes);
  }
}
