/**
 * The sockets of one kernel NBD device served with direct reads: a reader thread
 * (reader_worker.ts) answers READs of cached and pinned bytes itself and passes everything else
 * to a DirectNbdConn per socket — an NbdConn, so lib/nbd/transmission.ts serves the rest as it
 * serves any socket. Replies written here take the socket's reply lock, so that one never lands
 * inside a reply of the reader's.
 */
import { closeFd, libc, strerror } from "../../ffi/libc.ts";
import { socketPair } from "../../ffi/io.ts";
import { SpareWorkers, startLibcWorker } from "../../ffi/libc_worker.ts";
import { waitAtMost } from "../timers.ts";
import { directReadArg, directReaderBody } from "../source/direct_read_body.ts";
import { servedBatchBody } from "../source/served_batch_body.ts";
import { activityRecorderBody } from "../source/read_activity_cell.ts";
import { walkClockBody } from "../source/walk_clock_body.ts";
import type { DirectReadFiles } from "../source/direct_reads.ts";
import * as log from "../log.ts";
import { fillTrace, fillTraceEnabled } from "../source/fill_trace.ts";
import type { NbdConn } from "./conn_io.ts";
import { type NbdReaderArg, nbdReaderBody, type NbdReaderMessage } from "./reader_worker.ts";

const SHUT_RDWR = 2;
/** How long close() waits for the reader to leave its loop before terminating it. */
const STOP_TIMEOUT_MS = 2000;

/** Reader threads, each waiting for its device's NbdReaderArg (nbdReaderBody). */
const spareReaders = new SpareWorkers(() =>
  startLibcWorker("nbd-reader", nbdReaderBody, null, {
    directReader: directReaderBody,
    servedBatch: servedBatchBody,
    walkClock: walkClockBody,
    activityRecorder: activityRecorderBody,
  })
);

/**
 * Starts reader threads for `count` devices to come: a thread's start-up (runtime, libc; 150+
 * ms of an attach under TCG) then overlaps the server's other work instead of the attach.
 */
export function prestartNbdReaders(count: number): void {
  spareReaders.prestart(count);
}

/** Ends the reader threads no device took (memory-only or tar layers: no direct reads). */
export function discardSpareNbdReaders(): void {
  spareReaders.discard();
}

/** One socket's side on this thread: request bytes from the reader, replies to the socket. */
export class DirectNbdConn implements NbdConn {
  #chunks: Uint8Array[] = [];
  #waiting?: () => void;
  /** null while open; then why the reader stopped reading this socket. */
  #ended: null | { error?: string } = null;
  #shut = false;
  /** Writes on pool threads not yet returned, and who waits for them to end. */
  #writing = 0;
  #writesEnded?: PromiseWithResolvers<void>;
  /** READs the reader answered on this socket. */
  servedDirectly = 0;

