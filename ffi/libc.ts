/**
 * The one libc symbol table of erofs-oci, with thin typed wrappers that turn `-1` + errno into
 * a SysError. Nothing outside `ffi/` calls `Deno.dlopen`.
 *
 * Calls are synchronous unless named `*Async`: errno is only meaningful right after a
 * synchronous call on the same thread (Deno runs nonblocking calls on a pool thread).
 */
import { UserError } from "../lib/errors.ts";

/** The symbol table (exported so worker threads can open the same one, see libc_worker.ts). */
export const LIBC_SYMBOLS = {
  // int *__errno_location(void);
  __errno_location: { parameters: [], result: "pointer" },
  // char *strerror(int errnum);
  strerror: { parameters: ["i32"], result: "pointer" },
  // int open(const char *path, int flags, mode_t mode);
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  // int open(const char *path, int flags, mode_t mode);  — on a pool thread, for opens that wait
  // on this process (a new NBD device's first open reads its partition table through us)
  open_nonblocking: {
    name: "open",
    parameters: ["buffer", "i32", "u32"],
    result: "i32",
    nonblocking: true,
  },
  // int close(int fd);
  close: { parameters: ["i32"], result: "i32" },
  // ssize_t read(int fd, void *buf, size_t count);
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // ssize_t read(int fd, void *buf, size_t count);  — on a pool thread, for blocking fds
  read_nonblocking: {
    name: "read",
    parameters: ["i32", "buffer", "usize"],
    result: "isize",
    nonblocking: true,
  },
  // ssize_t write(int fd, const void *buf, size_t count);
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // ssize_t write(int fd, const void *buf, size_t count);  — on a pool thread, for writes that
  // may wait on this process (a block queue freeze waiting for requests it serves)
  write_nonblocking: {
    name: "write",
    parameters: ["i32", "buffer", "usize"],
    result: "isize",
    nonblocking: true,
  },
  // ssize_t writev(int fd, const struct iovec *iov, int iovcnt);
  writev: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  // ssize_t pread(int fd, void *buf, size_t count, off_t offset);
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  // int ioctl(int fd, unsigned long request, unsigned long arg);
  ioctl: { parameters: ["i32", "u64", "u64"], result: "i32" },
  // int ioctl(int fd, unsigned long request, unsigned long arg);  — blocking ones (NBD_DO_IT)
  ioctl_nonblocking: {
    name: "ioctl",
    parameters: ["i32", "u64", "u64"],
    result: "i32",
    nonblocking: true,
  },
  // int socket(int domain, int type, int protocol);
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // int socketpair(int domain, int type, int protocol, int sv[2]);
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  // int bind(int fd, const struct sockaddr *addr, socklen_t len);
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // int connect(int fd, const struct sockaddr *addr, socklen_t len);
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen);
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  // ssize_t recv(int fd, void *buf, size_t len, int flags);
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  // int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen);
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  // int shutdown(int fd, int how);
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  // int poll(struct pollfd *fds, nfds_t nfds, int timeout);
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  // the same poll on a pool thread (reattach --watch waits on pidfds without blocking the loop)
  poll_nonblocking: {
    name: "poll",
    parameters: ["buffer", "u64", "i32"],
    result: "i32",
    nonblocking: true,
  },
  // int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const void *data);
  mount: { parameters: ["buffer", "buffer", "buffer", "u64", "buffer"], result: "i32" },
  // int mount(...);  — on a pool thread, for mounts whose backing server runs on this thread
  mount_nonblocking: {
    name: "mount",
    parameters: ["buffer", "buffer", "buffer", "u64", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  // int umount2(const char *target, int flags);
  umount2: { parameters: ["buffer", "i32"], result: "i32" },
  // pid_t gettid(void);
  gettid: { parameters: [], result: "i32" },
  // int setpriority(int which, id_t who, int prio);  — on Linux, who 0 is the calling thread
  setpriority: { parameters: ["i32", "u32", "i32"], result: "i32" },
  // int getpriority(int which, id_t who);
  getpriority: { parameters: ["i32", "u32"], result: "i32" },
  // int setsid(void);
  setsid: { parameters: [], result: "i32" },
  // int fcntl(int fd, int cmd, int arg);
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // DIR *opendir(const char *name);
  opendir: { parameters: ["buffer"], result: "pointer" },
  // struct dirent *readdir(DIR *dirp);
  readdir: { parameters: ["pointer"], result: "pointer" },
  // int closedir(DIR *dirp);
  closedir: { parameters: ["pointer"], result: "i32" },
  // ssize_t copy_file_range(int fd_in, off64_t *off_in, int fd_out, off64_t *off_out,
  //                         size_t len, unsigned int flags);
  copy_file_range: {
    parameters: ["i32", "buffer", "i32", "buffer", "usize", "u32"],
    result: "isize",
  },
  // off_t lseek(int fd, off_t offset, int whence);
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  // ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset);
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  // int ftruncate(int fd, off_t length);
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  // int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags);
  linkat: { parameters: ["i32", "buffer", "i32", "buffer", "i32"], result: "i32" },
  // ssize_t llistxattr(const char *path, char *list, size_t size);
  llistxattr: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  // ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size);
  lgetxattr: { parameters: ["buffer", "buffer", "buffer", "usize"], result: "isize" },
  // int access(const char *path, int mode);
  access: { parameters: ["buffer", "i32"], result: "i32" },
  // int statfs(const char *path, struct statfs *buf);
  statfs: { parameters: ["buffer", "buffer"], result: "i32" },
  // int fstat(int fd, struct stat *buf);  (glibc 2.33+ exports it)
  fstat: { parameters: ["i32", "buffer"], result: "i32" },
  // ssize_t pread(int fd, void *buf, size_t count, off_t offset);  — on a pool thread
  pread_nonblocking: {
    name: "pread",
    parameters: ["i32", "buffer", "usize", "i64"],
    result: "isize",
    nonblocking: true,
  },
  // int posix_fadvise(int fd, off_t offset, off_t len, int advice);  — on a pool thread:
  // WILLNEED may wait for the device's request slots, which a server of its own device must not
  posix_fadvise_nonblocking: {
    name: "posix_fadvise",
    parameters: ["i32", "i64", "i64", "i32"],
    result: "i32",
    nonblocking: true,
  },
  // int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf);
  statx: { parameters: ["i32", "buffer", "i32", "u32", "buffer"], result: "i32" },
  // int fcntl(int fd, int cmd, struct flock *lock);  — F_OFD_SETLK byte-range locks
  fcntl_lock: { name: "fcntl", parameters: ["i32", "i32", "buffer"], result: "i32" },
  // int fdatasync(int fd);
  fdatasync: { parameters: ["i32"], result: "i32" },
  // int fdatasync(int fd);  — on a pool thread: it waits for the disk
  fdatasync_nonblocking: {
    name: "fdatasync",
    parameters: ["i32"],
    result: "i32",
    nonblocking: true,
  },
  // int fallocate(int fd, int mode, off_t offset, off_t len);
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  // int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
  //                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[]);
  // On a pool thread: it returns once the child has exec'd (read from disk when cold).
  posix_spawn_nonblocking: {
    name: "posix_spawn",
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  // int posix_spawn_file_actions_addopen(posix_spawn_file_actions_t *actions, int fd,
  //                                      const char *path, int flags, mode_t mode);
  posix_spawn_file_actions_addopen: {
    parameters: ["buffer", "i32", "buffer", "i32", "u32"],
    result: "i32",
  },
  // int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *actions, int fd, int newfd);
  posix_spawn_file_actions_adddup2: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  // int pipe2(int fds[2], int flags);
  pipe2: { parameters: ["buffer", "i32"], result: "i32" },
  // pid_t waitpid(pid_t pid, int *status, int options);  — with WNOHANG, on this thread
  waitpid: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // The same on a pool thread: it waits
  waitpid_nonblocking: {
    name: "waitpid",
    parameters: ["i32", "buffer", "i32"],
    result: "i32",
    nonblocking: true,
  },
  // int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *actions);
  posix_spawn_file_actions_destroy: { parameters: ["buffer"], result: "i32" },
  // long syscall(long number, long a, long b, long c, long d);  — openat2, pidfd_open and
  // pidfd_send_signal have no glibc wrappers; pointers are passed as their address.
  syscall: { parameters: ["i64", "i64", "i64", "i64", "i64"], result: "i64" },
  // long syscall(long number, long a, long b, long c, long d, long e);  — on a pool thread:
  // process_madvise(WILLNEED) may wait for the device's request slots (see posix_fadvise)
  syscall5_nonblocking: {
    name: "syscall",
    parameters: ["i64", "i64", "i64", "i64", "i64", "i64"],
    result: "i64",
    nonblocking: true,
  },
  // void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
  mmap: { parameters: ["usize", "usize", "i32", "i32", "i32", "i64"], result: "usize" },
  // int munmap(void *addr, size_t length);
  munmap: { parameters: ["usize", "usize"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The typed libc symbols, as returned by `libc()` (and handed to libc workers). */
export type LibcSymbols = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];

let symbols: LibcSymbols | undefined;

/**
 * Binds the symbols of `table` in libc each on its first use, but those named in `eager` at
 * once: Deno.dlopen builds a call stub per symbol, 0.2-1.2 ms each on the host, and binding a
 * whole table at once cost every process (or worker thread: a FUSE reader thread's INIT waited
 * for its ~70 stubs) that touched libc 8-40 ms (0.3-0.5 s in the QEMU TCG guest) for symbols it
 * mostly never calls. errno's accessor is bound eagerly: binding it later could itself change
 * errno before it is read. Self-contained (no imports, no outer names): libc_worker.ts ships it
 * to worker threads as source text.
 */
export function bindLazily(
  table: Record<string, Deno.ForeignFunction>,
  eager: readonly string[],
): { symbols: Record<string, unknown>; close(): void } {
  const libraries: Deno.DynamicLibrary<Record<string, Deno.ForeignFunction>>[] = [];
  const symbols: Record<string, unknown> = {};
  const bind = (name: string) => {
    const library = Deno.dlopen("libc.so.6", { [name]: table[name] });
    libraries.push(library);
    const bound = library.symbols[name];
    Object.defineProperty(symbols, name, { value: bound, enumerable: true });
    return bound;
  };
  for (const name of Object.keys(table)) {
    Object.defineProperty(symbols, name, {
      configurable: true,
      enumerable: true,
      get: () => bind(name),
    });
  }
  for (const name of eager) bind(name);
  return { symbols, close: () => libraries.splice(0).forEach((library) => library.close()) };
}

/** The libc symbols of this thread, each bound on its first use (see bindLazily). */
export function libc(): LibcSymbols {
  symbols ??= bindLazily(LIBC_SYMBOLS, ["__errno_location", "strerror"])
    .symbols as unknown as LibcSymbols;
  return symbols;
}

/** errno of the last synchronous libc call on this thread. */
export function errno(): number {
  const ptr = libc().__errno_location();
  return ptr ? new Deno.UnsafePointerView(ptr).getInt32() : 0;
}

export function strerror(code: number): string {
  const ptr = libc().strerror(code);
  return ptr ? Deno.UnsafePointerView.getCString(ptr) : `errno ${code}`;
}

/** Well-known errno values (asm-generic/errno-base.h, errno.h). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  ENOTBLK: 15,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EINVAL: 22,
  ENOSPC: 28,
  ERANGE: 34,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  EBADMSG: 74,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
  /** EFSCORRUPTED of the kernel's file systems, EROFS included. */
  EUCLEAN: 117,
} as const;

/** A failed system call: `call` names it, `errno` says why. */
export class SysError extends UserError {
  readonly errno: number;
  readonly call: string;
  constructor(call: string, code: number, context?: string, hint?: string) {
    super(`${call}${context ? ` ${context}` : ""}: ${strerror(code)}`, hint);
    this.errno = code;
    this.call = call;
  }
}

/** Throws SysError when a synchronous call returned a negative value; returns the value. */
export function unwrap<T extends number | bigint>(result: T, call: string, context?: string): T {
  if (result < 0) throw new SysError(call, errno(), context);
  return result;
}

const encoder = new TextEncoder();

/** NUL-terminated C string for `buffer` parameters. */
export function cstr(value: string): Uint8Array<ArrayBuffer> {
  const bytes = encoder.encode(value);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

export const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_CLOEXEC = 0o2000000, O_NONBLOCK = 0o4000;

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

/** A close-on-exec pipe. */
export function makePipe(): { read: number; write: number } {
  const ends = new Int32Array(2);
  unwrap(libc().pipe2(ends, O_CLOEXEC), "pipe2");
  return { read: ends[0], write: ends[1] };
}

export function closeFd(fd: number): void {
  libc().close(fd);
}

/** Writes all of `data` to a blocking fd. */
export function writeAll(fd: number, data: Uint8Array<ArrayBuffer>): void {
  let done = 0;
  while (done < data.length) {
    const n = Number(libc().write(fd, data.subarray(done), BigInt(data.length - done)));
    if (n < 0) {
      const code = errno();
      if (code === Errno.EINTR) continue;
      throw new SysError("write", code);
    }
    done += n;
  }
}

/** Mount flags (linux/mount.h). */
export const MS_RDONLY = 1, MS_NOSUID = 2, MS_NODEV = 4, MS_NOEXEC = 8;
/** umount2 flags. */
export const MNT_FORCE = 1, MNT_DETACH = 2, UMOUNT_NOFOLLOW = 8;

/** mount(2); `data` is the comma-separated option string. */
export function mount(
  source: string,
  target: string,
  fstype: string,
  flags: number,
  data = "",
): void {
  unwrap(
    libc().mount(cstr(source), cstr(target), cstr(fstype), BigInt(flags), cstr(data)),
    "mount",
    `${fstype} ${source} on ${target}`,
  );
}

/** mount(2) on a pool thread, for when this thread must keep serving the backing store. */
export async function mountAsync(
  source: string,
  target: string,
  fstype: string,
  flags: number,
  data = "",
): Promise<number> {
  // errno is not readable after a nonblocking call; callers that need the reason retry
  // synchronously or inspect the result of a follow-up call.
  return await libc().mount_nonblocking(
    cstr(source),
    cstr(target),
    cstr(fstype),
    BigInt(flags),
    cstr(data),
  );
}

export function umount(target: string, flags = 0): void {
  unwrap(libc().umount2(cstr(target), flags), "umount", target);
}

export const AF_UNIX = 1, AF_NETLINK = 16, SOCK_STREAM = 1, SOCK_RAW = 3, SOCK_CLOEXEC = 0o2000000;

/** socketpair(AF_UNIX, SOCK_STREAM): two connected fds. */
export function socketPair(): [number, number] {
  const fds = new Int32Array(2);
  unwrap(
    libc().socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, new Uint8Array(fds.buffer)),
    "socketpair",
  );
  return [fds[0], fds[1]];
}

/** A unix stream socket connected to `path` (the kernel end of an NBD connection). */
export function connectUnix(path: string): number {
  const fd = unwrap(libc().socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  const addr = new Uint8Array(110);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  const name = encoder.encode(path);
  if (name.length >= 108) throw new SysError("connect", Errno.EINVAL, `${path}: path too long`);
  addr.set(name, 2);
  if (libc().connect(fd, addr, 2 + name.length + 1) < 0) {
    const code = errno();
    closeFd(fd);
    throw new SysError("connect", code, path);
  }
  return fd;
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

/**
 * Entry names of a directory (without "." and ".."), through opendir/readdir for /sys paths.
 * struct dirent on 64-bit glibc: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[256].
 */
export function listDirectory(path: string): string[] {
  const dir = libc().opendir(cstr(path));
  if (dir === null) throw new SysError("opendir", errno(), path);
  const names: string[] = [];
  try {
    for (;;) {
      const entry = libc().readdir(dir);
      if (entry === null) break;
      const name = new Deno.UnsafePointerView(entry).getCString(19);
      if (name !== "." && name !== "..") names.push(name);
    }
  } finally {
    libc().closedir(dir);
  }
  return names;
}

/** System call numbers shared by x86_64 and arm64 (the unified table from 5.1 on). */
const SYS_PIDFD_SEND_SIGNAL = 424,
  SYS_PIDFD_OPEN = 434,
  SYS_CLOSE_RANGE = 436,
  SYS_OPENAT2 = 437,
  SYS_PIDFD_GETFD = 438,
  SYS_PROCESS_MADVISE = 440;
/** close_range(2) flag (linux/close_range.h); fcntl F_SETFD and its one flag (asm-generic). */
const CLOSE_RANGE_CLOEXEC = 1 << 2, F_SETFD = 2, FD_CLOEXEC = 1;
/** fcntl: set a pipe's capacity (linux/fcntl.h, F_LINUX_SPECIFIC_BASE + 7). */
const F_SETPIPE_SZ = 1031;

/** /proc/sys/fs/pipe-max-size's default: the most a process without CAP_SYS_RESOURCE gets. */
const PIPE_MAX_SIZE_DEFAULT = 1 << 20;

/**
 * Grows the pipe `fd` is an end of to `bytes` (the kernel rounds up to a power of two pages),
 * or to the default limit when over it; the capacity it got, or undefined when it refused (not
 * a pipe, out of memory).
 */
export function setPipeCapacity(fd: number, bytes: number): number | undefined {
  for (const size of [bytes, Math.min(bytes, PIPE_MAX_SIZE_DEFAULT)]) {
    const got = libc().fcntl(fd, F_SETPIPE_SZ, size);
    if (got >= 0) return got;
  }
  return undefined;
}

/** Descriptors the fallback marks when close_range is missing (before 5.11). */
const FALLBACK_MAX_FD = 1024;
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
  // struct open_how { u64 flags; u64 mode; u64 resolve; }
  const how = new Uint8Array(24);
  const view = new DataView(how.buffer);
  view.setBigUint64(0, BigInt(O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), true);
  view.setBigUint64(16, BigInt(RESOLVE_NO_SYMLINKS), true);
  const name = cstr(path);
  const fd = libc().syscall(
    BigInt(SYS_OPENAT2),
    BigInt(dirFd),
    addressOf(name),
    addressOf(how),
    24n,
  );
  return Number(unwrap(fd, "open", path));
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
 * statx of `path`, following symlinks: its type (S_IFMT bits of stx_mode) and device. Through
 * libc, so paths Deno's permission checks treat specially (/dev/shm, /proc) are stat-able too.
 */
export function statPath(
  path: string,
): { isDirectory: boolean; devMajor: number; devMinor: number; ino: bigint } {
  const STATX_TYPE = 0x1, STATX_INO = 0x100, S_IFMT = 0o170000, S_IFDIR = 0o040000;
  const buffer = new Uint8Array(256);
  unwrap(libc().statx(AT_FDCWD, cstr(path), 0, STATX_TYPE | STATX_INO, buffer), "statx", path);
  // struct statx: stx_mode (u16) at 28, stx_ino at 32, stx_dev_major/minor at 136/140.
  const view = new DataView(buffer.buffer);
  return {
    isDirectory: (view.getUint16(28, true) & S_IFMT) === S_IFDIR,
    ino: view.getBigUint64(32, true),
    devMajor: view.getUint32(136, true),
    devMinor: view.getUint32(140, true),
  };
}

/**
 * Marks every descriptor from 3 up close-on-exec: those this process inherited without it (a
 * caller's `flock` lock, a pipe of a script) then do not reach the long-lived processes it
 * starts, which would hold them for as long as a mount lives. Descriptors opened by Deno are
 * close-on-exec already; a child gets its stdio and what is passed on purpose after this.
 */
export function closeInheritedOnExec(): void {
  const all = libc().syscall(
    BigInt(SYS_CLOSE_RANGE),
    3n,
    0xffffffffn,
    BigInt(CLOSE_RANGE_CLOEXEC),
    0n,
  );
  if (all === 0n) return;
  // Kernels before 5.11: one by one (a closed descriptor answers EBADF).
  for (let fd = 3; fd < FALLBACK_MAX_FD; fd++) libc().fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/** A pidfd for `pid` (pidfd_open, 5.3+): signals sent through it cannot reach a reused pid. */
export function pidfdOpen(pid: number): number {
  return Number(
    unwrap(
      libc().syscall(BigInt(SYS_PIDFD_OPEN), BigInt(pid), 0n, 0n, 0n),
      "pidfd_open",
      `pid ${pid}`,
    ),
  );
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

/**
 * Raises the calling thread's nice value to `nice` unless it is that high already (Linux applies
 * setpriority(PRIO_PROCESS, 0) to the calling thread only; threads it starts later inherit it):
 * never a higher priority than the one it was given. False if refused.
 */
export function lowerThreadPriority(nice: number): boolean {
  if (libc().getpriority(0, 0) >= nice) return true;
  return libc().setpriority(0, 0, nice) === 0;
}

/** pidfd_send_signal: signals exactly the process the pidfd was opened for. */
export function pidfdSendSignal(pidfd: number, signal: number): void {
  unwrap(
    libc().syscall(BigInt(SYS_PIDFD_SEND_SIGNAL), BigInt(pidfd), BigInt(signal), 0n, 0n),
    "pidfd_send_signal",
  );
}

/** pidfd_getfd (5.6+): a copy (close-on-exec) of descriptor `targetFd` of the pidfd's process. */
export function pidfdGetFd(pidfd: number, targetFd: number): number {
  return Number(
    unwrap(
      libc().syscall(BigInt(SYS_PIDFD_GETFD), BigInt(pidfd), BigInt(targetFd), 0n, 0n),
      "pidfd_getfd",
      `fd ${targetFd}`,
    ),
  );
}

/** poll(2) events (asm-generic/poll.h). */
export const POLLIN = 1, POLLOUT = 4;

/** A `struct pollfd` array (int fd; short events; short revents) asking `events` of each fd. */
export function pollFds(fds: readonly number[], events: number): Uint8Array<ArrayBuffer> {
  const pollfds = new Uint8Array(8 * fds.length);
  const view = new DataView(pollfds.buffer);
  fds.forEach((fd, i) => {
    view.setInt32(8 * i, fd, true);
    view.setInt16(8 * i + 4, events, true);
  });
  return pollfds;
}

/** Whether `fd` has something to read (or its end) right now: poll(2) without waiting. */
export function readableNow(fd: number): boolean {
  const pollfd = pollFds([fd], POLLIN);
  return libc().poll(pollfd, 1n, 0) > 0 && new DataView(pollfd.buffer).getInt16(6, true) !== 0;
}

/** poll(2) on a pool thread: waits without blocking the event loop (pidfds, /dev/fuse). */
export function pollAsync(pollfds: Uint8Array<ArrayBuffer>, timeoutMs: number): Promise<number> {
  return libc().poll_nonblocking(pollfds, BigInt(pollfds.length / 8), timeoutMs);
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
 * Reaps every child of this process that has exited (waitpid(-1, WNOHANG)); returns how many.
 * For a long-running parent of detached children (reattach --watch and the servers it starts),
 * which would otherwise keep each one as a zombie until it ends itself.
 */
export function reapExitedChildren(): number {
  const status = new Int32Array(new ArrayBuffer(4));
  let reaped = 0;
  while (libc().waitpid(-1, status, WNOHANG) > 0) reaped++;
  return reaped;
}
const WNOHANG = 1;

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
/** O_NOFOLLOW differs between x86_64 and arm64 (asm/fcntl.h). */
const OPEN_NOFOLLOW = Deno.build.arch === "aarch64" ? 0o100000 : 0o400000;

/**
 * open(2) read-only that refuses a symlink as the last component (ELOOP) and does not block on
 * a FIFO (O_NONBLOCK); the caller fstats the descriptor before trusting what it opened.
 */
export function openNoFollow(path: string): number {
  return openFile(path, O_RDONLY | OPEN_NOFOLLOW | O_NONBLOCK);
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
