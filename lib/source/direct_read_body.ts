/**
 * The reading side of direct reads (direct_reads.ts), for a worker thread that answers reads
 * itself: the FUSE reader (lib/fuse/reader_worker.ts) and the NBD reader
 * (lib/nbd/reader_worker.ts). `directReaderBody` is self-contained (no imports, no outer
 * variables): workers get it as a helper, shipped as source text (ffi/libc_worker.ts).
 */
import type { ErrnoReader } from "../../ffi/libc_worker.ts";
import type { LibcSymbols } from "../../ffi/libc.ts";
import type { DirectReadFiles } from "./direct_reads.ts";
import type { ActivityRecorder, SharedActivityArg } from "./read_activity_cell.ts";

/** What a reader thread needs of DirectReadFiles: descriptors, layout, the activity cell. */
export interface DirectReadArg {
  mapFd: number;
  dataFd: number;
  chunkBytes: number;
  sizeBytes: number;
  /** The map bytes of chunks readers may read (disk_cache_present.ts isPresent). */
  presentBytes: readonly number[];
  /** DirectReadFiles.checked: shared memory, one byte per chunk, 1 once checked. */
  checked?: Uint8Array;
  /**
   * Pinned pages (PinnedPageFile): a read all of whose pages have map byte 1 in `mapFd`
   * (written after the page) is read from `fd`, chunks or not.
   */
  pins?: { fd: number; mapFd: number; pageBytes: number };
  /** Where the thread records what it answered (read_activity_cell.ts). */
  activity?: SharedActivityArg;
}

/** The thread-safe part of `files`, to send to a reader thread. */
export function directReadArg(files: DirectReadFiles): DirectReadArg {
  return {
    mapFd: files.mapFd,
    dataFd: files.dataFd,
    chunkBytes: files.chunkBytes,
    sizeBytes: files.sizeBytes,
    presentBytes: [...files.presentBytes],
    ...(files.checked ? { checked: files.checked } : {}),
    pins: files.pins && {
      fd: files.pins.fd,
      mapFd: files.pins.mapFd,
      pageBytes: files.pins.pageBytes,
    },
    activity: files.activity,
  };
}

/**
 * Fills `dest` with the bytes at `offset` when all of them are pinned or in present chunks, and
 * returns true; false when not (the caller hands the read to the main thread). Follows the disk
 * cache's reader protocol: map bytes present, OFD read lock on the chunks, map again, pread,
 * unlock — evictors clear the map byte, then punch the hole, under a write lock.
 */
export type DirectRead = (offset: number, dest: Uint8Array) => boolean;

/**
 * Worker helper (self-contained): the DirectRead of `direct`; `recorder` is told of each read it
 * answers (from pinned pages, or not).
 */
export function directReaderBody(
  libc: LibcSymbols,
  errno: ErrnoReader,
  direct: DirectReadArg,
  recorder?: ActivityRecorder,
): DirectRead {
  const EINTR = 4;
  /** fcntl.h: OFD lock command and lock types. */
  const F_OFD_SETLK = 37, F_RDLCK = 0, F_UNLCK = 2;
  const map = new Uint8Array(64);
  // struct flock (64-bit): l_type i16 @0, l_whence i16 @2, l_start i64 @8, l_len i64 @16,
  // l_pid i32 @24 (0 for OFD locks).
  const flock = new Uint8Array(32);
  const flockView = new DataView(flock.buffer);
  const lock = (type: number, first: number, count: number): boolean => {
    flockView.setInt16(0, type, true);
    flockView.setBigInt64(8, BigInt(first), true);
    flockView.setBigInt64(16, BigInt(count), true);
    for (;;) {
      if (libc.fcntl_lock(direct.mapFd, F_OFD_SETLK, flock) === 0) return true;
      if (errno() !== EINTR) return false;
    }
  };
  const allPresent = (first: number, count: number): boolean => {
    const chunks = map.subarray(0, count);
    if (Number(libc.pread(direct.mapFd, chunks, BigInt(count), BigInt(first))) !== count) {
      return false;
    }
    if (!chunks.every((byte) => direct.presentBytes.includes(byte))) return false;
    const checked = direct.checked;
    if (!checked) return true;
    for (let c = first; c < first + count; c++) if (Atomics.load(checked, c) !== 1) return false;
    return true;
  };
  const pinMap = new Uint8Array(512);
  const allPinned = (offset: number, length: number): boolean => {
    const pins = direct.pins!;
    const first = Math.floor(offset / pins.pageBytes);
    const count = Math.floor((offset + length - 1) / pins.pageBytes) + 1 - first;
    if (count > pinMap.length) return false;
    const bytes = pinMap.subarray(0, count);
    if (Number(libc.pread(pins.mapFd, bytes, BigInt(count), BigInt(first))) !== count) {
      return false;
    }
    return bytes.every((byte) => byte === 1);
  };
  return (offset, dest) => {
    const length = dest.length;
    if (!(length > 0) || offset < 0 || offset + length > direct.sizeBytes) return false;
    if (direct.pins && allPinned(offset, length)) {
      if (Number(libc.pread(direct.pins.fd, dest, BigInt(length), BigInt(offset))) === length) {
        recorder?.pinned();
        return true;
      }
    }
    const first = Math.floor(offset / direct.chunkBytes);
    const count = Math.floor((offset + length - 1) / direct.chunkBytes) + 1 - first;
    if (count > map.length || !allPresent(first, count)) return false;
    // Under the read lock the map is read again: an evictor may have come in between.
    if (!lock(F_RDLCK, first, count)) return false;
    try {
      if (!allPresent(first, count)) return false;
      if (Number(libc.pread(direct.dataFd, dest, BigInt(length), BigInt(offset))) !== length) {
        return false;
      }
      recorder?.data();
      return true;
    } finally {
      lock(F_UNLCK, first, count);
    }
  };
}
