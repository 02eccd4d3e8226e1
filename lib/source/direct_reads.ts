/**
 * Direct reads: a source whose bytes sit in a disk cache file can let another thread (the
 * FUSE reader, lib/fuse/reader_worker.ts) answer reads of present chunks by itself, without a
 * round trip through this thread's event loop. That thread follows the disk cache's reader
 * protocol (map byte present, OFD read lock on the chunks, map again, pread, unlock) on
 * descriptors of its own, and reports what it served so the cache keeps its LRU order,
 * readahead and statistics. Layers in front of the disk cache forward both calls when they
 * add nothing a served read would miss (pinned pages hold the same bytes as the disk).
 */
import type { SharedActivityArg } from "./read_activity_cell.ts";
import type { Source } from "./source.ts";

/** Descriptors and layout another thread needs to read present chunks. */
export interface DirectReadFiles {
  /** Presence map, one byte per chunk (its own open file description: see above). */
  readonly mapFd: number;
  readonly dataFd: number;
  readonly chunkBytes: number;
  readonly sizeBytes: number;
  /** The map bytes of chunks readers may read (disk_cache_present.ts isPresent). */
  readonly presentBytes: readonly number[];
  /**
   * When given (over shared memory), a chunk is read only once its byte here is 1: checked by
   * this process since it opened the files (stored_check.ts CheckedChunks).
   */
  readonly checked?: Uint8Array;
  /**
   * Pages pinned in front of the disk cache (PrefetchedSource), readable by that thread too:
   * `fd` holds each page at its offset once byte `page` of `mapFd` is 1 (written after the
   * page). Pins are never dropped, so no lock is needed.
   */
  readonly pins?: PinnedPageFile;
  /** Where the reader thread records the reads it answers (PrefetchedSource's pacing). */
  readonly activity?: SharedActivityArg;
  /** Closes the descriptors; only once no thread uses them. */
  close(): void;
}

/** See DirectReadFiles.pins. */
export interface PinnedPageFile {
  readonly fd: number;
  readonly mapFd: number;
  readonly pageBytes: number;
}

export interface DirectReadable {
  /** Fresh descriptors for direct reads, or undefined when this source cannot offer them. */
  openDirectReads(): DirectReadFiles | undefined;
  /** Reads another thread answered directly: [offset, length] pairs, in any order. */
  noteDirectReads(ranges: readonly number[]): void;
}

export function isDirectReadable(source: Source): source is Source & DirectReadable {
  const candidate = source as Partial<DirectReadable>;
  return typeof candidate.openDirectReads === "function" &&
    typeof candidate.noteDirectReads === "function";
}
