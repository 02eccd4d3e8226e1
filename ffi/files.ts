/**
 * Files and directories through libc: fstat/statfs, positional reads and writes that retry
 * EINTR, bounded reads of regular files, small sysfs/procfs files (which Deno's own APIs refuse
 * without --allow-all). Paths resolved without others' symlinks: path_resolve.ts.
 */
import {
  AT_FDCWD,
  clearErrno,
  closeFd,
  cstr,
  Errno,
  errno,
  holdingBuffers,
  libc,
  O_CLOEXEC,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_RDONLY,
  O_WRONLY,
  SysError,
  unwrap,
} from "./libc.ts";
import { UserError } from "../lib/errors.ts";

const encoder = new TextEncoder();

export function openFile(path: string, flags: number, mode = 0): number {
  return unwrap(libc().open(cstr(path), flags | O_CLOEXEC, mode), "open", path);
}

/**
 * open(path, O_RDONLY) on a pool thread, for opens that wait on this process (a block device
 * this process serves): the descriptor, or a negative number (errno is not readable after it).
 */
export async function openReadOnlyAsync(path: string): Promise<number> {
  const name = cstr(path);
  return Number(
    await holdingBuffers(libc().open_nonblocking(name, O_RDONLY | O_CLOEXEC, 0), name),
  );
}

/**
 * Reads a small file (sysfs, procfs) through libc: Deno's own file APIs demand --allow-all for
 * /sys, /proc and /dev. Returns undefined when the file does not exist (ENOENT/ENODEV).
 */
export function readSmallFile(path: string, maxBytes = 65536): string | undefined {
  const bytes = readSmallFileBytes(path, maxBytes);
  return bytes && new TextDecoder().decode(bytes);
}

