/**
 * Answers FUSE requests for a file system holding exactly one read-only regular file whose
 * bytes come from a `Source`. Metadata is answered at once; READs go to `source.read` and are
 * answered whenever they complete (FUSE_ASYNC_READ lets the kernel keep many in flight).
 * Transport-free: requests come in as bytes, replies leave through `send`.
 */
import type { Source } from "../source/source.ts";
import { isDirectReadable } from "../source/direct_reads.ts";
import * as log from "../log.ts";
import {
  DT_DIR,
  DT_REG,
  encodeAttrReply,
  encodeDirents,
  encodeEntry,
  encodeInit,
  encodeOpen,
  encodeStatfs,
  FOPEN_DIRECT_IO,
  FOPEN_KEEP_CACHE,
  FOPEN_NOFLUSH,
  FUSE_ASYNC_READ,
  FUSE_KERNEL_VERSION,
  FUSE_MAX_MAX_PAGES,
  FUSE_MAX_PAGES,
  FUSE_MINOR_MIN,
  FUSE_MINOR_WANTED,
  IN_HEADER_SIZE,
  type NodeAttr,
  Op,
  OUT_HEADER_SIZE,
  parseInit,
  parseRead,
  parseRequestHeader,
  reply,
  type RequestHeader,
  ROOT_NODE_ID,
  S_IFDIR,
  S_IFREG,
} from "./protocol.ts";
import { fillTrace } from "../source/fill_trace.ts";

/** errno values replied to the kernel (asm-generic/errno-base.h, errno.h). */
const ENOENT = 2, EIO = 5, EINTR = 4, ENOTDIR = 20, EISDIR = 21, EROFS = 30, ENOSYS = 38;
const EPROTO = 71;

/** The one file's node id (the reader thread answers READs of it directly, reader_worker.ts). */
export const FILE_NODE_ID = 2n;
/** The tree never changes: let the kernel cache names and attributes for a day. */
const VALID_SEC = 86400;
/** O_ACCMODE (fcntl.h): the access bits of fuse_open_in.flags. */
const O_ACCMODE = 3;

/** One reply: header (+ body) bytes, and optionally file data sent right after them. */
export type SendReply = (head: Uint8Array<ArrayBuffer>, data?: Uint8Array) => void;

export interface FuseServerLimits {
  /** Largest WRITE payload we accept (the reader's buffer must hold it plus headers). */
  maxWriteBytes: number;
  /**
   * Let the kernel cache the file's pages and read ahead on it (OPEN without FOPEN_DIRECT_IO).
   * EROFS reads a file-backed image with one read per bio: per page when its blocks are not
   * contiguous in the file's address space (a tar-index image's data sits on a mapped extra
   * device), per file (mostly 4–32 KiB) in an ordinary image; with direct I/O each became a
   * synchronous FUSE READ, one at a time. Through the page cache the kernel's readahead asks
   * for large READs, several in flight. The price: the bytes are cached twice (EROFS's pages
   * and the file's), both clean and reclaimable. Only bytes a READ returned enter that cache,
   * and a READ returns only what the source verified, so nothing unverified is ever cached; the
   * file's bytes never change (also across a server restart: the same layer is served again),
   * so its cache is kept across opens.
   */
  pageCache?: boolean;
}

export class SingleFileFuseServer {
  readonly #source: Source;
  readonly #fileName: string;
  readonly #send: SendReply;
  readonly #limits: FuseServerLimits;
  readonly #root: NodeAttr;
  readonly #file: NodeAttr;
  readonly #inflight = new Map<bigint, AbortController>();
  #reads = 0;
  #bytes = 0;
  #directReads = 0;
  #initialized = Promise.withResolvers<void>();

