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
  // int umount2(...);  — on a pool thread, for mounts whose backing server runs on this thread
  umount2_nonblocking: {
    name: "umount2",
    parameters: ["buffer", "i32"],
    result: "i32",
    nonblocking: true,
  },
  // mode_t umask(mode_t mask);
  umask: { parameters: ["u32"], result: "u32" },
  // int chdir(const char *path);
  chdir: { parameters: ["buffer"], result: "i32" },
  // int fchdir(int fd);
  fchdir: { parameters: ["i32"], result: "i32" },
  // pid_t gettid(void);
  gettid: { parameters: [], result: "i32" },
  // int setpriority(int which, id_t who, int prio);  — on Linux, who 0 is the calling thread
  setpriority: { parameters: ["i32", "u32", "i32"], result: "i32" },
  // int getpriority(int which, id_t who);
  getpriority: { parameters: ["i32", "u32"], result: "i32" },
  // int getrlimit(int resource, struct rlimit *rlim);
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  // int setsid(void);
  setsid: { parameters: [], result: "i32" },
  // int fcntl(int fd, int cmd, int arg);
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // int flock(int fd, int operation);  — whole-file locks, on directories too
  flock: { parameters: ["i32", "i32"], result: "i32" },
  // DIR *opendir(const char *name);
  opendir: { parameters: ["buffer"], result: "pointer" },
  // struct dirent *readdir(DIR *dirp);
  readdir: { parameters: ["pointer"], result: "pointer" },
  // int closedir(DIR *dirp);
  closedir: { parameters: ["pointer"], result: "i32" },
  // int openat(int dirfd, const char *pathname, int flags, mode_t mode);
  openat: { parameters: ["i32", "buffer", "i32", "u32"], result: "i32" },
  // ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t bufsiz);
  readlinkat: { parameters: ["i32", "buffer", "buffer", "usize"], result: "isize" },
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
  // int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);
  renameat: { parameters: ["i32", "buffer", "i32", "buffer"], result: "i32" },
  // int mkdirat(int dirfd, const char *pathname, mode_t mode);
  mkdirat: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // int unlinkat(int dirfd, const char *pathname, int flags);
  unlinkat: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // ssize_t listxattr(const char *path, char *list, size_t size);
  listxattr: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  // ssize_t getxattr(const char *path, const char *name, void *value, size_t size);
  getxattr: { parameters: ["buffer", "buffer", "buffer", "usize"], result: "isize" },
  // ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size);
  lgetxattr: { parameters: ["buffer", "buffer", "buffer", "usize"], result: "isize" },
  // int access(const char *path, int mode);
  access: { parameters: ["buffer", "i32"], result: "i32" },
  // int faccessat(int dirfd, const char *path, int mode, int flags);
  faccessat: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
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
let errnoOfThisThread: ReturnType<typeof errnoCell> | undefined;

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
  if (!symbols) {
    const bound = bindLazily(LIBC_SYMBOLS, ["__errno_location", "strerror"])
      .symbols as unknown as LibcSymbols;
    // The cell's view exists before the first call whose errno anyone reads.
    errnoOfThisThread = errnoCell(() => bound.__errno_location());
    symbols = bound;
  }
  return symbols;
}

/**
 * errno of the calling thread, read through a view of its cell made once: `__errno_location`
 * returns a pointer object, and anything the runtime does between a failed call and the read
 * (allocating that object can start a GC, which makes system calls) may set errno (readdir of
 * /sys saw EAGAIN). The cell's address is fixed for the thread's life; reading the view allocates
 * nothing. Self-contained: libc_worker.ts ships it to worker threads as source text.
 */
export function errnoCell(
  errnoLocation: () => Deno.PointerValue,
): { read(): number; clear(): void } {
  const pointer = errnoLocation();
  if (!pointer) throw new Error("__errno_location returned NULL");
  const cell = new Int32Array(Deno.UnsafePointerView.getArrayBuffer(pointer, 4));
  return { read: () => cell[0], clear: () => void (cell[0] = 0) };
}

function thisThreadErrno(): ReturnType<typeof errnoCell> {
  libc();
  return errnoOfThisThread!;
}

/** errno of the last synchronous libc call on this thread. */
export function errno(): number {
  return thisThreadErrno().read();
}

/** Sets errno to 0: for calls (readdir) whose only sign of failure is errno changing. */
export function clearErrno(): void {
  thisThreadErrno().clear();
}

export function strerror(code: number): string {
  const ptr = libc().strerror(code);
  return ptr ? Deno.UnsafePointerView.getCString(ptr) : `errno ${code}`;
}

/** Well-known errno values: defined beside the errors that name them (lib/errors.ts). */
export { Errno } from "../lib/errors.ts";

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

/**
 * Awaits a `nonblocking` FFI call with `buffers` (its pointer arguments) referenced until it
 * returns. Deno's FFI documentation promises no such thing for a call on a pool thread (a
 * pointer keeps nothing alive); Deno 2.9 happens to keep them, and this holds whatever it does:
 * a temporary such as `cstr(path)` freed mid-call would be read after being reused.
 */
export async function holdingBuffers<T>(call: Promise<T>, ...buffers: Uint8Array[]): Promise<T> {
  try {
    return await call;
  } finally {
    for (const buffer of buffers) void buffer.byteLength;
  }
}

/** NUL-terminated C string for `buffer` parameters. */
export function cstr(value: string): Uint8Array<ArrayBuffer> {
  const bytes = encoder.encode(value);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

export const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_CLOEXEC = 0o2000000, O_NONBLOCK = 0o4000;
/** Longest unix socket path (sockaddr_un's sun_path holds 108 bytes, the NUL included). */
export const MAX_UNIX_SOCKET_PATH_BYTES = 107;
/** open(2) flags whose values differ between x86_64 and arm64 (asm/fcntl.h). */
const ARM64 = Deno.build.arch === "aarch64";
export const O_PATH = 0o10000000;
export const O_DIRECTORY = ARM64 ? 0o40000 : 0o200000;
export const O_NOFOLLOW = ARM64 ? 0o100000 : 0o400000;
export const O_CREAT = 0o100, O_EXCL = 0o200;
/** O_TMPFILE includes O_DIRECTORY. */
export const O_TMPFILE = ARM64 ? 0o20040000 : 0o20200000;
/** The *at(2) calls' "relative to the working directory" and flags (fcntl.h). */
export const AT_FDCWD = -100, AT_SYMLINK_NOFOLLOW = 0x100, AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;
/** unlinkat(2)'s flag: remove a directory (empty). */
export const AT_REMOVEDIR = 0x200;

/** The address of `buffer`'s bytes, for system calls that take a pointer as a number. */
export function addressOf(buffer: Uint8Array<ArrayBuffer>): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)));
}

export function closeFd(fd: number): void {
  libc().close(fd);
}
