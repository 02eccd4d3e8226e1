/**
 * The NBD reader of a kernel device: one worker thread owns the read side of the device's
 * sockets (blocking poll and read) and answers READs of bytes the disk cache or the pinned
 * pages hold by itself — pread into the reply buffer, one write — without the hop through the
 * main thread's event loop, which under emulation (the TCG test VM) cost a cold full read
 * 2–4 s over a C server answering from RAM. Every other request (a miss, a READ it cannot
 * place, FLUSH, DISC…) goes to the main thread unchanged, as bytes of the connection's stream
 * (DirectNbdConn.read), where lib/nbd/transmission.ts serves it as it serves any socket; after
 * a WRITE (its payload follows) or a bad magic, all later bytes go there unparsed, so the
 * protocol has one implementation. Replies of both threads are whole: a per-socket lock in
 * shared memory (1 while a reply is being written) keeps them from interleaving.
 *
 * The reader reads its sockets without regard to what the main thread still has to answer: it
 * serves kernel sockets only (lib/mount/exports.ts), and the kernel has no more requests
 * outstanding than its queue depth (128 per connection), so what it forwards stays small.
 * Sockets of `serve`, whose clients are not trusted, keep serveTransmission's back-pressure.
 */
import type { ErrnoReader } from "../../ffi/libc_worker.ts";
import type { LibcSymbols } from "../../ffi/libc.ts";
import type { DirectRead, DirectReadArg, directReaderBody } from "../source/direct_read_body.ts";
import type { servedBatchBody } from "../source/served_batch_body.ts";
import type { activityRecorderBody } from "../source/read_activity_cell.ts";
import type { walkClockBody } from "../source/walk_clock_body.ts";

export interface NbdReaderArg {
  /** Our ends of the device's sockets (blocking). */
  fds: number[];
  /** Largest READ answered here (the reply buffer's data part); larger ones go to main. */
  maxReadBytes: number;
  direct: DirectReadArg;
  /** One Int32 per socket: the reply lock (see above). */
  locks: SharedArrayBuffer;
}

/**
 * Messages from the reader: request bytes for the main thread (transferred), READs it answered
 * itself ([offset, length] pairs, and how many per socket), a socket's end (EOF, or errno), and
 * its own end once every socket has ended.
 */
export type NbdReaderMessage =
  | { started: number /* the reader's Linux thread id */ }
  | { conn: number; bytes: ArrayBuffer }
  | { served: number[]; perConn: number[]; postedMs: number /* epoch ms */ }
  | { conn: number; end: "eof" | "error"; errno: number }
  | { done: true };

export interface NbdReaderHelpers {
  directReader: typeof directReaderBody;
  servedBatch: typeof servedBatchBody;
  walkClock: typeof walkClockBody;
  activityRecorder: typeof activityRecorderBody;
}

/**
 * Worker body (self-contained, see ffi/libc_worker.ts): boots, then waits for its NbdReaderArg
 * (shared memory cannot travel in the JSON start argument) and runs the loop.
 */
