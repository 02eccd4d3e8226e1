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

/**
 * A disk cache the reader may read present chunks from (see lib/source/direct_reads.ts): its
 * own descriptors, so its OFD read locks exclude this process's fillers and evictors as they
 * exclude another process's.
 */
export interface DirectReadArg {
  mapFd: number;
  dataFd: number;
  chunkBytes: number;
  sizeBytes: number;
  /** The map bytes of chunks readers may read (disk_cache_fill.ts isPresent). */
  presentBytes: readonly number[];
  /** The FUSE node id of the file these bytes are. */
  nodeId: number;
  /**
   * Pinned pages (lib/source/direct_reads.ts PinnedPageFile): a READ all of whose pages have
   * map byte 1 in `mapFd` (written after the page) is read from `fd`, chunks or not.
   */
  pins?: { fd: number; mapFd: number; pageBytes: number };
}

export interface FuseReaderArg {
  fd: number;
  /** read() buffer: the kernel refuses buffers smaller than max_write + headers. */
  bufferBytes: number;
  /** poll() timeout, so `terminate()` takes effect even when no request comes. */
  pollMs: number;
  /** Largest READ the kernel sends (max_pages × 4 KiB): the reply buffer's data part. */
  maxReadBytes: number;
  direct?: DirectReadArg;
}

/**
 * Messages from the reader: one request (transferred), READs it answered itself ([offset,
 * length] pairs), or why it stopped.
 */
export type FuseReaderMessage =
  | { started: number /* the reader's Linux thread id */ }
  | { request: ArrayBuffer }
  | { served: number[] }
  | { end: "unmounted" | "error"; errno: number };

/**
 * Worker body of a reader started before its connection exists (connection.ts,
 * prestartFuseReaders): it boots (runtime, libc) meanwhile and runs `helpers.body` with the
 * FuseReaderArg of its first message.
 */
export function waitingReaderBody(
  libc: LibcSymbols,
  errno: ErrnoReader,
  _arg: null,
  helpers: { body: typeof fuseReaderBody },
): void {
  const scope = self as unknown as {
    onmessage: ((event: MessageEvent<FuseReaderArg>) => void) | null;
  };
  scope.onmessage = (event) => {
    scope.onmessage = null;
    helpers.body(libc, errno, event.data);
  };
}

/**
 * Worker body (self-contained: shipped as source text, see ffi/libc_worker.ts). Loops until the
 * connection ends (ENODEV after unmount, POLLERR after an abort) or the worker is terminated.
 */
