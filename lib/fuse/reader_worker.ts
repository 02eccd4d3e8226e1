/**
 * The /dev/fuse reader: a worker thread blocks in read() so the main thread never does, and
 * posts every request to the main thread, which answers it. Replies are written from the main
 * thread (a write to /dev/fuse never blocks) — except READs of bytes a disk cache holds: with
 * `direct`, the reader answers those itself (pread from the cache file into the reply buffer,
 * one write), because the hop to the main thread and back cost ~4× the local file's time on a
 * full read of a tree of small files (8,889 READs of mostly 4–32 KiB, all sequential). The
 * reads it served are posted afterwards in batches (`served`) for the cache's LRU, readahead
 * and statistics.
 */
import type { ErrnoReader } from "../../ffi/libc_worker.ts";
import type { LibcSymbols } from "../../ffi/libc.ts";
import type { DirectRead, DirectReadArg, directReaderBody } from "../source/direct_read_body.ts";
import type { servedBatchBody } from "../source/served_batch_body.ts";
import type { activityRecorderBody } from "../source/read_activity_cell.ts";
import type { walkClockBody } from "../source/walk_clock_body.ts";

/** Helpers the reader body is given (self-contained functions, see ffi/libc_worker.ts). */
export interface FuseReaderHelpers {
  directReader: typeof directReaderBody;
  servedBatch: typeof servedBatchBody;
  walkClock: typeof walkClockBody;
  activityRecorder: typeof activityRecorderBody;
}

/** A disk cache the reader may read present chunks and pinned pages from. */
export interface FuseDirectReadArg extends DirectReadArg {
  /** The FUSE node id of the file these bytes are. */
  nodeId: number;
}

export interface FuseReaderArg {
  fd: number;
  /** read() buffer: the kernel refuses buffers smaller than max_write + headers. */
  bufferBytes: number;
  /**
   * Read end of a pipe the connection closes its write end of to stop the reader: it polls it
   * beside the device and returns when it is readable (EOF), instead of waking every so often
   * to let `terminate()` take effect (an idle mount then costs no wake-ups).
   */
  stopFd: number;
  /** Largest READ the kernel sends (max_pages × 4 KiB): the reply buffer's data part. */
  maxReadBytes: number;
  direct?: FuseDirectReadArg;
}

/**
 * Messages from the reader: one request (transferred), READs it answered itself ([offset,
 * length] pairs), or why it stopped.
 */
export type FuseReaderMessage =
  | { started: number /* the reader's Linux thread id */ }
  | { request: ArrayBuffer }
  | { served: number[] }
  | { end: "unmounted" | "stopped" | "error"; errno: number };

/**
 * Worker body of a reader (connection.ts), started before its connection exists when it can be
 * (prestartFuseReaders): it boots (runtime, libc) and runs `helpers.body` with the FuseReaderArg
 * of its first message.
 */
export function waitingReaderBody(
  libc: LibcSymbols,
  errno: ErrnoReader,
  _arg: null,
  helpers: FuseReaderHelpers & { body: typeof fuseReaderBody },
): void {
  const scope = self as unknown as {
    onmessage: ((event: MessageEvent<FuseReaderArg>) => void) | null;
  };
  scope.onmessage = (event) => {
    scope.onmessage = null;
    helpers.body(libc, errno, event.data, helpers);
  };
}

/**
 * Worker body (self-contained: shipped as source text, see ffi/libc_worker.ts). Loops until the
 * connection ends (ENODEV after unmount, POLLERR after an abort) or the stop pipe is closed.
 */
