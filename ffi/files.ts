/**
 * Files and directories through libc: opens that refuse symlinks, statx/fstat/statfs, positional
 * reads and writes that retry EINTR, small sysfs/procfs files (which Deno's own APIs refuse
 * without --allow-all), and read-ahead of a file's ranges.
 */
import {
  clearErrno,
  closeFd,
  cstr,
  Errno,
  errno,
  libc,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDONLY,
  O_WRONLY,
  SysError,
  unwrap,
} from "./libc.ts";
import { pidfdOpen } from "./process.ts";
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
  return Number(await libc().open_nonblocking(cstr(path), O_RDONLY | O_CLOEXEC, 0));
}

/**
 * Reads a small file (sysfs, procfs) through libc: Deno's own file APIs demand --allow-all for
 * /sys, /proc and /dev. Returns undefined when the file does not exist (ENOENT/ENODEV).
 */
export function readSmallFile(path: string, maxBytes = 65536): string | undefined {
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
    return new TextDecoder().decode(buf.subarray(0, done));
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

/** System call numbers shared by x86_64 and arm64 (the unified table from 5.1 on). */
const SYS_OPENAT2 = 437, SYS_PROCESS_MADVISE = 440;
const AT_FDCWD = -100, AT_EMPTY_PATH = 0x1000, AT_SYMLINK_NOFOLLOW = 0x100;
/** open(2) flags whose values differ between x86_64 and arm64 (asm/fcntl.h). */
const ARM64 = Deno.build.arch === "aarch64";
const O_PATH = 0o10000000;
const O_DIRECTORY = ARM64 ? 0o40000 : 0o200000;
const O_NOFOLLOW = ARM64 ? 0o100000 : 0o400000;
/** linux/openat2.h: refuse every symlink on the way, the last component included. */
const RESOLVE_NO_SYMLINKS = 0x04;

function addressOf(buffer: Uint8Array<ArrayBuffer>): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)));
}

/**
 * An O_PATH descriptor of the directory `path`, resolved by openat2 with RESOLVE_NO_SYMLINKS:
 * no component may be a symlink (ELOOP otherwise), so the descriptor names the directory that
 * the symlink-free path reached at this moment, whatever is renamed or swapped later.
 * A relative `path` is looked up in the directory `dirFd`.
 */
