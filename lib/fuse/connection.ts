/**
 * One mounted FUSE connection: the /dev/fuse descriptor, the reader thread it shares with every
 * other connection of the process (reader_thread.ts) and the request handler on this thread (see
 * blob.ts for the threading rules).
 */
import { addressOf, closeFd, Errno, errno, libc, strerror, SysError } from "../../ffi/libc.ts";
import { writeSmallFile } from "../../ffi/files.ts";
import { MNT_DETACH } from "../../ffi/mount.ts";
import { after, type Timer, waitAtMost } from "../timers.ts";
import { MountError } from "../errors.ts";
import * as log from "../log.ts";
import { findMount } from "../sys/mountinfo.ts";
import { umountOffThread } from "../sys/mount_task.ts";
import type { Source } from "../source/source.ts";
import { type DirectReadFiles, isDirectReadable } from "../source/direct_reads.ts";
import { directReadArg } from "../source/direct_read_body.ts";
import { encodeResendNotify, FUSE_MAX_MAX_PAGES } from "./protocol.ts";
import { discardIdleFuseReader, type FuseReaderThread, fuseReaderThread } from "./reader_thread.ts";
import { FILE_NODE_ID, SingleFileFuseServer } from "./server.ts";

/** Largest request payload accepted (the kernel sizes WRITEs by it; we get none). */
const MAX_WRITE_BYTES = 1 << 20;
/** read() buffer: max_write plus room for the headers. */
const READ_BUFFER_BYTES = MAX_WRITE_BYTES + 4096;
/** Buffered reads of 1 MiB on the FUSE file (INIT can only lower the 128 KiB default). */
const READ_AHEAD_KB = 1024;
/**
 * Readahead of a file read through the page cache (tar layers, `pageCache`): 256 KiB. At 1 MiB
 * the window ran past the last file a reader wanted into the next gzip interval (python tree,
 * a tenth of the files in tar order: 8 % -> 16 % of the layer fetched); at 256 KiB that stays
 * 8 % and the benchmark tree's full read was no slower (1.30-1.33 s against 1.58-1.64 s, server
 * RSS 160 against 186 MB; 2 pairs).
 */
const PAGE_CACHE_READ_AHEAD_KB = 256;
/**
 * Readahead through the page cache of a file the reader thread reads from a disk cache
 * (EROFS layers, issue 12): a READ that hits costs a pread there, one that misses fetches whole
 * disk cache chunks (1 MiB) anyway. Full read of the benchmark tree from a filled disk cache
 * (scripts/bench_fuse_tree.ts): direct I/O 8,891 READs, 256 KiB 2,825, 1 MiB 1,331, 4 MiB 497.
 * At 4 MiB cold python (scripts/bench-host.sh) made 17-18 GETs, at 1 MiB 5-15, direct I/O 6.
 */
const DISK_CACHE_READ_AHEAD_KB = 1024;
/**
 * The kernel queues INIT during mount(2), so only this process can be late: its reader thread's
 * start and the main thread's turn. 10 s was once too short on a loaded 2-core CI host (the mount
 * server's own caller waits 120 s).
 */
const INIT_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 2_000;

const READER_LIMITS = {
  bufferBytes: READ_BUFFER_BYTES,
  maxReadBytes: FUSE_MAX_MAX_PAGES * 4096,
};

/**
 * Starts the reader thread ahead of the connections to come: its start-up (runtime, libc:
 * 30-100 ms) then overlaps the server's other work instead of delaying the kernel's INIT.
 */
export function prestartFuseReaders(connections: number): void {
  if (connections > 0) fuseReaderThread(READER_LIMITS);
}

/** Ends the reader thread if no connection took it (it would keep the process alive). */
export function discardSpareFuseReaders(): void {
  discardIdleFuseReader();
}