export function nbdReaderBody(
  libc: LibcSymbols,
  errno: ErrnoReader,
  _arg: null,
  helpers: NbdReaderHelpers,
): void {
  const scope = self as unknown as {
    onmessage: ((event: MessageEvent<NbdReaderArg>) => void) | null;
    postMessage(message: unknown, transfer?: Transferable[]): void;
  };
  scope.onmessage = (event) => {
    scope.onmessage = null;
    serve(event.data);
  };

  function serve(arg: NbdReaderArg): void {
    const EINTR = 4, EAGAIN = 11;
    const POLLIN = 1;
    const REQUEST_BYTES = 28, REPLY_BYTES = 16;
    const REQUEST_MAGIC = 0x25609513, SIMPLE_REPLY_MAGIC = 0x67446698;
    const CMD_READ = 0, CMD_WRITE = 1;
    const post = (message: NbdReaderMessage, transfer: Transferable[] = []) =>
      scope.postMessage(message, transfer);
    const readDirect: DirectRead = helpers.directReader(
      libc,
      errno,
      arg.direct,
      arg.direct.activity && helpers.activityRecorder(arg.direct.activity, helpers.walkClock),
    );
    const locks = new Int32Array(arg.locks);
    const count = arg.fds.length;
    const conns = arg.fds.map((fd) => ({
      fd,
      open: true,
      /** After a WRITE or a bad magic: everything goes to the main thread unparsed. */
      passthrough: false,
      buffer: new Uint8Array(64 << 10),
      start: 0,
      end: 0,
    }));
    const pollfds = new Uint8Array(8 * count); // struct pollfd { int fd; short events, revents; }
    const pollView = new DataView(pollfds.buffer);
    conns.forEach((conn, i) => {
      pollView.setInt32(8 * i, conn.fd, true);
      pollView.setInt16(8 * i + 4, POLLIN, true);
    });
    let reply = new Uint8Array(REPLY_BYTES + 128 * 1024);
    /** Reads served per socket since the last batch was posted. */
    let perConn = new Array<number>(count).fill(0);
    const served = helpers.servedBatch((pairs) => {
      post({ served: pairs, perConn, postedMs: performance.timeOrigin + performance.now() });
      perConn = new Array<number>(count).fill(0);
    });
    const pollSockets = (timeoutMs: number) => libc.poll(pollfds, BigInt(count), timeoutMs);
    let open = count;

    const close = (i: number, end: "eof" | "error", code: number) => {
      const conn = conns[i];
      if (!conn.open) return;
      conn.open = false;
      pollView.setInt32(8 * i, -1, true); // poll skips negative descriptors
      open--;
      served.flush(); // before the end: the main thread counts them first
      post({ conn: i, end, errno: code });
    };
    const writeAll = (fd: number, bytes: Uint8Array): number => {
      let done = 0;
      while (done < bytes.length) {
        const n = Number(libc.write(fd, bytes.subarray(done), BigInt(bytes.length - done)));
        if (n < 0) {
          const code = errno();
          if (code === EINTR) continue;
          return code;
        }
        done += n;
      }
      return 0;
    };
    /** Answers a READ here when its bytes are all at hand; false: the main thread's. */
    const serveRead = (i: number, at: number, offset: number, length: number): boolean => {
      if (!(length > 0) || length > arg.maxReadBytes) return false;
      if (offset + length > arg.direct.sizeBytes) return false;
      if (reply.length < REPLY_BYTES + length) {
        reply = new Uint8Array(REPLY_BYTES + Math.max(length, 2 * (reply.length - REPLY_BYTES)));
      }
      if (!readDirect(offset, reply.subarray(REPLY_BYTES, REPLY_BYTES + length))) return false;
      const conn = conns[i];
      const view = new DataView(reply.buffer);
      view.setUint32(0, SIMPLE_REPLY_MAGIC);
      view.setUint32(4, 0);
      reply.set(conn.buffer.subarray(at + 8, at + 16), 8); // the cookie
      while (Atomics.compareExchange(locks, i, 0, 1) !== 0) Atomics.wait(locks, i, 1, 100);
      let code: number;
      try {
        code = writeAll(conn.fd, reply.subarray(0, REPLY_BYTES + length));
      } finally {
        Atomics.store(locks, i, 0);
        Atomics.notify(locks, i);
      }
      if (code !== 0) {
        close(i, "error", code);
        return true;
      }
      perConn[i]++; // before add(), which may post the batch
      served.add(offset, length);
      return true;
    };
    /** Takes the complete requests in conn i's buffer; returns the bytes for the main thread. */
    const take = (i: number): Uint8Array[] => {
      const conn = conns[i];
      const view = new DataView(conn.buffer.buffer);
      const forward: Uint8Array[] = [];
      while (!conn.passthrough && conn.end - conn.start >= REQUEST_BYTES) {
        const at = conn.start;
        const type = view.getUint16(at + 6);
        if (view.getUint32(at) !== REQUEST_MAGIC || type === CMD_WRITE) {
          conn.passthrough = true;
          break;
        }
        const offset = Number(view.getBigUint64(at + 16));
        const length = view.getUint32(at + 24);
        if (type !== CMD_READ || !serveRead(i, at, offset, length)) {
          forward.push(conn.buffer.slice(at, at + REQUEST_BYTES));
        }
        conn.start += REQUEST_BYTES;
        if (!conn.open) return [];
      }
      if (conn.passthrough) {
        forward.push(conn.buffer.slice(conn.start, conn.end));
        conn.start = conn.end;
      }
      // A partial request stays, moved to the front.
      conn.buffer.copyWithin(0, conn.start, conn.end);
      conn.end -= conn.start;
      conn.start = 0;
      return forward;
    };

    post({ started: libc.gettid() });
    while (open > 0) {
      for (let i = 0; i < count; i++) pollView.setInt16(8 * i + 6, 0, true);
      // No timeout: DirectNbdConns.close() shuts the sockets down, which wakes the poll, so an
      // idle device costs no wake-ups.
      const ready = served.poll(pollSockets, -1);
      if (ready < 0) {
        const code = errno();
        if (code === EINTR) continue;
        for (let i = 0; i < count; i++) close(i, "error", code);
        break;
      }
      for (let i = 0; i < count && ready > 0; i++) {
        const conn = conns[i];
        if (!conn.open || pollView.getInt16(8 * i + 6, true) === 0) continue;
        const space = conn.buffer.subarray(conn.end);
        const n = Number(libc.read(conn.fd, space, BigInt(space.length)));
        if (n < 0) {
          const code = errno();
          if (code !== EINTR && code !== EAGAIN) close(i, "error", code);
          continue;
        }
        if (n === 0) {
          close(i, "eof", 0);
          continue;
        }
        conn.end += n;
        const forward = take(i);
        if (forward.length === 0 || !conn.open) continue;
        const total = forward.reduce((sum, part) => sum + part.length, 0);
        const bytes = new Uint8Array(total);
        let at = 0;
        for (const part of forward) {
          bytes.set(part, at);
          at += part.length;
        }
        post({ conn: i, bytes: bytes.buffer }, [bytes.buffer]);
      }
    }
    served.flush();
    post({ done: true });
  }
}