export function openDirNoSymlinks(path: string, dirFd = AT_FDCWD): number {
  return openNoSymlinks(path, dirFd, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/**
 * openat2(dirFd, path, flags, RESOLVE_NO_SYMLINKS); where openat2 is missing (Linux before 5.6,
 * a seccomp filter that denies it) the same by openat one component at a time, each with
 * O_NOFOLLOW.
 */
function openNoSymlinks(path: string, dirFd: number, flags: number): number {
  // struct open_how { u64 flags; u64 mode; u64 resolve; }
  const how = new Uint8Array(24);
  const view = new DataView(how.buffer);
  view.setBigUint64(0, BigInt(flags), true);
  view.setBigUint64(16, BigInt(RESOLVE_NO_SYMLINKS), true);
  const name = cstr(path);
  const fd = Number(
    libc().syscall(
      BigInt(SYS_OPENAT2),
      BigInt(dirFd),
      addressOf(name),
      addressOf(how),
      24n,
    ),
  );
  if (fd >= 0) return fd;
  const code = errno();
  if (code !== Errno.ENOSYS && code !== Errno.EPERM) throw new SysError("open", code, path);
  return openByComponents(path, dirFd, flags);
}

function openByComponents(path: string, dirFd: number, flags: number): number {
  const parts = path.split("/").filter((part) => part !== "" && part !== ".");
  const stepFlags = O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  let at = path.startsWith("/") ? unwrap(libc().open(cstr("/"), stepFlags, 0), "open", "/") : dirFd;
  try {
    for (let k = 0; k < parts.length; k++) {
      const last = k === parts.length - 1;
      const next = libc().openat(at, cstr(parts[k]), last ? flags : stepFlags, 0);
      if (next < 0) throw new SysError("open", errno(), path);
      if (at !== dirFd) closeFd(at);
      at = next;
    }
    if (parts.length === 0) {
      const again = libc().openat(at, cstr("."), flags, 0);
      if (again < 0) throw new SysError("open", errno(), path);
      if (at !== dirFd) closeFd(at);
      at = again;
    }
    return at;
  } catch (error) {
    if (at !== dirFd) closeFd(at);
    throw error;
  }
}

/**
 * A symlink on a path erofs-oci was given that someone other than root and the caller made:
 * following it would let that user choose where root writes, mounts or reads.
 */
export class UntrustedSymlinkError extends UserError {}

/**
 * An O_PATH descriptor of the directory `path`, resolved one component at a time without
 * letting the kernel follow symlinks: a symlink is followed only when root or the caller owns
 * it (fs.protected_symlinks' rule for sticky directories, here on the whole path), else
 * UntrustedSymlinkError. A user who owns a directory on the path can put a symlink there (or
 * swap one in) to make root write, mount or delete in a directory of root's; a directory found
 * this way is one the path's owners really hold, and calls relative to the descriptor stay
 * there whatever is renamed later. A relative `path` starts at the directory `from`.
 */
export function openDirTrusted(path: string, from = AT_FDCWD): number {
  return walkTrusted(path, from, false);
}

/**
 * The symlink-free path of the file or directory `path`, resolved as openDirTrusted does (a
 * symlink followed only when root or the caller owns it): for an input root reads and serves
 * (a local image), where a user's symlink to a file of root's would publish it.
 */
export function realPathTrusted(path: string): string {
  const fd = walkTrusted(path, AT_FDCWD, true);
  try {
    return pathOfFd(fd);
  } finally {
    closeFd(fd);
  }
}

function walkTrusted(path: string, from: number, fileAtEnd: boolean): number {
  const pending = path.split("/").filter((part) => part !== "" && part !== ".");
  const rootFlags = O_PATH | O_DIRECTORY | O_CLOEXEC;
  // A descriptor of our own to start from (`from` stays the caller's).
  let at = unwrap(
    libc().openat(from, cstr(path.startsWith("/") ? "/" : "."), rootFlags, 0),
    "open",
    path,
  );
  let links = 0;
  const walked: string[] = [];
  try {
    while (pending.length > 0) {
      const part = pending.shift()!;
      const next = libc().openat(at, cstr(part), O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
      if (next < 0) throw new SysError("open", errno(), path);
      walked.push(part);
      let kind: { type: number; uid: number };
      try {
        kind = typeAndOwner(next, path);
      } catch (error) {
        closeFd(next);
        throw error;
      }
      if (kind.type === S_IFLNK) {
        let target: string;
        try {
          target = readLinkAt(next, "", path);
        } finally {
          closeFd(next);
        }
        if (kind.uid !== 0 && kind.uid !== Deno.uid()) {
          const link = `${path.startsWith("/") ? "/" : ""}${walked.join("/")}`;
          throw new UntrustedSymlinkError(
            `${link} is a symlink of uid ${kind.uid} (to ${target}): not followed on a path ` +
              `given to erofs-oci`,
            "name the directory it leads to, once you have checked it is the one you mean",
          );
        }
        if (++links > 40) throw new SysError("open", Errno.ELOOP, path);
        pending.unshift(...target.split("/").filter((p) => p !== "" && p !== "."));
        if (target.startsWith("/")) {
          closeFd(at);
          at = unwrap(libc().open(cstr("/"), rootFlags, 0), "open", "/");
        }
        continue;
      }
      if (kind.type !== S_IFDIR && !(fileAtEnd && pending.length === 0)) {
        closeFd(next);
        throw new SysError("open", Errno.ENOTDIR, path);
      }
      closeFd(at);
      at = next;
    }
    return at;
  } catch (error) {
    closeFd(at);
    throw error;
  }
}

/** The path the kernel has for the open file or directory `fd` (symlink-free, as of now). */
export function pathOfFd(fd: number): string {
  return readLinkAt(AT_FDCWD, `/proc/self/fd/${fd}`, `/proc/self/fd/${fd}`);
}

const S_IFLNK = 0o120000, S_IFDIR = 0o040000;

/** The file type bits and owner of the descriptor `fd` (an O_PATH one included). */
function typeAndOwner(fd: number, path: string): { type: number; uid: number } {
  const STATX_TYPE = 0x1, STATX_UID = 0x8;
  const buffer = new Uint8Array(256);
  unwrap(
    libc().statx(fd, cstr(""), AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_TYPE | STATX_UID, buffer),
    "statx",
    path,
  );
  const view = new DataView(buffer.buffer);
  return { type: view.getUint16(28, true) & 0o170000, uid: view.getUint32(20, true) };
}

/** The target of the symlink `path` in `dirFd` (`""`: the O_PATH descriptor of the link). */
function readLinkAt(dirFd: number, path: string, what: string): string {
  const buffer = new Uint8Array(4097);
  const n = Number(libc().readlinkat(dirFd, cstr(path), buffer, BigInt(buffer.length - 1)));
  if (n < 0) throw new SysError("readlink", errno(), what);
  return new TextDecoder().decode(buffer.subarray(0, n));
}

/**
 * Opens the regular file `path` read-only, resolved by openat2 with RESOLVE_NO_SYMLINKS (no
 * component a symlink: ELOOP) and O_NONBLOCK (a FIFO put there does not block the open): the
 * file a scan saw at a symlink-free path, or a refusal when one of its directories or the file
 * itself was swapped for a symlink since. The caller checks the type (fstatFd) and closes.
 */
export function openFileNoSymlinks(path: string): number {
  return openNoSymlinks(path, AT_FDCWD, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
}

/** The parts of struct statx erofs-oci compares (identity of a file and of its mount). */
export interface FileIdentity {
  devMajor: number;
  devMinor: number;
  ino: bigint;
  /** Mount id as in /proc/self/mountinfo (field 1). */
  mountId: number;
}

/**
 * statx of `path` relative to the descriptor `dirFd` (`""`: the descriptor itself), never
 * following a symlink in the last component.
 */
export function statIdentity(dirFd: number, path = ""): FileIdentity {
  const STATX_INO = 0x100, STATX_MNT_ID = 0x1000;
  const buffer = new Uint8Array(256);
  const flags = AT_SYMLINK_NOFOLLOW | (path === "" ? AT_EMPTY_PATH : 0);
  unwrap(
    libc().statx(dirFd, cstr(path), flags, STATX_INO | STATX_MNT_ID, buffer),
    "statx",
    path || `fd ${dirFd}`,
  );
  // struct statx: stx_ino at 32, stx_dev_major/minor at 136/140, stx_mnt_id at 144.
  const view = new DataView(buffer.buffer);
  return {
    ino: view.getBigUint64(32, true),
    devMajor: view.getUint32(136, true),
    devMinor: view.getUint32(140, true),
    mountId: Number(view.getBigUint64(144, true)),
  };
}

/**
 * statx of `path`, following symlinks: its type, permissions, owner, device and mount. Through
 * libc, so paths Deno's permission checks treat specially (/dev/shm, /proc) are stat-able too.
 */
export function statPath(path: string): {
  isDirectory: boolean;
  /** Permission bits, with setuid, setgid and sticky (07777). */
  mode: number;
  uid: number;
  gid: number;
  devMajor: number;
  devMinor: number;
  ino: bigint;
  /** Id of the mount it is on, as in /proc/self/mountinfo (field 1). */
  mountId: number;
} {
  const STATX_TYPE = 0x1, STATX_MODE = 0x2, STATX_UID = 0x8, STATX_GID = 0x10, STATX_INO = 0x100;
  const STATX_MNT_ID = 0x1000;
  const wanted = STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID | STATX_INO | STATX_MNT_ID;
  const buffer = new Uint8Array(256);
  unwrap(libc().statx(AT_FDCWD, cstr(path), 0, wanted, buffer), "statx", path);
  // struct statx: stx_uid, stx_gid (u32) at 20, 24; stx_mode (u16) at 28, stx_ino at 32,
  // stx_dev_major/minor at 136/140, stx_mnt_id at 144.
  const view = new DataView(buffer.buffer);
  const mode = view.getUint16(28, true);
  return {
    isDirectory: (mode & S_IFMT) === S_IFDIR,
    mode: mode & 0o7777,
    uid: view.getUint32(20, true),
    gid: view.getUint32(24, true),
    ino: view.getBigUint64(32, true),
    devMajor: view.getUint32(136, true),
    devMinor: view.getUint32(140, true),
    mountId: Number(view.getBigUint64(144, true)),
  };
}

/** mmap/madvise constants (asm-generic/mman-common.h); iovecs per call at most (UIO_MAXIOV). */
const PROT_READ = 1, MAP_SHARED = 1, MADV_WILLNEED = 3, UIO_MAXIOV = 1024, PAGE_BYTES = 4096;
const MAP_FAILED = (1n << 64n) - 1n;

/**
 * Reads ahead the ranges ([offset, length] pairs, in order, page-aligned offsets) of the file
 * `fd` into its page cache in one system call per UIO_MAXIOV ranges, on a pool thread:
 * process_madvise(MADV_WILLNEED, 5.15+) over a read-only shared mapping of the file that is
 * never read (no page of it is faulted in, so a device that fails cannot fault this process).
 * One call instead of one posix_fadvise per range: each of those costs a round trip through
 * the pool, ~1 ms under emulation. Resolves with the bytes advised (a prefix of the ranges: the
 * kernel stops at the first it refuses), or -1 when the kernel refuses the call itself (older
 * kernels, no CAP_SYS_NICE, a page size that does not divide the offsets): advise one by one.
 */
export async function willNeedRangesAsync(fd: number, ranges: readonly number[]): Promise<number> {
  let end = 0;
  for (let i = 0; i < ranges.length; i += 2) end = Math.max(end, ranges[i] + ranges[i + 1]);
  if (end === 0) return 0;
  const mapBytes = Math.ceil(end / PAGE_BYTES) * PAGE_BYTES;
  const base = BigInt(libc().mmap(0n, BigInt(mapBytes), PROT_READ, MAP_SHARED, fd, 0n));
  if (base === MAP_FAILED) return -1;
  let pidfd = -1;
  try {
    pidfd = pidfdOpen(Deno.pid);
    let advised = 0;
    for (let first = 0; first < ranges.length; first += 2 * UIO_MAXIOV) {
      const count = Math.min(UIO_MAXIOV, (ranges.length - first) / 2);
      // struct iovec { void *iov_base; size_t iov_len; }
      const iovecs = new Uint8Array(16 * count);
      const view = new DataView(iovecs.buffer);
      let bytes = 0;
      for (let i = 0; i < count; i++) {
        view.setBigUint64(16 * i, base + BigInt(ranges[first + 2 * i]), true);
        view.setBigUint64(16 * i + 8, BigInt(ranges[first + 2 * i + 1]), true);
        bytes += ranges[first + 2 * i + 1];
      }
      const done = Number(
        await libc().syscall5_nonblocking(
          BigInt(SYS_PROCESS_MADVISE),
          BigInt(pidfd),
          addressOf(iovecs),
          BigInt(count),
          BigInt(MADV_WILLNEED),
          0n,
        ),
      );
      if (done < 0) return first === 0 ? -1 : advised;
      advised += done;
      if (done < bytes) break;
    }
    return advised;
  } catch (error) {
    if (error instanceof SysError) return -1; // pidfd_open refused
    throw error;
  } finally {
    if (pidfd >= 0) libc().close(pidfd);
    libc().munmap(base, BigInt(mapBytes));
  }
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
export const S_IFMT = 0o170000, S_IFREG = 0o100000;

/**
 * open(2) read-only that refuses a symlink as the last component (ELOOP) and does not block on
 * a FIFO (O_NONBLOCK); the caller fstats the descriptor before trusting what it opened.
 */
export function openNoFollow(path: string): number {
  return openFile(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
}

/** The type and size of an open file, from fstat(2): what the descriptor is, not a path. */
export interface FdStat {
  /** st_mode: type and permission bits. */
  mode: number;
  sizeBytes: number;
}

export function fstatFd(fd: number, context?: string): FdStat {
  // struct stat: st_size i64 at 48 on x86_64 and arm64; st_mode u32 at 24 (x86_64) or 16
  // (arm64, the generic layout); 144 / 128 bytes.
  const buf = new Uint8Array(144);
  unwrap(libc().fstat(fd, buf), "fstat", context);
  const view = new DataView(buf.buffer);
  const size = view.getBigInt64(48, true);
  return {
    mode: view.getUint32(Deno.build.arch === "aarch64" ? 16 : 24, true),
    sizeBytes: size > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(size),
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
): Promise<Uint8Array<ArrayBuffer>> {
  const { fd, out } = openRegularFile(path, maxBytes, what);
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

/** The open regular file at `path` within `maxBytes`, and a buffer of its size (else refused). */
function openRegularFile(
  path: string,
  maxBytes: number,
  what: string,
): { fd: number; out: Uint8Array<ArrayBuffer> } {
  const { fd, sizeBytes } = openRegularFileFd(path, maxBytes, what);
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
): { fd: number; sizeBytes: number } {
  const fd = openFile(path, O_RDONLY | O_NONBLOCK);
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