/** One mounted FUSE connection: the fd, its place on the reader thread, the request handler. */
export class FuseConnection {
  readonly server: SingleFileFuseServer;
  readonly #fd: number;
  readonly #dir: string;
  readonly #removeDir: boolean;
  readonly #reader: FuseReaderThread;
  readonly #readerId: number;
  readonly #readerEnded = Promise.withResolvers<void>();
  /** The reader thread no longer reads this connection nor uses its descriptors. */
  #readerDone = false;
  /** Disk cache files the reader answers READs from by itself (see reader_worker.ts). */
  readonly #direct?: DirectReadFiles;
  #fdOpen = true;
  #readerStarted = Promise.withResolvers<void>();
  readerThreadId = 0;
  #closing?: Promise<void>;
  readonly #readAheadKb: number;

  /** `resume`: take over a live connection whose server died (no INIT comes). */
  constructor(
    fd: number,
    dir: string,
    name: string,
    source: Source,
    removeDir: boolean,
    opts: { resume?: { mtimeSec: number }; pageCache?: boolean } = {},
  ) {
    this.#fd = fd;
    this.#dir = dir;
    this.#removeDir = removeDir;
    this.server = new SingleFileFuseServer(
      source,
      name,
      (head, data) => this.#send(head, data),
      { maxWriteBytes: MAX_WRITE_BYTES, pageCache: opts.pageCache },
      opts.resume,
    );
    this.#direct = isDirectReadable(source) ? source.openDirectReads() : undefined;
    this.#readAheadKb = !opts.pageCache
      ? READ_AHEAD_KB
      : this.#direct
      ? DISK_CACHE_READ_AHEAD_KB
      : PAGE_CACHE_READ_AHEAD_KB;
    this.#reader = fuseReaderThread(READER_LIMITS);
    const direct = this.#direct && {
      ...directReadArg(this.#direct),
      nodeId: Number(FILE_NODE_ID),
    };
    this.#readerId = this.#reader.attach(fd, direct, {
      request: (bytes) => this.server.handle(bytes),
      served: (ranges) => this.server.noteServed(ranges),
      started: (threadId) => {
        this.readerThreadId = threadId;
        this.#readerStarted.resolve();
      },
      ended: (why, reason) => {
        this.#readerDone = true;
        this.#readerEnded.resolve();
        if (why === "error") this.#readerFailed(reason);
      },
    });
  }

  /**
   * Nobody reads requests any more: close our end so the kernel aborts the connection (callers
   * get ENOTCONN at once instead of hanging); the mounts stay until unmounted. With a keeper
   * (mount servers) the connection stays instead, and callers wait for `reattach`.
   */
  #readerFailed(reason: string): void {
    log.warn(`FUSE server on ${this.#dir} stopped: ${reason}`);
    this.server.abortAll();
    this.#closeFd();
  }

  /** The /dev/fuse descriptor (a keeper copies it; see keeper.ts). */
  get fd(): number {
    return this.#fd;
  }

  /**
   * Asks the kernel to queue again every request the dead server had read but not answered
   * (FUSE_NOTIFY_RESEND); false when the kernel cannot (before 6.9): those readers then wait
   * until they are killed.
   */
  requestResend(): boolean {
    const notify = encodeResendNotify();
    const written = libc().write(this.#fd, notify, BigInt(notify.length));
    if (written >= 0) return true;
    log.warn(
      `FUSE on ${this.#dir}: the kernel cannot resend requests in flight ` +
        `(${strerror(errno())}); reads the dead server had taken stay unanswered`,
    );
    return false;
  }

  /**
   * Closes the descriptor once the reader thread has let go of it: before, its number could
   * come back as another layer's /dev/fuse descriptor, which the thread would still read for
   * this connection. A thread that did not let go keeps the descriptors (the lesser harm).
   */
  #closeFd(): void {
    if (!this.#fdOpen) return;
    this.#fdOpen = false;
    if (!this.#readerDone) {
      log.debug(`FUSE on ${this.#dir}: the reader did not let go; its descriptors left open`);
      return;
    }
    closeFd(this.#fd);
    this.#direct?.close();
  }

  async ready(): Promise<void> {
    let timer: Timer | undefined;
    let readerStarted = false;
    this.#readerStarted.promise.then(() => readerStarted = true);
    const timeout = new Promise<never>((_, reject) => {
      timer = after(INIT_TIMEOUT_MS, () => {
        const late = readerStarted
          ? "the kernel's INIT did not reach the server"
          : "the FUSE reader thread did not start";
        reject(new MountError(`FUSE on ${this.#dir}: ${late} in ${INIT_TIMEOUT_MS / 1000} s`));
      });
    });
    try {
      await Promise.race([
        Promise.all([this.server.initialized, this.#readerStarted.promise]),
        timeout,
      ]);
    } catch (error) {
      if (error instanceof MountError) throw error;
      throw new MountError(`FUSE on ${this.#dir}: ${(error as Error).message}`);
    } finally {
      timer?.cancel();
    }
    this.#tuneReadAhead();
  }

  /**
   * The connection's number (/sys/fs/fuse/connections/N: the minor of the mount's st_dev),
   * once ready; undefined when its mount was not found.
   */
  connectionNumber: number | undefined;

  /** Best effort: the bdi of a FUSE mount is `0:<minor>` of its st_dev. */
  #tuneReadAhead(): void {
    const entry = findMount(this.#dir);
    if (!entry) return;
    this.connectionNumber = entry.minor;
    const file = `/sys/class/bdi/${entry.major}:${entry.minor}/read_ahead_kb`;
    try {
      writeSmallFile(file, `${this.#readAheadKb}`);
    } catch (error) {
      log.debug(`cannot set ${file}: ${(error as Error).message}`);
    }
  }

  /** One write() per reply (writev when file data follows the header). */
  #send(head: Uint8Array<ArrayBuffer>, data?: Uint8Array): void {
    if (!this.#fdOpen) return;
    for (;;) {
      let written: bigint;
      if (data && data.length > 0) {
        const iov = new BigUint64Array([
          addressOf(head),
          BigInt(head.length),
          addressOf(data as Uint8Array<ArrayBuffer>),
          BigInt(data.length),
        ]);
        written = libc().writev(this.#fd, new Uint8Array(iov.buffer), 2);
      } else {
        written = libc().write(this.#fd, head, BigInt(head.length));
      }
      if (written >= 0) return;
      const code = errno();
      if (code === Errno.EINTR) continue;
      // ENOENT: the request was interrupted and is gone; ENODEV: the mount is gone.
      if (code !== Errno.ENOENT && code !== Errno.ENODEV) {
        log.warn(`FUSE reply on ${this.#dir} failed: ${new SysError("write", code).message}`);
      }
      return;
    }
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const result = await umountOffThread(this.#dir, 0);
    if (result.errno === Errno.EBUSY) {
      this.#closing = undefined;
      throw new MountError(
        `FUSE mount ${this.#dir} is busy`,
        "unmount the EROFS mount on its file first",
        { cause: new SysError("umount", result.errno, this.#dir) },
      );
    }
    // EINVAL: no longer a mount point (unmounted from outside); the connection is over anyway.
    if (result.errno !== 0 && result.errno !== Errno.EINVAL && result.errno !== Errno.ENOENT) {
      this.#closing = undefined;
      throw new MountError(`cannot unmount FUSE ${this.#dir}: ${strerror(result.errno)}`);
    }
    await this.#stop();
  }

  /** Cleanup after a failed start: lazy unmount, then stop. */
  async abandon(): Promise<void> {
    await umountOffThread(this.#dir, MNT_DETACH);
    await this.#stop();
  }

  async #stop(): Promise<void> {
    // Unmounted: the thread has nothing more to read here (it may have seen ENODEV already).
    this.#reader.detach(this.#readerId);
    await waitAtMost(this.#readerEnded.promise, STOP_TIMEOUT_MS);
    this.server.abortAll();
    this.#closeFd();
    if (this.#removeDir) {
      try {
        Deno.removeSync(this.#dir);
      } catch (error) {
        log.debug(`cannot remove ${this.#dir}: ${(error as Error).message}`);
      }
    }
  }
}