export function fuseReaderBody(libc: LibcSymbols, errno: ErrnoReader, arg: FuseReaderArg): void {
  const EINTR = 4, ENOENT = 2, EAGAIN = 11, ENODEV = 19;
  const POLLIN = 1, POLLERR = 8, POLLHUP = 16, POLLNVAL = 32;
  /** fuse_in_header 40 B, fuse_read_in: fh u64, offset u64, size u32; fuse_out_header 16 B. */
  const IN_HEADER = 40, OUT_HEADER = 16, OP_READ = 15;
  /** fcntl.h: OFD lock command and lock types. */
  const F_OFD_SETLK = 37, F_RDLCK = 0, F_UNLCK = 2;
  /**
   * Served reads are reported after this many or this many bytes (readahead follows them), or
   * once no request came for FLUSH_IDLE_MS: a message per READ cost as much CPU as the READ.
   */
  const SERVED_BATCH = 64, SERVED_BATCH_BYTES = 1 << 20, FLUSH_IDLE_MS = 5;
  const buffer = new Uint8Array(arg.bufferBytes);
  const view = new DataView(buffer.buffer);
  const pollfd = new Uint8Array(8); // struct pollfd { int fd; short events; short revents; }
  const pollView = new DataView(pollfd.buffer);
  pollView.setInt32(0, arg.fd, true);
  pollView.setInt16(4, POLLIN, true);
  const post = (message: unknown, transfer: Transferable[] = []) =>
    (self as unknown as Worker).postMessage(message, transfer);

  const direct = arg.direct;
  const reply = direct ? new Uint8Array(OUT_HEADER + arg.maxReadBytes) : new Uint8Array(0);
  const replyView = new DataView(reply.buffer);
  const map = new Uint8Array(64);
  // struct flock (64-bit): l_type i16 @0, l_whence i16 @2, l_start i64 @8, l_len i64 @16,
  // l_pid i32 @24 (0 for OFD locks).
  const flock = new Uint8Array(32);
  const flockView = new DataView(flock.buffer);
  let served: number[] = [];
  let servedBytes = 0;
  const flush = () => {
    if (served.length === 0) return;
    post({ served });
    served = [];
    servedBytes = 0;
  };
  const lock = (type: number, first: number, count: number): boolean => {
    flockView.setInt16(0, type, true);
    flockView.setBigInt64(8, BigInt(first), true);
    flockView.setBigInt64(16, BigInt(count), true);
    for (;;) {
      if (libc.fcntl_lock(direct!.mapFd, F_OFD_SETLK, flock) === 0) return true;
      if (errno() !== EINTR) return false;
    }
  };
  const allPresent = (first: number, count: number): boolean => {
    const chunks = map.subarray(0, count);
    if (Number(libc.pread(direct!.mapFd, chunks, BigInt(count), BigInt(first))) !== count) {
      return false;
    }
    return chunks.every((byte) => direct!.presentBytes.includes(byte));
  };
  /** Every page of the range is pinned (written to the pin file, then marked). */
  const pinMap = new Uint8Array(512);
  const allPinned = (offset: number, length: number): boolean => {
    const pins = direct!.pins!;
    const first = Math.floor(offset / pins.pageBytes);
    const count = Math.floor((offset + length - 1) / pins.pageBytes) + 1 - first;
    if (count > pinMap.length) return false;
    const bytes = pinMap.subarray(0, count);
    if (Number(libc.pread(pins.mapFd, bytes, BigInt(count), BigInt(first))) !== count) {
      return false;
    }
    return bytes.every((byte) => byte === 1);
  };
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
    let got = -1;
    if (direct.pins && allPinned(offset, length)) {
      got = Number(libc.pread(
        direct.pins.fd,
        reply.subarray(OUT_HEADER, OUT_HEADER + length),
        BigInt(length),
        BigInt(offset),
      ));
    }
    if (got !== length) {
      const first = Math.floor(offset / direct.chunkBytes);
      const count = Math.floor((offset + length - 1) / direct.chunkBytes) + 1 - first;
      if (count > map.length || !allPresent(first, count)) return false;
      // The read lock keeps evictors (which clear the map byte, then punch the hole) away;
      // under it, the map is read again.
      if (!lock(F_RDLCK, first, count)) return false;
      try {
        if (allPresent(first, count)) {
          got = Number(libc.pread(
            direct.dataFd,
            reply.subarray(OUT_HEADER, OUT_HEADER + length),
            BigInt(length),
            BigInt(offset),
          ));
        }
      } finally {
        lock(F_UNLCK, first, count);
      }
    }
    if (got !== length) return false;
    replyView.setUint32(0, OUT_HEADER + length, true);
    replyView.setInt32(4, 0, true);
    replyView.setBigUint64(8, view.getBigUint64(8, true), true);
    // ENOENT: interrupted meanwhile; ENODEV: unmounted (the next read says so). Either way
    // the request is answered as far as anyone can use it.
    while (libc.write(arg.fd, reply, BigInt(OUT_HEADER + length)) < 0 && errno() === EINTR);
    served.push(offset, length);
    servedBytes += length;
    if (served.length >= 2 * SERVED_BATCH || servedBytes >= SERVED_BATCH_BYTES) flush();
    return true;
  };

  post({ started: libc.gettid() });
  for (;;) {
    pollView.setInt16(6, 0, true);
    // Quiet for a moment: report the served reads before sleeping.
    let ready = libc.poll(pollfd, 1n, served.length ? FLUSH_IDLE_MS : arg.pollMs);
    if (ready === 0 && served.length) {
      flush();
      ready = libc.poll(pollfd, 1n, arg.pollMs);
    }
    if (ready < 0) {
      const code = errno();
      if (code === EINTR) continue;
      flush();
      post({ end: "error", errno: code });
      return;
    }
    if (ready === 0) continue;
    const revents = pollView.getInt16(6, true);
    if (revents & (POLLERR | POLLHUP | POLLNVAL) && !(revents & POLLIN)) {
      flush();
      post({ end: "unmounted", errno: ENODEV });
      return;
    }
    const n = Number(libc.read(arg.fd, buffer, BigInt(buffer.length)));
    if (n < 0) {
      const code = errno();
      // ENOENT: the request was interrupted before we read it; EAGAIN: another reader got it.
      if (code === EINTR || code === ENOENT || code === EAGAIN) continue;
      flush();
      post({ end: code === ENODEV ? "unmounted" : "error", errno: code });
      return;
    }
    if (serveDirect(n)) continue;
    const request = buffer.slice(0, n).buffer;
    post({ request }, [request]);
  }
}
