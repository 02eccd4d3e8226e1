/**
 * Pipes, unix sockets and poll(2) through libc: descriptors shared with child processes and the
 * kernel (NBD sockets, /dev/fuse, pidfds), which Deno's own APIs do not hand out.
 */
import {
  closeFd,
  Errno,
  errno,
  holdingBuffers,
  libc,
  O_CLOEXEC,
  O_NONBLOCK,
  SysError,
  unwrap,
} from "./libc.ts";

const F_GETFL = 3, F_SETFL = 4;

const encoder = new TextEncoder();

/** A close-on-exec pipe. */
export function makePipe(): { read: number; write: number } {
  const ends = new Int32Array(2);
  unwrap(libc().pipe2(ends, O_CLOEXEC), "pipe2");
  return { read: ends[0], write: ends[1] };
}

/** Sets O_NONBLOCK on `fd` (on its open file description: every copy of it shares the flag). */
export function setNonBlocking(fd: number): void {
  const flags = unwrap(libc().fcntl(fd, F_GETFL, 0), "fcntl", "F_GETFL");
  unwrap(libc().fcntl(fd, F_SETFL, flags | O_NONBLOCK), "fcntl", "F_SETFL");
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
  const code = connectTo(fd, path);
  if (code !== 0) {
    closeFd(fd);
    throw new SysError("connect", code, path);
  }
  return fd;
}

/** SOCK_NONBLOCK (the value of O_NONBLOCK on x86_64 and arm64). */
const SOCK_NONBLOCK = 0o4000;
const ECONNREFUSED = 111;

/**
 * Whether a server accepts on the unix socket file at `path`, asked without waiting (a server
 * whose backlog is full would hold a blocking connect forever): "live" (it connected, or the
 * backlog is full), "refused" (nobody listens: a file left by a server that ended) or "absent".
 */
export function probeUnixSocket(path: string): "live" | "refused" | "absent" {
  const fd = unwrap(
    libc().socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
    "socket",
  );
  try {
    const code = connectTo(fd, path);
    if (code === 0 || code === Errno.EAGAIN) return "live";
    if (code === ECONNREFUSED) return "refused";
    if (code === Errno.ENOENT) return "absent";
    throw new SysError("connect", code, path);
  } finally {
    closeFd(fd);
  }
}

/** connect(2) of `fd` to the unix socket `path`: 0, or the errno. */
function connectTo(fd: number, path: string): number {
  const addr = new Uint8Array(110);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  const name = encoder.encode(path);
  if (name.length >= 108) throw new SysError("connect", Errno.EINVAL, `${path}: path too long`);
  addr.set(name, 2);
  return libc().connect(fd, addr, 2 + name.length + 1) < 0 ? errno() : 0;
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
  return holdingBuffers(
    libc().poll_nonblocking(pollfds, BigInt(pollfds.length / 8), timeoutMs),
    pollfds,
  );
}