  constructor(
    readonly fd: number,
    private readonly locks: Int32Array,
    private readonly index: number,
  ) {}

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#ended) {
        if (this.#ended.error && !this.#shut) throw new Error(this.#ended.error);
        return null;
      }
      await new Promise<void>((resolve) => this.#waiting = resolve);
    }
    const chunk = this.#chunks[0];
    const n = Math.min(p.length, chunk.length);
    p.set(chunk.subarray(0, n));
    if (n === chunk.length) this.#chunks.shift();
    else this.#chunks[0] = chunk.subarray(n);
    return n;
  }

  /** Writes all of `p` under the reply lock (returns its length). */
  async write(p: Uint8Array): Promise<number> {
    await this.writeAll([p]);
    return p.length;
  }

  /** Writes `parts` back to back under the reply lock: one reply, never split by the reader's. */
  async writeAll(parts: Uint8Array[]): Promise<void> {
    if (this.#shut) throw new Error("NBD socket closed");
    const { locks, index } = this;
    while (Atomics.compareExchange(locks, index, 0, 1) !== 0) {
      const waited = Atomics.waitAsync(locks, index, 1, 100);
      if (waited.async) await waited.value;
    }
    try {
      for (const part of parts) {
        let done = 0;
        while (done < part.length) {
          // On a pool thread: the socket's buffer may be full until the kernel reads it.
          this.#writing++;
          let n: number;
          try {
            n = Number(
              await libc().write_nonblocking(
                this.fd,
                part.subarray(done),
                BigInt(part.length - done),
              ),
            );
          } finally {
            if (--this.#writing === 0) this.#writesEnded?.resolve();
          }
          if (n <= 0) throw new Error("NBD socket write failed");
          done += n;
        }
      }
    } finally {
      Atomics.store(locks, index, 0);
      Atomics.notify(locks, index);
    }
  }

  /**
   * Resolves when no write is on a pool thread: one queued there still runs after close()
   * shut the socket down, and must not find its number closed and taken by another file.
   */
  writesEnded(): Promise<void> {
    if (this.#writing === 0) return Promise.resolve();
    this.#writesEnded ??= Promise.withResolvers<void>();
    return this.#writesEnded.promise;
  }

  get writing(): boolean {
    return this.#writing > 0;
  }

  /** Shuts the socket down: the reader sees its end, a pending read returns null. */
  close(): void {
    if (this.#shut) return;
    this.#shut = true;
    libc().shutdown(this.fd, SHUT_RDWR);
    this.#ended ??= {};
    this.#wake();
  }

  /** From the reader: request bytes, or the socket's end. */
  deliver(bytes: Uint8Array): void {
    this.#chunks.push(bytes);
    this.#wake();
  }

  end(error?: string): void {
    this.#ended ??= error ? { error } : {};
    this.#wake();
  }

  #wake(): void {
    const wake = this.#waiting;
    this.#waiting = undefined;
    wake?.();
  }
}

/**
 * The sockets `fds` (ours, blocking; owned from here on) of one device, with a reader thread
 * answering from `files` (owned too: closed with the sockets). `onServed` gets the READs the
 * reader answered ([offset, length] pairs), for the source's LRU, readahead and statistics.
 */
export class DirectNbdConns {
  readonly conns: DirectNbdConn[];
  readonly #reader: Worker;
  readonly #done = Promise.withResolvers<void>();
  #readerDone = false;
  #closed = false;

  constructor(
    fds: number[],
    private readonly files: DirectReadFiles,
    onServed: (ranges: readonly number[]) => void,
    opts: { maxReadBytes: number },
  ) {
    const locks = new SharedArrayBuffer(4 * fds.length);
    const lockArray = new Int32Array(locks);
    this.conns = fds.map((fd, i) => new DirectNbdConn(fd, lockArray, i));
    this.#reader = spareReaders.take();
    const arg: NbdReaderArg = {
      fds,
      maxReadBytes: opts.maxReadBytes,
      direct: directReadArg(files),
      locks,
    };
    this.#reader.postMessage(arg);
    this.#reader.onmessage = (event: MessageEvent<NbdReaderMessage>) => {
      const message = event.data;
      if ("bytes" in message) {
        this.conns[message.conn].deliver(new Uint8Array(message.bytes));
      } else if ("served" in message) {
        message.perConn.forEach((n, i) => this.conns[i].servedDirectly += n);
        if (fillTraceEnabled) {
          const waitedMs = performance.timeOrigin + performance.now() - message.postedMs;
          fillTrace("nbd-served", message.served.length / 2, waitedMs.toFixed(1));
        }
        onServed(message.served);
      } else if ("end" in message) {
        this.conns[message.conn].end(
          message.end === "error" ? `NBD socket: ${strerror(message.errno)}` : undefined,
        );
      } else if ("done" in message) {
        this.#readerStopped();
      }
    };
    this.#reader.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      log.warn(`NBD reader thread failed: ${event.message}`);
      this.#readerStopped();
      for (const conn of this.conns) conn.end(`NBD reader thread failed: ${event.message}`);
    };
  }

  #readerStopped(): void {
    this.#readerDone = true;
    this.#done.resolve();
  }

  /**
   * Shuts every socket down, waits for the reader to leave its loop and for replies being
   * written on pool threads, then closes the sockets and the disk cache files. A reader that
   * did not stop in time may still be inside a read, a write may still be queued: those
   * descriptors are then left open (a closed number could name another file by then).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const conn of this.conns) conn.close();
    await waitAtMost(
      Promise.all([this.#done.promise, ...this.conns.map((conn) => conn.writesEnded())]),
      STOP_TIMEOUT_MS,
    );
    this.#reader.terminate();
    if (!this.#readerDone) {
      log.debug(`NBD reader did not stop: its sockets and disk cache descriptors stay open`);
      return;
    }
    for (const conn of this.conns) {
      if (conn.writing) log.debug(`NBD reply write did not end: its socket stays open`);
      else closeFd(conn.fd);
    }
    this.files.close();
  }
}

/**
 * `count` socket pairs for a device whose source offers direct reads: `kernelFds` for CONNECT
 * or RECONFIGURE (close them once the kernel has them), `direct` serving our ends.
 */
export function openDirectKernelConnections(
  count: number,
  files: DirectReadFiles,
  onServed: (ranges: readonly number[]) => void,
  opts: { maxReadBytes: number },
): { kernelFds: number[]; direct: DirectNbdConns } {
  const kernelFds: number[] = [];
  const ours: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const [kernel, mine] = socketPair();
      kernelFds.push(kernel);
      ours.push(mine);
    }
  } catch (error) {
    [...kernelFds, ...ours].forEach(closeFd);
    files.close();
    throw error;
  }
  return { kernelFds, direct: new DirectNbdConns(ours, files, onServed, opts) };
}