export function fuseReaderBody(
  libc: LibcSymbols,
  errno: ErrnoReader,
  arg: FuseReaderArg,
  helpers: FuseReaderHelpers,
): void {
  const EINTR = 4, ENOENT = 2, EAGAIN = 11, ENODEV = 19;
  const POLLIN = 1, POLLERR = 8, POLLHUP = 16, POLLNVAL = 32;
  /** fuse_in_header 40 B, fuse_read_in: fh u64, offset u64, size u32; fuse_out_header 16 B. */
  const IN_HEADER = 40, OUT_HEADER = 16, OP_READ = 15;
  const buffer = new Uint8Array(arg.bufferBytes);
  const view = new DataView(buffer.buffer);
  // struct pollfd { int fd; short events; short revents; }: the device, then the stop pipe.
  const pollfd = new Uint8Array(16);
  const pollView = new DataView(pollfd.buffer);
  pollView.setInt32(0, arg.fd, true);
  pollView.setInt16(4, POLLIN, true);
  pollView.setInt32(8, arg.stopFd, true);
  pollView.setInt16(12, POLLIN, true);
  const post = (message: unknown, transfer: Transferable[] = []) =>
    (self as unknown as Worker).postMessage(message, transfer);

  const direct = arg.direct;
  const reply = direct ? new Uint8Array(OUT_HEADER + arg.maxReadBytes) : new Uint8Array(0);
  const replyView = new DataView(reply.buffer);
  const readDirect: DirectRead | undefined = direct && helpers.directReader(
    libc,
    errno,
    direct,
    direct.activity && helpers.activityRecorder(direct.activity, helpers.walkClock),
  );
  const served = helpers.servedBatch((pairs) => post({ served: pairs }));
  const pollDevice = (timeoutMs: number) => libc.poll(pollfd, 2n, timeoutMs);
  /**
   * Answers a READ from the pinned pages or the cache file when all its pages are pinned or all
   * its chunks present; false: not done.
   */
  const serveDirect = (n: number): boolean => {
    if (!direct || n < IN_HEADER + 24 || view.getUint32(4, true) !== OP_READ) return false;
    if (view.getBigUint64(16, true) !== BigInt(direct.nodeId)) return false;
    const offset = Number(view.getBigUint64(IN_HEADER + 8, true));
    const length = Math.min(view.getUint32(IN_HEADER + 16, true), direct.sizeBytes - offset);
    if (!(length > 0) || length > arg.maxReadBytes) return false;
    if (!readDirect!(offset, reply.subarray(OUT_HEADER, OUT_HEADER + length))) return false;
    replyView.setUint32(0, OUT_HEADER + length, true);
    replyView.setInt32(4, 0, true);
    replyView.setBigUint64(8, view.getBigUint64(8, true), true);
    // ENOENT: interrupted meanwhile; ENODEV: unmounted (the next read says so). Either way
    // the request is answered as far as anyone can use it.
    while (libc.write(arg.fd, reply, BigInt(OUT_HEADER + length)) < 0 && errno() === EINTR);
    served.add(offset, length);
    return true;
  };

  post({ started: libc.gettid() });
  for (;;) {
    pollView.setInt16(6, 0, true);
    pollView.setInt16(14, 0, true);
    const ready = served.poll(pollDevice, -1);
    if (ready < 0) {
      const code = errno();
      if (code === EINTR) continue;
      served.flush();
      post({ end: "error", errno: code });
      return;
    }
    if (ready === 0) continue;
    if (pollView.getInt16(14, true) !== 0) {
      served.flush();
      post({ end: "stopped", errno: 0 });
      return;
    }
    const revents = pollView.getInt16(6, true);
    if (revents === 0) continue;
    if (revents & (POLLERR | POLLHUP | POLLNVAL) && !(revents & POLLIN)) {
      served.flush();
      post({ end: "unmounted", errno: ENODEV });
      return;
    }
    const n = Number(libc.read(arg.fd, buffer, BigInt(buffer.length)));
    if (n < 0) {
      const code = errno();
      // ENOENT: the request was interrupted before we read it; EAGAIN: another reader got it.
      if (code === EINTR || code === ENOENT || code === EAGAIN) continue;
      served.flush();
      post({ end: code === ENODEV ? "unmounted" : "error", errno: code });
      return;
    }
    if (serveDirect(n)) continue;
    const request = buffer.slice(0, n).buffer;
    post({ request }, [request]);
  }
}
