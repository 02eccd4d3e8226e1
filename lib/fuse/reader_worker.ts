/**
 * The /dev/fuse reader of a process: one worker thread polls every FUSE connection's device
 * (one per mounted layer) and blocks there so the main thread never does, and posts every
 * request to the main thread, which answers it. Replies are written from the main thread (a
 * write to /dev/fuse never blocks) — except READs of bytes a disk cache holds: a connection
 * with `direct` has the reader answer those itself (pread from the cache file into the reply
 * buffer, one write), because the hop to the main thread and back cost ~4× the local file's
 * time on a full read of a tree of small files (8,889 READs of mostly 4–32 KiB, all
 * sequential). The reads it served are posted afterwards in batches (`served`) for the cache's
 * LRU, readahead and statistics.
 *
 * One thread for all connections, not one each: a thread is a V8 isolate (~6.5 MB resident,
 * 15 descriptors), and an image may list hundreds of layers (a 56 KB manifest listing one
 * 16 KiB layer 419 times took a mount server to 2.7 GB and 7,000 descriptors).
 *
 * Connections come and go while the thread sits in poll(), which no message interrupts: the
 * main thread counts its command in shared memory (`posted`), posts it and writes a byte to the
 * control pipe. The thread, woken, returns to its event loop while commands it has not applied
 * are counted, applies them as they arrive, and polls again once it has applied all counted.
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

/** The thread's first command: what it needs for every connection. */
export interface FuseReaderStart {
  /** Read end of the control pipe (non-blocking); its EOF ends the thread. */
  controlFd: number;
  /** One Int32: commands posted so far (the main thread adds 1 before each postMessage). */
  posted: SharedArrayBuffer;
  /** read() buffer: the kernel refuses buffers smaller than max_write + headers. */
  bufferBytes: number;
  /** Largest READ the kernel sends (max_pages × 4 KiB): the reply buffer's data part. */
  maxReadBytes: number;
}

/** A connection to serve: its /dev/fuse descriptor (non-blocking) and disk cache, if any. */
export interface FuseConnectionArg {
  id: number;
  fd: number;
  direct?: FuseDirectReadArg;
}

export type FuseReaderCommand =
  | { start: FuseReaderStart }
  | { add: FuseConnectionArg }
  /** Stop reading connection `remove`: answered with its end ("stopped"). */
  | { remove: number };

/**
 * Messages from the reader: one request of a connection (transferred), READs it answered
 * itself ([offset, length] pairs, `conns[i]` the connection of pair i), why a connection
 * ended (after which the thread no longer touches its descriptors), or that the thread ended.
 */
export type FuseReaderMessage =
  | { conn: number; started: number /* the reader's Linux thread id */ }
  | { conn: number; request: ArrayBuffer }
  | { served: number[]; conns: number[] }
  | { conn: number; end: "unmounted" | "stopped" | "error"; errno: number }
  | { closed: true };

/**
 * Worker body (self-contained: shipped as source text, see ffi/libc_worker.ts): applies the
 * commands it is sent and serves the connections it holds until the control pipe's EOF.
 */
