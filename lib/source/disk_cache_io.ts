/**
 * File primitives of the disk cache: positioned I/O, open-file-description byte-range locks
 * (they belong to the descriptor, so two sources in one process exclude each other like two
 * processes do, and the kernel drops them when a process dies, even by kill -9), hole punching.
 */
import {
  cstr,
  Errno,
  errno,
  libc,
  O_CLOEXEC,
  O_CREAT,
  O_NOFOLLOW,
  O_RDONLY,
  O_RDWR,
  O_TMPFILE,
  SysError,
  unwrap,
} from "../../ffi/libc.ts";
import { fstatFd, preadFully, pwriteFully, S_IFMT, S_IFREG } from "../../ffi/files.ts";

// fcntl.h (asm-generic): OFD lock commands and lock types.
const F_OFD_GETLK = 36, F_OFD_SETLK = 37;
export const F_RDLCK = 0, F_WRLCK = 1;
const F_UNLCK = 2;
/** The map byte the "blob in use" lock covers (locks may lie past the end of a file). */
export const IN_USE_OFFSET = 2 ** 40;
/** fallocate(2) modes (linux/falloc.h): punching must keep the size. */
const FALLOC_FL_KEEP_SIZE = 1, FALLOC_FL_PUNCH_HOLE = 2;

/**
 * Opens the file behind `fd` again, read-only: a new open file description, whose OFD locks
 * conflict with those taken through `fd` as another process's would.
 */
export function reopenReadOnly(fd: number): number {
  const copy = libc().open(cstr(`/proc/self/fd/${fd}`), O_RDONLY | O_CLOEXEC, 0);
  if (copy < 0) throw new SysError("open", errno(), `/proc/self/fd/${fd}`);
  return copy;
}

/**
 * Opens a regular file read-write without following a symlink, creating it (mode 0600) unless
 * `create` is false.
 */
export function openCacheFile(path: string, create = true): number {
  return openRegularCacheFile(path, O_RDWR | (create ? O_CREAT : 0));
}

/**
 * An existing cache file, read-only without following a symlink: for a look (`erofs-oci cache`),
 * which on a read-only cache saw no map and listed complete blobs as empty.
 */
export function openCacheFileForReading(path: string): number {
  return openRegularCacheFile(path, O_RDONLY);
}

function openRegularCacheFile(path: string, mode: number): number {
  const flags = mode | O_NOFOLLOW | O_CLOEXEC;
  const fd = libc().open(cstr(path), flags, 0o600);
  if (fd < 0) throw new SysError("open", errno(), path);
  const st = fstatFd(fd);
  if ((st.mode & S_IFMT) !== S_IFREG) {
    libc().close(fd);
    throw new SysError("open", Errno.EINVAL, `${path} (not a regular file)`);
  }
  return fd;
}

/** A tmpfs on every systemd and most other Linux systems (the FHS's shared-memory directory). */
const SHARED_MEMORY_DIR = "/dev/shm";

/**
 * An unnamed read-write file in memory (O_TMPFILE on the tmpfs at /dev/shm, mode 0600): its
 * pages are not dropped with the page cache (`echo 3 > drop_caches`) and never read back from
 * a disk. Undefined when there is no such tmpfs (the caller then takes a file on disk).
 */
export function openMemoryFile(): number | undefined {
  const fd = libc().open(cstr(SHARED_MEMORY_DIR), O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600);
  return fd < 0 ? undefined : fd;
}

export function truncateTo(fd: number, sizeBytes: number): void {
  unwrap(libc().ftruncate(fd, BigInt(sizeBytes)), "ftruncate");
}

/** Reads exactly `dest.length` bytes at `offset`, or throws (a short file is an error here). */
export function preadExact(fd: number, dest: Uint8Array, offset: number): void {
  const got = preadFully(fd, dest, offset);
  if (got < dest.length) {
    throw new SysError("pread", Errno.EIO, `short cache file at ${offset + got}`);
  }
}

/** [start, stop) runs of the bytes of `map` (which starts at index `first`) that pass `test`. */
export function byteRuns(
  map: Uint8Array,
  first: number,
  test: (byte: number) => boolean,
): [number, number][] {
  const runs: [number, number][] = [];
  for (let i = 0; i < map.length;) {
    if (!test(map[i])) {
      i++;
      continue;
    }
    let j = i + 1;
    while (j < map.length && test(map[j])) j++;
    runs.push([first + i, first + j]);
    i = j;
  }
  return runs;
}

/** Blocks this thread for `ms` (short waits in synchronous open paths). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Writes all of `data` at `offset`; ENOSPC/EDQUOT come back as SysError with that errno. */
export function pwriteAll(fd: number, data: Uint8Array, offset: number): void {
  pwriteFully(fd, data, offset);
}

/** fdatasync(2) off the event loop; the errno is asked for again synchronously on failure. */
export async function dataSync(fd: number): Promise<void> {
  if (Number(await libc().fdatasync_nonblocking(fd)) === 0) return;
  unwrap(libc().fdatasync(fd), "fdatasync");
}

