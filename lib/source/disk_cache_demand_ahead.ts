/**
 * How far a demand fetch of the disk cache runs past the read that needed it
 * (DiskCachedSource.setDemandAheadBytes): to the end of the read's aligned block of `bytes` and
 * the `blocks - 1` blocks after it, stopping at the first chunk that is not absent. Apart from
 * disk_cache_ahead.ts, which runs it, because it is a policy of its own (set by
 * metadata_prefetch.ts from an image's layout); the blob gives it its chunk map and what its
 * fills hold.
 */

/** What the window needs of the blob: its geometry, its map, and the chunks its fills hold. */
export interface DemandAheadBlob {
  readonly chunkBytes: number;
  readonly chunkCount: number;
  /** Map bytes of chunks [start, stop). */
  readMap(start: number, stop: number): Uint8Array;
  /** True when chunk `index` (its map byte `byte`) is present, being filled or written. */
  isHeld(byte: number, index: number): boolean;
}

export class DemandAhead {
  /** A demand fetch runs on past the read to the end of the `blocks`-th aligned block of `bytes`. */
  #demandAhead = { bytes: 0, blocks: 1 };

  /** See DiskCachedSource.setDemandAheadBytes. */
  set(bytes: number, blocks = 1): void {
    this.#demandAhead = {
      bytes: Math.max(0, Math.floor(bytes)),
      blocks: Math.max(1, Math.floor(blocks)),
    };
  }

  /**
   * Chunks from `from` (the one after a read's last chunk) to the end of the demand-ahead
   * blocks (setDemandAheadBytes), up to the first one not absent.
   */
  chunksFrom(from: number, blob: DemandAheadBlob): number[] {
    const { bytes: block, blocks } = this.#demandAhead;
    if (block <= blob.chunkBytes || from >= blob.chunkCount) return [];
    const readBlock = Math.floor((from - 1) * blob.chunkBytes / block);
    const stop = Math.min(
      blob.chunkCount,
      Math.ceil((readBlock + blocks) * block / blob.chunkBytes),
    );
    if (stop <= from) return [];
    const ahead: number[] = [];
    const map = blob.readMap(from, stop);
    for (let c = from; c < stop; c++) {
      if (blob.isHeld(map[c - from], c)) break;
      ahead.push(c);
    }
    return ahead;
  }
}