export function fuseReaderBody(
  libc: LibcSymbols,
  errno: ErrnoReader,
  _arg: null,
  helpers: FuseReaderHelpers,
): void {
  const EINTR = 4, ENOENT = 2, EAGAIN = 11, ENODEV = 19;
  const POLLIN = 1, POLLERR = 8, POLLHUP = 16, POLLNVAL = 32;
  /** fuse_in_header 40 B, fuse_read_in: fh u64, offset u64, size u32; fuse_out_header 16 B. */
  const IN_HEADER = 40, OUT_HEADER = 16, OP_READ = 15;
  const scope = self as unknown as {
    onmessage: ((event: MessageEvent<FuseReaderCommand>) => void) | null;
    postMessage(message: FuseReaderMessage, transfer?: Transferable[]): void;
  };
  const post = (message: FuseReaderMessage, transfer: Transferable[] = []) =>
    scope.postMessage(message, transfer);

  interface Connection {
    id: number;
    fd: number;
    direct?: FuseDirectReadArg;
    readDirect?: DirectRead;
  }
  let start: FuseReaderStart;
  let posted: Int32Array;
  let applied = 0;
  let buffer = new Uint8Array(0);
  let view = new DataView(buffer.buffer);
  let reply = new Uint8Array(0);
  let replyView = new DataView(reply.buffer);
  const control = new Uint8Array(64);
  let connections: Connection[] = [];
  // struct pollfd { int fd; short events; short revents; }: the control pipe, then each device.
  let pollfd = new Uint8Array(8);
  let pollView = new DataView(pollfd.buffer);
  let pollSetStale = true;
  const threadId = libc.gettid();
  /** Connection of each [offset, length] pair in the batch being gathered. */
  let servedConns: number[] = [];
  const served = helpers.servedBatch((pairs) => {
    post({ served: pairs, conns: servedConns });
    servedConns = [];
  });

  const buildPollSet = () => {
    pollfd = new Uint8Array(8 * (connections.length + 1));
    pollView = new DataView(pollfd.buffer);
    [start.controlFd, ...connections.map((c) => c.fd)].forEach((fd, i) => {
      pollView.setInt32(8 * i, fd, true);
      pollView.setInt16(8 * i + 4, POLLIN, true);
    });
    pollSetStale = false;
  };
  const pollAll = (timeoutMs: number) =>
    libc.poll(pollfd, BigInt(connections.length + 1), timeoutMs);
  /** Drops a connection: from here on its descriptors are the main thread's alone. */
  const end = (id: number, why: "unmounted" | "stopped" | "error", code: number) => {
    const before = connections.length;
    connections = connections.filter((c) => c.id !== id);
    pollSetStale ||= connections.length !== before;
    served.flush(); // before the end: the main thread counts them first
    post({ conn: id, end: why, errno: code });
  };
  /**
   * Answers a READ of `conn` (in `buffer`, `n` bytes) from the pinned pages or the cache file
   * when all its pages are pinned or all its chunks present; false: not done.
   */
  const serveDirect = (conn: Connection, n: number): boolean => {
    const direct = conn.direct;
    if (!direct || n < IN_HEADER + 24 || view.getUint32(4, true) !== OP_READ) return false;
    if (view.getBigUint64(16, true) !== BigInt(direct.nodeId)) return false;
    const offset = Number(view.getBigUint64(IN_HEADER + 8, true));
    const length = Math.min(view.getUint32(IN_HEADER + 16, true), direct.sizeBytes - offset);
    if (!(length > 0) || length > start.maxReadBytes) return false;
    if (!conn.readDirect!(offset, reply.subarray(OUT_HEADER, OUT_HEADER + length))) return false;
    replyView.setUint32(0, OUT_HEADER + length, true);
    replyView.setInt32(4, 0, true);
    replyView.setBigUint64(8, view.getBigUint64(8, true), true);
    // ENOENT: interrupted meanwhile; ENODEV: unmounted (the next read says so). Either way
    // the request is answered as far as anyone can use it.
    while (libc.write(conn.fd, reply, BigInt(OUT_HEADER + length)) < 0 && errno() === EINTR);
    servedConns.push(conn.id); // before add(), which may post the batch
    served.add(offset, length);
    return true;
  };
  /** Takes one request of `conn` if the kernel has one, or notes the connection's end. */
  const readOne = (conn: Connection, revents: number): void => {
    if (revents & (POLLERR | POLLHUP | POLLNVAL) && !(revents & POLLIN)) {
      end(conn.id, "unmounted", ENODEV);
      return;
    }
    if (!(revents & POLLIN)) return;
    const n = Number(libc.read(conn.fd, buffer, BigInt(buffer.length)));
    if (n < 0) {
      const code = errno();
      // ENOENT: the request was interrupted before we read it; EAGAIN: nothing left to read.
      if (code === EINTR || code === ENOENT || code === EAGAIN) return;
      end(conn.id, code === ENODEV ? "unmounted" : "error", code);
      return;
    }
    if (serveDirect(conn, n)) return;
    const request = buffer.slice(0, n).buffer;
    post({ conn: conn.id, request }, [request]);
  };
  /** Polls and reads until commands wait (returns to the event loop) or the pipe's EOF. */
  const serve = () => {
    for (;;) {
      if (pollSetStale) buildPollSet();
      for (let i = 0; i <= connections.length; i++) pollView.setInt16(8 * i + 6, 0, true);
      const ready = served.poll(pollAll, -1);
      if (ready < 0) {
        const code = errno();
        if (code === EINTR) continue;
        if (connections.length > 0) {
          // Something here cannot be polled: every connection ends, and the control pipe alone
          // is polled on (its EOF must still end the thread, or the worker keeps the process
          // alive and the pipe's read end leaks).
          for (const conn of [...connections]) end(conn.id, "error", code);
          continue;
        }
        // Not even the control pipe: the thread ends (the main thread terminates the worker).
        served.flush();
        post({ closed: true });
        return;
      }
      if (ready === 0) continue;
      // Readiness is read before any connection is dropped (which reorders the set).
      const polled = connections.map((conn, i) => ({
        conn,
        revents: pollView.getInt16(8 * i + 14, true),
      }));
      for (const { conn, revents } of polled) {
        if (revents !== 0) readOne(conn, revents);
      }
      if (pollView.getInt16(6, true) !== 0) {
        const n = Number(libc.read(start.controlFd, control, BigInt(control.length)));
        if (n === 0) {
          served.flush();
          post({ closed: true });
          return;
        }
        if (Atomics.load(posted, 0) !== applied) return;
      }
    }
  };

  scope.onmessage = (event) => {
    const command = event.data;
    if ("start" in command) {
      start = command.start;
      posted = new Int32Array(start.posted);
      buffer = new Uint8Array(start.bufferBytes);
      view = new DataView(buffer.buffer);
    } else if ("add" in command) {
      const { id, fd, direct } = command.add;
      const readDirect = direct && helpers.directReader(
        libc,
        errno,
        direct,
        direct.activity && helpers.activityRecorder(direct.activity, helpers.walkClock),
      );
      if (direct && reply.length === 0) {
        reply = new Uint8Array(OUT_HEADER + start.maxReadBytes);
        replyView = new DataView(reply.buffer);
      }
      connections.push({ id, fd, direct, readDirect });
      pollSetStale = true;
      post({ conn: id, started: threadId });
    } else {
      end(command.remove, "stopped", 0);
    }
    applied++;
    if (applied === Atomics.load(posted, 0)) serve();
  };
}
