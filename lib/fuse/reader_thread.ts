/**
 * The process's FUSE reader thread (reader_worker.ts), shared by every connection: started
 * with the first, ended once the last has gone (an idle worker would keep the process alive).
 */
import { closeFd, Errno, errno, libc, strerror } from "../../ffi/libc.ts";
import { makePipe, setNonBlocking } from "../../ffi/io.ts";
import { startLibcWorker } from "../../ffi/libc_worker.ts";
import { directReaderBody } from "../source/direct_read_body.ts";
import { servedBatchBody } from "../source/served_batch_body.ts";
import { activityRecorderBody } from "../source/read_activity_cell.ts";
import { walkClockBody } from "../source/walk_clock_body.ts";
import * as log from "../log.ts";
import {
  type FuseConnectionArg,
  fuseReaderBody,
  type FuseReaderCommand,
  type FuseReaderMessage,
} from "./reader_worker.ts";

/** What the reader thread tells a connection. */
export interface FuseReaderClient {
  request(bytes: Uint8Array): void;
  /** READs the thread answered itself: [offset, length] pairs. */
  served(ranges: number[]): void;
  started(threadId: number): void;
  /**
   * The thread no longer reads the connection (nor touches its descriptors): the kernel ended
   * it ("unmounted"), `detach` asked ("stopped"), or reading failed ("error", with why).
   */
  ended(why: "unmounted" | "stopped" | "error", reason: string): void;
}

export interface FuseReaderLimits {
  /** read() buffer: the kernel refuses buffers smaller than max_write + headers. */
  bufferBytes: number;
  /** Largest READ the kernel sends: the reply buffer's data part. */
  maxReadBytes: number;
}

class FuseReaderThread {
  readonly #worker: Worker;
  readonly #control = makePipe();
  readonly #posted = new Int32Array(new SharedArrayBuffer(4));
  readonly #clients = new Map<number, FuseReaderClient>();
  #nextId = 1;
  #closing = false;

  constructor(limits: FuseReaderLimits, private readonly onClosed: () => void) {
    setNonBlocking(this.#control.read);
    setNonBlocking(this.#control.write);
    this.#worker = startLibcWorker("fuse-reader", fuseReaderBody, null, {
      directReader: directReaderBody,
      servedBatch: servedBatchBody,
      walkClock: walkClockBody,
      activityRecorder: activityRecorderBody,
    });
    this.#worker.onmessage = (event: MessageEvent<FuseReaderMessage>) => this.#receive(event.data);
    this.#worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      log.warn(`FUSE reader thread failed: ${event.message}`);
      // Its stack has unwound: nothing of it polls the pipe any more.
      this.#abandon(event.message);
    };
    this.#send({
      start: {
        controlFd: this.#control.read,
        posted: this.#posted.buffer as SharedArrayBuffer,
        ...limits,
      },
    });
  }

  get idle(): boolean {
    return this.#clients.size === 0;
  }

  /**
   * Has the thread serve `fd` (O_NONBLOCK is set on it: one connection with nothing to read
   * must not stall the others); returns the id to `detach` it by.
   */
  attach(fd: number, direct: FuseConnectionArg["direct"], client: FuseReaderClient): number {
    setNonBlocking(fd);
    const id = this.#nextId++;
    this.#clients.set(id, client);
    this.#send({ add: { id, fd, ...(direct ? { direct } : {}) } });
    return id;
  }

  /** Asks the thread to stop reading connection `id`; its client hears `ended("stopped")`. */
  detach(id: number): void {
    if (this.#clients.has(id)) this.#send({ remove: id });
  }

  #send(command: FuseReaderCommand): void {
    // Counted before it is posted: a thread that applied it before the count would take it
    // for a command still to come and wait in its event loop instead of polling.
    Atomics.add(this.#posted, 0, 1);
    this.#worker.postMessage(command);
    this.#wake();
  }

  #wake(): void {
    // EAGAIN: the pipe is full of wake-ups already.
    if (libc().write(this.#control.write, new Uint8Array(1), 1n) < 0 && errno() !== Errno.EAGAIN) {
      log.warn(`cannot wake the FUSE reader thread: ${strerror(errno())}`);
    }
  }

  #receive(message: FuseReaderMessage): void {
    if ("served" in message) {
      const byConnection = new Map<number, number[]>();
      message.conns.forEach((id, i) => {
        const ranges = byConnection.get(id) ?? [];
        if (ranges.length === 0) byConnection.set(id, ranges);
        ranges.push(message.served[2 * i], message.served[2 * i + 1]);
      });
      for (const [id, ranges] of byConnection) this.#clients.get(id)?.served(ranges);
      return;
    }
    if ("closed" in message) {
      // The thread has left its loop (the pipe's EOF, or poll() failing even on the pipe): the
      // read end is unused now, and connections attached meanwhile are read by no one.
      this.#abandon("the FUSE reader thread stopped");
      return;
    }
    const client = this.#clients.get(message.conn);
    if (!client) return; // ended already
    if ("request" in message) client.request(new Uint8Array(message.request));
    else if ("started" in message) client.started(message.started);
    else {
      this.#clients.delete(message.conn);
      client.ended(message.end, message.end === "error" ? strerror(message.errno) : "");
      if (this.#clients.size === 0) this.#close();
    }
  }

  /** Ends the worker, which no longer runs its loop; connections it held end with `reason`. */
  #abandon(reason: string): void {
    const clients = [...this.#clients.values()];
    this.#clients.clear();
    for (const client of clients) client.ended("error", reason);
    this.#close();
    this.#worker.terminate();
    closeFd(this.#control.read);
  }

  /** The pipe's EOF wakes the thread, which leaves its loop and says so (`closed`). */
  #close(): void {
    if (this.#closing) return;
    this.#closing = true;
    closeFd(this.#control.write);
    this.onClosed();
  }

  /** Ends a thread no connection uses. */
  discard(): void {
    if (this.idle) this.#close();
  }
}

let current: FuseReaderThread | undefined;

/** The reader thread, started if there is none (`limits` apply to a new one). */
export function fuseReaderThread(limits: FuseReaderLimits): FuseReaderThread {
  current ??= new FuseReaderThread(limits, () => current = undefined);
  return current;
}

/** Ends the reader thread if no connection uses it (else it ends with its last one). */
export function discardIdleFuseReader(): void {
  current?.discard();
}

export type { FuseReaderThread };
