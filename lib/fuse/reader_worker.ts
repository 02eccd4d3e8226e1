/**
 * The /dev/fuse reader: a worker thread blocks in read() so the main thread never does, and
 * posts every request to the main thread, which answers it. Replies are written from the main
 * thread (a write to /dev/fuse never blocks).
 */
import type { ErrnoReader } from "../../ffi/libc_worker.ts";
import type { LibcSymbols } from "../../ffi/libc.ts";

export interface FuseReaderArg {
  fd: number;
  /** read() buffer: the kernel refuses buffers smaller than max_write + headers. */
  bufferBytes: number;
  /** poll() timeout, so `terminate()` takes effect even when no request comes. */
  pollMs: number;
}

/** Messages from the reader: one request (transferred), or why it stopped. */
export type FuseReaderMessage =
  | { started: number /* the reader's Linux thread id */ }
  | { request: ArrayBuffer }
  | { end: "unmounted" | "error"; errno: number };

/**
 * Worker body (self-contained: shipped as source text, see ffi/libc_worker.ts). Loops until the
 * connection ends (ENODEV after unmount, POLLERR after an abort) or the worker is terminated.
 */
export function fuseReaderBody(libc: LibcSymbols, errno: ErrnoReader, arg: FuseReaderArg): void {
  const EINTR = 4, ENOENT = 2, EAGAIN = 11, ENODEV = 19;
  const POLLIN = 1, POLLERR = 8, POLLHUP = 16, POLLNVAL = 32;
  const buffer = new Uint8Array(arg.bufferBytes);
  const pollfd = new Uint8Array(8); // struct pollfd { int fd; short events; short revents; }
  const pollView = new DataView(pollfd.buffer);
  pollView.setInt32(0, arg.fd, true);
  pollView.setInt16(4, POLLIN, true);
  const post = (message: unknown, transfer: Transferable[] = []) =>
    (self as unknown as Worker).postMessage(message, transfer);
  post({ started: libc.gettid() });
  for (;;) {
    pollView.setInt16(6, 0, true);
    const ready = libc.poll(pollfd, 1n, arg.pollMs);
    if (ready < 0) {
      const code = errno();
      if (code === EINTR) continue;
      post({ end: "error", errno: code });
      return;
    }
    if (ready === 0) continue;
    const revents = pollView.getInt16(6, true);
    if (revents & (POLLERR | POLLHUP | POLLNVAL) && !(revents & POLLIN)) {
      post({ end: "unmounted", errno: ENODEV });
      return;
    }
    const n = Number(libc.read(arg.fd, buffer, BigInt(buffer.length)));
    if (n < 0) {
      const code = errno();
      // ENOENT: the request was interrupted before we read it; EAGAIN: another reader got it.
      if (code === EINTR || code === ENOENT || code === EAGAIN) continue;
      post({ end: code === ENODEV ? "unmounted" : "error", errno: code });
      return;
    }
    const request = buffer.slice(0, n).buffer;
    post({ request }, [request]);
  }
}