/** readSmallFile's bytes as they are (a command line, whose arguments may be any bytes). */
export function readSmallFileBytes(path: string, maxBytes = 65536): Uint8Array | undefined {
  const fd = libc().open(cstr(path), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) {
    const code = errno();
    if (code === Errno.ENOENT || code === Errno.ENODEV || code === Errno.ENOTDIR) return undefined;
    throw new SysError("open", code, path);
  }
  try {
    const buf = new Uint8Array(maxBytes);
    let done = 0;
    while (done < buf.length) {
      const n = Number(libc().read(fd, buf.subarray(done), BigInt(buf.length - done)));
      if (n < 0) {
        const code = errno();
        if (code === Errno.EINTR) continue;
        throw new SysError("read", code, path);
      }
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  } finally {
    closeFd(fd);
  }
}

/** Writes `text` to an existing file with one write(2), as sysfs attributes require. */
export function writeSmallFile(path: string, text: string): void {
  const fd = openFile(path, O_WRONLY);
  try {
    const data = encoder.encode(text);
    const n = Number(libc().write(fd, data, BigInt(data.length)));
    if (n < 0) throw new SysError("write", errno(), path);
    if (n !== data.length) throw new SysError("write", Errno.EIO, `${path}: short write`);
  } finally {
    closeFd(fd);
  }
}

/**
 * writeSmallFile on a pool thread: the event loop keeps running while the write waits. From Linux
 * 6.12 a block queue limit written in sysfs freezes the queue until its requests in flight
 * complete, and an NBD server writing its own device's limits is what completes them.
 */
export async function writeSmallFileAsync(path: string, text: string): Promise<void> {
  const fd = openFile(path, O_WRONLY);
  try {
    const data = encoder.encode(text);
    const n = Number(await libc().write_nonblocking(fd, data, BigInt(data.length)));
    if (n === data.length) return;
    if (n >= 0) throw new SysError("write", Errno.EIO, `${path}: short write`);
    // errno is not readable after a nonblocking call: a refused write fails again at once.
    const retry = Number(libc().write(fd, data, BigInt(data.length)));
    if (retry < 0) throw new SysError("write", errno(), path);
  } finally {
    closeFd(fd);
  }
}

/** True when `path` exists (access(F_OK)); for /sys and /dev, which Deno.statSync refuses. */
export function pathExists(path: string): boolean {
  return libc().access(cstr(path), 0) === 0;
}

/** faccessat(2)'s flag: check with the effective ids (and capabilities), not the real ones. */
const AT_EACCESS = 0x200;

/**
 * 0 when this process may create files in the directory `path` (faccessat(W_OK | X_OK) with its
 * effective ids: for root too, a read-only mount answers EROFS), else the errno.
 */
export function dirWriteErrno(path: string): number {
  return libc().faccessat(AT_FDCWD, cstr(path), 2 | 1, AT_EACCESS) === 0 ? 0 : errno();
}

/** What readdir(3) (getdents64) fails with: EBADF, ENOENT, ENOMEM, ENOTDIR, EINVAL, EIO, EFAULT. */
const READDIR_ERRORS = new Set<number>([
  Errno.EBADF,
  Errno.ENOENT,
  Errno.ENOMEM,
  Errno.ENOTDIR,
  Errno.EINVAL,
  Errno.EIO,
  Errno.EFAULT,
]);

/**
 * Entry names of a directory (without "." and ".."), through opendir/readdir for /sys paths.
 * struct dirent on 64-bit glibc: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[256].
 */
export function listDirectory(path: string): string[] {
  const dir = libc().opendir(cstr(path));
  if (dir === null) throw new SysError("opendir", errno(), path);
  const names: string[] = [];
  let doubted = false;
  try {
    for (;;) {
      clearErrno();
      const entry = libc().readdir(dir);
      if (entry === null) {
        // End of the directory, or an error (EIO): a listing cut short is no listing. errno is
        // the only sign, and the runtime may have set it in between (the pointer objects of the
        // FFI calls are allocated, and a garbage collection makes system calls): a VM run saw
        // "readdir /sys/block: Resource temporarily unavailable". One more readdir tells: an end
        // stays NULL with errno 0; an error comes back.
        const code = errno();
        if (code === 0) break;
        if (doubted) {
          // Twice: an error readdir can have is one; anything else (EAGAIN, which getdents64
          // never sets for a directory) was set by the runtime, and this NULL is the end.
          if (READDIR_ERRORS.has(code)) throw new SysError("readdir", code, path);
          break;
        }
        doubted = true;
        continue;
      }
      doubted = false;
      const name = new Deno.UnsafePointerView(entry).getCString(19);
      if (name !== "." && name !== "..") names.push(name);
    }
  } finally {
    libc().closedir(dir);
  }
  return names;
}

/** What statfs(2) says about a mounted file system (64-bit Linux `struct statfs`). */
export interface FsStats {
  /** f_type: the file system's magic (EROFS: 0xe0f5e1e2). */
  type: number;
  blockSizeBytes: number;
  blocks: bigint;
  /** f_bavail: free blocks an unprivileged user may use (root's reserve left out). */
  availableBlocks: bigint;
  files: bigint;
  freeFiles: bigint;
  /** f_fsid as one little-endian u64 (val[0] low, val[1] high). */
  fsid: bigint;
}

/**
 * statfs(2). Answered from the in-memory superblock by file systems such as EROFS, so it does
 * not wait for a dead block device the way a read would.
 */
export function statFs(path: string): FsStats {
  // struct statfs on 64-bit Linux: f_type, f_bsize, f_blocks, f_bfree, f_bavail, f_files,
  // f_ffree (8 bytes each), f_fsid (2 × i32) at 56, then f_namelen, f_frsize, f_flags, spare.
  const buf = new Uint8Array(120);
  unwrap(libc().statfs(cstr(path), buf), "statfs", path);
  const view = new DataView(buf.buffer);
  return {
    type: Number(view.getBigUint64(0, true)),
    blockSizeBytes: Number(view.getBigUint64(8, true)),
    blocks: view.getBigUint64(16, true),
    availableBlocks: view.getBigUint64(32, true),
    files: view.getBigUint64(40, true),
    freeFiles: view.getBigUint64(48, true),
    fsid: BigInt(view.getUint32(56, true)) | (BigInt(view.getUint32(60, true)) << 32n),
  };
}

/** File type bits of st_mode (sys/stat.h). */
export const S_IFMT = 0o170000, S_IFREG = 0o100000, S_IFDIR = 0o040000, S_IFBLK = 0o060000;

/**
 * open(2) read-only that refuses a symlink as the last component (ELOOP) and does not block on
 * a FIFO (O_NONBLOCK); the caller fstats the descriptor before trusting what it opened.
 */
export function openNoFollow(path: string): number {
  return openFile(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
}

/** What fstat(2) says of an open file: what the descriptor is, not a path. */
export interface FdStat {
  dev: bigint;
  ino: bigint;
  /** st_mode: type and permission bits. */
  mode: number;
  sizeBytes: number;
  /** Bytes the file occupies on disk (st_blocks × 512): sparse holes cost nothing. */
  allocatedBytes: number;
  /** st_ctim as `seconds.nanoseconds`: changed by every write, hole punched or chmod. */
  changeTime: string;
}

export function fstatFd(fd: number, context?: string): FdStat {
  // struct stat: st_dev, st_ino, st_size, st_blocks at 0, 8, 48, 64 on x86_64 and arm64;
  // st_mode u32 at 24 (x86_64) or 16 (arm64, the generic layout); 144 / 128 bytes.
  const buf = new Uint8Array(144);
  unwrap(libc().fstat(fd, buf), "fstat", context);
  const view = new DataView(buf.buffer);
  const size = view.getBigInt64(48, true);
  return {
    dev: view.getBigUint64(0, true),
    ino: view.getBigUint64(8, true),
    mode: view.getUint32(Deno.build.arch === "aarch64" ? 16 : 24, true),
    sizeBytes: size > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(size),
    allocatedBytes: Number(view.getBigInt64(64, true)) * 512,
    // st_ctim at 104 (seconds) and 112 (nanoseconds) in both layouts.
    changeTime: `${view.getBigInt64(104, true)}.${view.getBigInt64(112, true)}`,
  };
}

/**
 * pwrite(2) until all of `data` is at `offset` (EINTR retried); a failure is SysError(call,
 * errno, context), so ENOSPC/EDQUOT keep their errno for the caller.
 */
export function pwriteFully(
  fd: number,
  data: Uint8Array,
  offset: number,
  call = "pwrite",
  context?: string,
): void {
  for (let done = 0; done < data.length;) {
    const part = data.subarray(done) as Uint8Array<ArrayBuffer>;
    const n = Number(libc().pwrite(fd, part, BigInt(part.length), BigInt(offset + done)));
    if (n < 0) {
      const code = errno();
      if (code === Errno.EINTR) continue;
      throw new SysError(call, code, context);
    }
    done += n;
  }
}

/**
 * pread(2) until `out` is full or the file ends (EINTR retried); returns the bytes read, fewer
 * than `out.length` only at end of file. A failure is SysError(call, errno, context).
 */
export function preadFully(
  fd: number,
  out: Uint8Array,
  offset: number,
  call = "pread",
  context?: string,
): number {
  let done = 0;
  while (done < out.length) {
    const part = out.subarray(done) as Uint8Array<ArrayBuffer>;
    const n = Number(libc().pread(fd, part, BigInt(part.length), BigInt(offset + done)));
    if (n < 0) {
      const code = errno();
      if (code === Errno.EINTR) continue;
      throw new SysError(call, code, context);
    }
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** pread(2) on a pool thread: fills as much of `buf` as one call gives; 0 at end of file. */
export async function preadAsync(
  fd: number,
  buf: Uint8Array<ArrayBuffer>,
  offset: number,
  context?: string,
): Promise<number> {
  for (;;) {
    const n = Number(await libc().pread_nonblocking(fd, buf, BigInt(buf.length), BigInt(offset)));
    if (n >= 0) return n;
    // errno is not readable after a nonblocking call: ask again synchronously for the reason.
    const retry = Number(libc().pread(fd, buf, BigInt(buf.length), BigInt(offset)));
    if (retry >= 0) return retry;
    const code = errno();
    if (code !== Errno.EINTR) throw new SysError("pread", code, context);
  }
}

/**
 * A descriptor read by preadAsync from any number of callers and closed once: a close while
 * reads are in flight on pool threads waits for the last of them. Closed at once, its number
 * could name another file (opened meanwhile by this process) by the time a queued pread runs,
 * which would then return that file's bytes.
 */
export class PooledReadFd {
  readonly #fd: number;
  #reading = 0;
  #closed = false;

  constructor(fd: number) {
    this.#fd = fd;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** preadAsync on the descriptor; EBADF once closed (callers check `closed` for their own words). */
  async pread(buf: Uint8Array<ArrayBuffer>, offset: number, context?: string): Promise<number> {
    if (this.#closed) throw new SysError("pread", Errno.EBADF, context);
    this.#reading++;
    try {
      return await preadAsync(this.#fd, buf, offset, context);
    } finally {
      if (--this.#reading === 0 && this.#closed) closeFd(this.#fd);
    }
  }

  /** Closes the descriptor now, or when the reads in flight have ended; once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#reading === 0) closeFd(this.#fd);
  }
}

/** readRegularFile's refusal: not a regular file, or larger than allowed. */
export class FileRefusedError extends UserError {}

/**
 * Reads the whole of the regular file at `path` (symlinks followed) if it holds at most
 * `maxBytes`; anything else is refused (FileRefusedError, naming `what`) before any read: a FIFO
 * would block, a device such as /dev/zero never ends, a larger file would take that much memory.
 * Reads on pool threads; a file that grows meanwhile is read to the size it had.
 */
export async function readRegularFile(
  path: string,
  maxBytes: number,
  what: string,
  options: OpenOptions = {},
): Promise<Uint8Array<ArrayBuffer>> {
  const { fd, out } = openRegularFile(path, maxBytes, what, options);
  try {
    let done = 0;
    while (done < out.length) {
      const n = await preadAsync(fd, out.subarray(done), done, path);
      if (n === 0) break;
      done += n;
    }
    return out.subarray(0, done);
  } finally {
    closeFd(fd);
  }
}

/**
 * readRegularFile, synchronous: for small files read on paths that must not wait (a FIFO would
 * block the process; a device never end).
 */
export function readRegularFileSync(
  path: string,
  maxBytes: number,
  what: string,
): Uint8Array<ArrayBuffer> {
  const { fd, out } = openRegularFile(path, maxBytes, what);
  try {
    return out.subarray(0, preadFully(fd, out, 0, "pread", path));
  } finally {
    closeFd(fd);
  }
}

/** How readRegularFile opens its file. */
export interface OpenOptions {
  /**
   * Opens `path` read-only and non-blocking (default: following symlinks), e.g.
   * openFileNoSymlinks for a path realPathTrusted resolved (a file another user named).
   */
  open?: (path: string) => number;
}

/** The open regular file at `path` within `maxBytes`, and a buffer of its size (else refused). */
function openRegularFile(
  path: string,
  maxBytes: number,
  what: string,
  options: OpenOptions = {},
): { fd: number; out: Uint8Array<ArrayBuffer> } {
  const { fd, sizeBytes } = openRegularFileFd(path, maxBytes, what, options);
  return { fd, out: new Uint8Array(sizeBytes) };
}

/**
 * Opens `path` read-only as readRegularFile does (a FIFO does not block the open; anything but
 * a regular file of at most `maxBytes` is refused, FileRefusedError) and leaves the reading
 * to the caller, who closes `fd`.
 */
export function openRegularFileFd(
  path: string,
  maxBytes: number,
  what: string,
  options: OpenOptions = {},
): { fd: number; sizeBytes: number } {
  const fd = options.open ? options.open(path) : openFile(path, O_RDONLY | O_NONBLOCK);
  try {
    const { mode, sizeBytes } = fstatFd(fd, path);
    if ((mode & S_IFMT) !== S_IFREG) {
      throw new FileRefusedError(`${what} ${path} is not a regular file`);
    }
    if (sizeBytes > maxBytes) {
      throw new FileRefusedError(`${what} ${path} is larger than ${maxBytes} bytes`);
    }
    return { fd, sizeBytes };
  } catch (error) {
    closeFd(fd);
    throw error;
  }
}

/** close_range(2), shared by x86_64 and arm64 (the unified table from 5.1 on; Linux 5.9+). */
const SYS_CLOSE_RANGE = 436;

/**
 * Descriptors to close, closed a few dozen at a time: each run of consecutive numbers by one
 * close_range(2) call (one by one where it is missing). Every number of such a run is one of
 * the descriptors handed to `add`, still open, so the call closes nothing else (no other
 * thread can hold those numbers). A tree of small files is scanned and read with a short-lived
 * descriptor per entry, opened in turn and so mostly numbered in sequence, and on a virtual
 * machine a system call costs ~3 µs: a close per descriptor was 15% of such a build.
 */
export class DeferredCloses {
  readonly #fds: number[] = [];
  #rangeMissing = false;

  constructor(readonly limit = 64) {}

  /** Closes `fd` now or later (by flush() at the latest); a negative one is ignored. */
  add(fd: number): void {
    if (fd < 0) return;
    this.#fds.push(fd);
    if (this.#fds.length >= this.limit) this.flush();
  }

  /** Closes every descriptor added so far. */
  flush(): void {
    const fds = this.#fds;
    if (fds.length === 0) return;
    fds.sort((a, b) => a - b);
    for (let k = 0; k < fds.length;) {
      let end = k + 1;
      while (end < fds.length && fds[end] === fds[end - 1] + 1) end++;
      if (end - k === 1 || !this.#closeRange(fds[k], fds[end - 1])) {
        for (let j = k; j < end; j++) closeFd(fds[j]);
      }
      k = end;
    }
    fds.length = 0;
  }

  #closeRange(first: number, last: number): boolean {
    if (this.#rangeMissing) return false;
    const rc = libc().syscall(BigInt(SYS_CLOSE_RANGE), BigInt(first), BigInt(last), 0n, 0n);
    if (rc === 0n) return true;
    // ENOSYS (before 5.9, or a seccomp filter's answer) or EPERM: close one by one from now on.
    this.#rangeMissing = true;
    return false;
  }
}
