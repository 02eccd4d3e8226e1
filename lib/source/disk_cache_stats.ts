/**
 * The counters of one disk-cached blob (DiskCachedSource.diskStats), in their own file because
 * the layers above the cache (cached.ts's stats, disk_passthrough.ts) name the shape without
 * needing the class.
 */
export interface DiskCacheStats {
  /** Bytes of reads answered from the file without fetching anything for them. */
  diskHitBytes: number;
  /** Bytes and reads fetched from the inner source (the registry). */
  fetchedBytes: number;
  fetches: number;
  /** Fills that found another process fetching the same chunks and waited for it. */
  waitedForOthers: number;
  /** Chunks dropped by eviction. */
  evictedChunks: number;
  /**
   * Chunks found in the files whose bytes failed the chunk table's check when read back here
   * (damaged on disk): dropped and fetched again.
   */
  damagedChunks: number;
  /** The disk failed: missing bytes come from the inner source without being stored. */
  degraded: boolean;
  /** The whole blob was fetched and did not hash to its digest: every read fails. */
  digestMismatch: boolean;
  /**
   * Hashes of the whole blob against its digest (disk_cache_whole_check.ts): one per completion
   * of a blob without a chunk table; none when a passed check is recorded in its files.
   */
  digestHashes: number;
  /** fdatasync calls of the data file (group commits). */
  syncs: number;
  /**
   * Reads answered from chunks verified and written but not yet durable (their fill's sync
   * still running): what a reader would otherwise have waited for.
   */
  readsBeforeDurable: number;
  /** Reads that waited for a sync of the data file (0: no fdatasync on a reader's path). */
  readsWaitedForSync: number;
}