export function dataSyncNow(fd: number): void {
  unwrap(libc().fdatasync(fd), "fdatasync");
}

/** Frees the disk blocks of a byte range, leaving a hole that reads as zeros. */
export function punchHole(fd: number, offset: number, length: number): void {
  const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  unwrap(libc().fallocate(fd, mode, BigInt(offset), BigInt(length)), "fallocate");
}

/**
 * Allocates the blocks of a byte range before it is written (fallocate, size kept), so the file
 * system's free space counts them at once, for every process. False where the file system
 * cannot (EOPNOTSUPP); a full one throws (ENOSPC), as the write would have.
 */
export function allocateAhead(fd: number, offset: number, length: number): boolean {
  const code = libc().fallocate(fd, FALLOC_FL_KEEP_SIZE, BigInt(offset), BigInt(length));
  if (code === 0) return true;
  const cause = errno();
  if (cause === Errno.EOPNOTSUPP) return false;
  throw new SysError("fallocate", cause);
}

/**
 * Marks chunks [first, end) absent (map bytes 0, synced) and only then punches their bytes out
 * of the data file, so no reader or restart sees a hole marked present; the caller holds their
 * write lock. Returns the bytes freed.
 */
export function dropChunks(
  files: { mapFd: number; dataFd: number; chunkBytes: number; sizeBytes: number },
  first: number,
  end: number,
): number {
  pwriteAll(files.mapFd, new Uint8Array(end - first), first);
  dataSyncNow(files.mapFd);
  const offset = first * files.chunkBytes;
  const length = Math.min(files.sizeBytes, end * files.chunkBytes) - offset;
  punchHole(files.dataFd, offset, length);
  return length;
}

/**
 * Tries to take an OFD lock on bytes [start, start + length) of `fd` without waiting.
 * Returns false when another descriptor holds a conflicting lock.
 */
export function tryLock(fd: number, type: 0 | 1, start: number, length: number): boolean {
  const code = setLock(fd, type, start, length);
  if (code === 0) return true;
  if (code === Errno.EAGAIN || code === Errno.EACCES) return false;
  throw new SysError("fcntl(F_OFD_SETLK)", code);
}

/**
 * Where in a map file a process waiting for another's fill of chunks [start, stop) marks that it
 * waits: a read lock at WAITERS_OFFSET + chunk, past any chunk's own byte and the in-use and boot
 * locks (OFD locks may lie beyond the end of the file). The filler sees it with othersWaitFor.
 */
const WAITERS_OFFSET = 2 ** 41;

/** Marks (or unmarks) that this descriptor waits for chunks [start, start + count). */
export function markWaiting(fd: number, start: number, count: number, waiting: boolean): void {
  setLock(fd, waiting ? F_RDLCK : F_UNLCK, WAITERS_OFFSET + start, count);
}

/** True when another descriptor (another process) waits for one of chunks [start, +count). */
export function othersWaitFor(fd: number, start: number, count: number): boolean {
  return lockedByOthers(fd, WAITERS_OFFSET + start, count);
}

/**
 * True when another descriptor holds any lock on bytes [start, start + length) of `fd`'s file
 * (F_OFD_GETLK: tests without taking a lock, so it never gets in an opener's way). True when
 * it cannot tell: callers take that as "in use" (no long pause, nothing removed).
 */
export function lockedByOthers(fd: number, start: number, length: number): boolean {
  const buf = flockStruct(F_WRLCK, start, length);
  for (;;) {
    if (libc().fcntl_lock(fd, F_OFD_GETLK, buf) === 0) {
      return new DataView(buf.buffer).getInt16(0, true) !== F_UNLCK;
    }
    if (errno() !== Errno.EINTR) return true;
  }
}

export function unlock(fd: number, start: number, length: number): void {
  const code = setLock(fd, F_UNLCK, start, length);
  if (code !== 0) throw new SysError("fcntl(F_OFD_SETLK, F_UNLCK)", code);
}

/**
 * struct flock (64-bit): l_type i16 @0, l_whence i16 @2, l_start i64 @8, l_len i64 @16, l_pid
 * i32 @24 (must be 0 for OFD locks); 32 bytes.
 */
function flockStruct(type: number, start: number, length: number): Uint8Array<ArrayBuffer> {
  const buf = new Uint8Array(32);
  const view = new DataView(buf.buffer);
  view.setInt16(0, type, true);
  view.setInt16(2, 0, true); // SEEK_SET
  view.setBigInt64(8, BigInt(start), true);
  view.setBigInt64(16, BigInt(length), true);
  return buf;
}

function setLock(fd: number, type: number, start: number, length: number): number {
  const buf = flockStruct(type, start, length);
  for (;;) {
    if (libc().fcntl_lock(fd, F_OFD_SETLK, buf) === 0) return 0;
    const code = errno();
    if (code !== Errno.EINTR) return code;
  }
}

export function closeQuietly(fd: number): void {
  if (fd >= 0) libc().close(fd);
}