  /**
   * `resume`: take over a connection another server initialized (after its crash): no INIT
   * will come, and the file keeps the mtime the kernel was told.
   */
  constructor(
    source: Source,
    fileName: string,
    send: SendReply,
    limits: FuseServerLimits,
    resume?: { mtimeSec: number },
  ) {
    this.#source = source;
    this.#fileName = fileName;
    this.#send = send;
    this.#limits = limits;
    const mtimeSec = resume?.mtimeSec ?? Math.floor(Date.now() / 1000);
    this.#root = { ino: ROOT_NODE_ID, sizeBytes: 0, mode: S_IFDIR | 0o555, nlink: 2, mtimeSec };
    this.#file = {
      ino: FILE_NODE_ID,
      sizeBytes: source.size,
      mode: S_IFREG | 0o444,
      nlink: 1,
      mtimeSec,
    };
    // Nobody may be waiting when INIT fails; the rejection is still reported via `initialized`.
    this.#initialized.promise.catch(() => {});
    if (resume) this.#initialized.resolve();
  }

  /** The file's mtime as told to the kernel (a server taking over must tell the same). */
  get fileMtimeSec(): number {
    return this.#file.mtimeSec;
  }

  /** Resolves when INIT has been answered (rejects when it was refused). */
  get initialized(): Promise<void> {
    return this.#initialized.promise;
  }

  /** READs answered and their bytes; `directReads` of them answered by the reader thread. */
  stats(): { reads: number; bytes: number; directReads: number } {
    return { reads: this.#reads, bytes: this.#bytes, directReads: this.#directReads };
  }

  /** READs the reader thread answered from the disk cache: [offset, length] pairs. */
  noteServed(ranges: readonly number[]): void {
    for (let i = 1; i < ranges.length; i += 2) {
      this.#reads++;
      this.#directReads++;
      this.#bytes += ranges[i];
    }
    if (isDirectReadable(this.#source)) this.#source.noteDirectReads(ranges);
  }

  /** Aborts the source reads in flight (their replies are dropped by the caller's `send`). */
  abortAll(): void {
    for (const controller of this.#inflight.values()) controller.abort();
  }

  /** Handles one request as read from /dev/fuse; a malformed one gets EIO, never a throw. */
  handle(request: Uint8Array): void {
    const view = new DataView(request.buffer, request.byteOffset, request.byteLength);
    if (request.length < IN_HEADER_SIZE) {
      log.warn(`FUSE request of ${request.length} bytes ignored`);
      return;
    }
    const header = parseRequestHeader(view);
    try {
      this.#dispatch(header, view, request);
    } catch (err) {
      log.warn(`FUSE request ${header.opcode} failed: ${message(err)}`);
      this.#send(reply(header.unique, 0, EIO));
    }
  }

  #dispatch(header: RequestHeader, view: DataView, request: Uint8Array): void {
    const { unique, nodeId } = header;
    const error = (code: number) => this.#send(reply(unique, 0, code));
    switch (header.opcode) {
      case Op.INIT:
        return this.#init(view, unique);
      case Op.LOOKUP: {
        const end = request.indexOf(0, IN_HEADER_SIZE);
        const name = new TextDecoder().decode(
          request.subarray(IN_HEADER_SIZE, end < 0 ? request.length : end),
        );
        if (nodeId !== ROOT_NODE_ID) return error(ENOTDIR);
        if (name !== this.#fileName) return error(ENOENT);
        return this.#send(encodeEntry(unique, this.#file, VALID_SEC));
      }
      case Op.GETATTR: {
        const attr = this.#node(nodeId);
        return attr ? this.#send(encodeAttrReply(unique, attr, VALID_SEC)) : error(ENOENT);
      }
      case Op.OPEN: {
        if (nodeId !== FILE_NODE_ID) return error(nodeId === ROOT_NODE_ID ? EISDIR : ENOENT);
        if ((view.getUint32(IN_HEADER_SIZE, true) & O_ACCMODE) !== 0) return error(EROFS);
        // Direct I/O (default): every EROFS read is one READ, the file's pages are not kept.
        // With `pageCache` the file's bytes never change, so its cache is kept across opens.
        return this.#send(encodeOpen(
          unique,
          0n,
          this.#limits.pageCache
            ? FOPEN_KEEP_CACHE | FOPEN_NOFLUSH
            : FOPEN_DIRECT_IO | FOPEN_NOFLUSH,
        ));
      }
      case Op.OPENDIR:
        if (nodeId !== ROOT_NODE_ID) return error(ENOTDIR);
        return this.#send(encodeOpen(unique, 0n, 0));
      case Op.READ:
        return this.#read(view, unique, nodeId);
      case Op.READDIR: {
        if (nodeId !== ROOT_NODE_ID) return error(ENOTDIR);
        const { offset, size } = parseRead(view);
        const entries = [
          { ino: ROOT_NODE_ID, name: ".", type: DT_DIR },
          { ino: ROOT_NODE_ID, name: "..", type: DT_DIR },
          { ino: FILE_NODE_ID, name: this.#fileName, type: DT_REG },
        ];
        return this.#send(encodeDirents(unique, entries, offset, size));
      }
      case Op.STATFS:
        return this.#send(encodeStatfs(unique, Math.ceil(this.#source.size / 4096), 2));
      case Op.RELEASE:
      case Op.RELEASEDIR:
      case Op.FLUSH:
      case Op.ACCESS:
      case Op.DESTROY:
        return this.#send(reply(unique, 0));
      case Op.FORGET:
      case Op.BATCH_FORGET:
        return; // no reply by protocol; node ids here are fixed
      case Op.INTERRUPT:
        // The kernel sends one for any signal with a handler (SIGALRM, SIGCHLD, SIGWINCH) to a
        // process whose read waits here, EROFS's own reads of this file included: giving the
        // READ up failed that read with EINTR or EIO. A READ ends by itself (its source's
        // stall watch and deadline); ENOSYS tells the kernel to send no more (as libfuse
        // does without -o intr).
        return error(ENOSYS);
      default:
        // STATX, GETXATTR, LISTXATTR and everything else: the kernel falls back or remembers.
        return error(ENOSYS);
    }
  }

  #node(nodeId: bigint): NodeAttr | undefined {
    if (nodeId === ROOT_NODE_ID) return this.#root;
    if (nodeId === FILE_NODE_ID) return this.#file;
    return undefined;
  }

  #init(view: DataView, unique: bigint): void {
    const init = parseInit(view);
    if (init.major !== FUSE_KERNEL_VERSION || init.minor < FUSE_MINOR_MIN) {
      this.#send(reply(unique, 0, EPROTO));
      this.#initialized.reject(
        new Error(`kernel FUSE protocol ${init.major}.${init.minor} is not supported`),
      );
      return;
    }
    const flags = init.flags & (FUSE_ASYNC_READ | FUSE_MAX_PAGES);
    this.#send(encodeInit(unique, {
      minor: Math.min(init.minor, FUSE_MINOR_WANTED),
      maxReadahead: init.maxReadahead,
      flags,
      maxBackground: 64,
      congestionThreshold: 48,
      maxWrite: this.#limits.maxWriteBytes,
      maxPages: FUSE_MAX_MAX_PAGES,
    }));
    this.#initialized.resolve();
  }

  #read(view: DataView, unique: bigint, nodeId: bigint): void {
    if (nodeId !== FILE_NODE_ID) {
      this.#send(reply(unique, 0, EISDIR));
      return;
    }
    const { offset, size } = parseRead(view);
    const length = Math.max(0, Math.min(size, this.#source.size - offset));
    this.#reads++;
    if (length === 0) {
      this.#send(reply(unique, 0)); // at or past EOF: a short (empty) read
      return;
    }
    const controller = new AbortController();
    this.#inflight.set(unique, controller);
    fillTrace("read", unique.toString(), offset, length);
    const source = this.#source as Source & {
      readInto?(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
    };
    const buffer = source.readInto ? takeReplyBuffer(length) : undefined;
    const read = buffer
      ? source.readInto!(offset, buffer.subarray(0, length), controller.signal)
        .then(() => buffer.subarray(0, length))
      : source.read(offset, length, controller.signal);
    read.then(
      (data) => {
        if (data.length !== length) {
          throw new Error(`source returned ${data.length} of ${length} bytes at ${offset}`);
        }
        this.#bytes += length;
        const head = new Uint8Array(OUT_HEADER_SIZE);
        const headView = new DataView(head.buffer);
        headView.setUint32(0, OUT_HEADER_SIZE + length, true);
        headView.setBigUint64(8, unique, true);
        this.#send(head, data);
        fillTrace("replied", unique.toString());
        // Only after a good reply: a failed or interrupted read may still be writing into it.
        if (buffer) giveReplyBuffer(buffer);
      },
    ).catch((err: unknown) => {
      const interrupted = controller.signal.aborted;
      if (!interrupted) {
        log.warn(`FUSE read of ${length} bytes at ${offset} failed: ${message(err)}`);
      }
      this.#send(reply(unique, 0, interrupted ? EINTR : EIO));
    }).finally(() => this.#inflight.delete(unique));
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * READ reply buffers, reused: a fresh buffer per READ (up to 1 MiB each, ~130 MB for one
 * full read of the benchmark image) is freed only when V8 gets to it, and showed as RSS.
 * The reply is written synchronously, so a buffer is free again once it was sent.
 */
const REPLY_CLASS_BYTES = [64 << 10, 256 << 10, FUSE_MAX_MAX_PAGES * 4096];
const MAX_POOLED_REPLIES = 8;
const pooledReplies: Uint8Array[][] = REPLY_CLASS_BYTES.map(() => []);

function takeReplyBuffer(length: number): Uint8Array | undefined {
  const at = REPLY_CLASS_BYTES.findIndex((size) => length <= size);
  if (at < 0) return undefined;
  return pooledReplies[at].pop() ?? new Uint8Array(REPLY_CLASS_BYTES[at]);
}

function giveReplyBuffer(buffer: Uint8Array): void {
  const pool = pooledReplies[REPLY_CLASS_BYTES.indexOf(buffer.length)];
  if (pool && pool.length < MAX_POOLED_REPLIES) pool.push(buffer);
}
