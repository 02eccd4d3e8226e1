/**
 * The parts of one disk-cached blob, made and wired to each other: what each is told of the
 * blob's files and of its state, and the hooks by which they call one another. Apart from
 * disk_cached.ts, which owns the blob's life (open, refusal, close) and its state and answers the
 * `Source` API through these parts; where each part lives is in its header.
 */
import type { Source } from "./source.ts";
import type { DiskCache } from "./disk_cache.ts";
import { type DigestCheckOptions, WholeDigestCheck } from "./disk_cache_whole_check.ts";
import { BlobFiller, type FillStats } from "./disk_cache_fill.ts";
import { isPresent } from "./disk_cache_present.ts";
import type { VerifyChunk } from "./disk_cache_fetch.ts";
import { BlobChunks, useStamp } from "./disk_cache_chunks.ts";
import { KeptChunkCheck } from "./disk_cache_kept_check.ts";
import { BlobSidecar } from "./disk_cache_sidecar.ts";
import { BlobFetchAhead } from "./disk_cache_ahead.ts";
import { BlobReader, type ReadStats } from "./disk_cache_read.ts";
import { CheckedChunks, storedBytesChecker } from "./stored_check.ts";

/** What the parts are made from: the blob, its open files and what its owner keeps. */
export interface BlobPartsInput {
  readonly cache: DiskCache;
  readonly inner: Source;
  /** The blob's files without .map/.data. */
  readonly base: string;
  readonly verify: VerifyChunk | undefined;
  readonly fds: { map: number; data: number };
  readonly sidecarAhead: Promise<Uint8Array | undefined> | undefined;
  readonly check: DigestCheckOptions;
  /** Aborted when the source closes. */
  readonly closing: AbortSignal;
  /** The disk failed: nothing more is stored. */
  isDegraded(): boolean;
  /** Called once the files failed (after which isDegraded() is true). */
  degrade(): void;
  /** Set when the blob's bytes were refused: the error every read rejects with. */
  corruption(): Error | undefined;
  /** Every read fails with `reason` from now on, and every chunk is dropped. */
  refuse(reason: string): Promise<void>;
}

/** The counters the parts add to (DiskCacheStats without what is asked of the parts). */
export type BlobCounters = FillStats & ReadStats;

/** One blob's parts. */
export interface BlobParts {
  readonly size: number;
  readonly chunkBytes: number;
  readonly chunkCount: number;
  /** The chunks in the files: locked reads, drops (disk_cache_chunks.ts). */
  readonly chunks: BlobChunks;
  /** The fill and sync protocol (disk_cache_fill.ts). */
  readonly filler: BlobFiller;
  /**
   * The check of chunks found in the files (disk_cache_kept_check.ts), when the source below
   * checks bytes against a table (stored_check.ts): chunks found in the files are checked once
   * in this process before any reader gets them, as its own fills were.
   */
  readonly keptCheck?: KeptChunkCheck;
  /** What is fetched beyond a read (disk_cache_ahead.ts). */
  readonly ahead: BlobFetchAhead;
  /** The read path and the blob's recency (disk_cache_read.ts). */
  readonly reader: BlobReader;
  /** The whole-blob digest check (disk_cache_whole_check.ts). */
  readonly wholeCheck: WholeDigestCheck;
  /** The blob's `.meta` file (disk_cache_sidecar.ts). */
  readonly sidecar: BlobSidecar;
  readonly counters: BlobCounters;
}

/** Makes the parts of the blob whose files `input.fds` are (see above). */
export function makeBlobParts(input: BlobPartsInput): BlobParts {
  const { cache, inner, base, verify, fds, sidecarAhead, check } = input;
  const size = inner.size;
  const chunkBytes = cache.chunkBytes;
  const chunkCount = Math.ceil(size / chunkBytes);
  const checker = storedBytesChecker(inner);
  const checked = checker ? new CheckedChunks(chunkCount) : undefined;
  /** Chunks known present, least recently read first (chunk eviction order). */
  const lru = new Map<number, number>();
  const counters: BlobCounters = {
    diskHitBytes: 0,
    fetchedBytes: 0,
    fetches: 0,
    waitedForOthers: 0,
    syncs: 0,
    readsBeforeDurable: 0,
    readsWaitedForSync: 0,
  };
  // What every part is told of the blob's files.
  const files = {
    base,
    mapFd: fds.map,
    dataFd: fds.data,
    size,
    chunkBytes,
    chunkCount,
    closing: input.closing,
    lru,
    warn: (message: string) => cache.warnOnce(message),
  };
  // What the parts are told of the blob's state: the disk failed, its bytes were refused.
  const state = {
    isDegraded: () => input.isDegraded(),
    degrade: () => input.degrade(),
    corruption: () => input.corruption(),
  };
  const chunks: BlobChunks = new BlobChunks({
    ...files,
    checked,
    isFilling: (index) => filler.isFilling(index),
    isWritten: (index) => filler.isWritten(index),
  });
  const filler: BlobFiller = new BlobFiller({
    ...files,
    cache,
    inner,
    verify,
    ...state,
    readMap: (start, stop) => chunks.readMap(start, stop),
    stored: (first, end) => checked?.mark(first, end),
    marked: () => wholeCheck.soon(),
  }, counters);
  const keptCheck = checker && checked
    ? new KeptChunkCheck({ ...files, checker, checked, filler, chunks })
    : undefined;
  const ahead = new BlobFetchAhead({ ...files, ...state, chunks, filler });
  const reader = new BlobReader({
    ...files,
    ...state,
    inner,
    chunks,
    filler,
    ahead,
    checked,
    keptCheck,
  }, counters);
  const sidecar = new BlobSidecar(cache, base, {
    closed: () => input.closing.aborted,
    degraded: () => input.isDegraded(),
  }, sidecarAhead);
  const map = chunks.readMap(0, chunkCount);
  // Kept from before: as recently used as this open, in the order of the blob.
  const opened = useStamp();
  map.forEach((byte, index) => isPresent(byte) && lru.set(index, opened));
  // Nothing but its digest checks a blob without a chunk table (neither `verify` nor a
  // checking source below): it checks itself once complete, and records a passed check.
  const tableLess = !verify && !checker;
  const wholeCheck: WholeDigestCheck = new WholeDigestCheck({
    ...files,
    stopped: () => input.isDegraded() || input.corruption() !== undefined,
    isComplete: () => chunks.readMap(0, chunkCount).every(isPresent),
    readPresentInto: (into, offset) => chunks.readPresentInto(into, offset),
    refuse: (reason) => input.refuse(reason),
  }, {
    ownDigest: tableLess ? check.digest : undefined,
    auto: check.auto,
    prepare: keptCheck ? () => keptCheck.checkAll() : undefined,
    report: check.report,
  });
  return {
    size,
    chunkBytes,
    chunkCount,
    chunks,
    filler,
    keptCheck,
    ahead,
    reader,
    wholeCheck,
    sidecar,
    counters,
  };
}
