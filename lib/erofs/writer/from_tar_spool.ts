/**
 * The spool of a tar scan (from_tar.ts): the data of members that cannot be pointed at in the
 * tar (a compressed stream, sparse members) is written to an unlinked temporary file, each
 * member from a 4 KiB boundary, whole zero blocks left as holes (holes of sparse members stay
 * holes too). Apart from from_tar.ts because it is file I/O with its own failure (a full disk),
 * not the tar's tree.
 */
import { Errno, libc, strerror, SysError, unwrap } from "../../../ffi/libc.ts";
import { FormatError, UserError } from "../../errors.ts";
import type { TarEntry } from "../../tar/entry.ts";
import { pwriteAll } from "./data_copy.ts";

const SPOOL_ALIGN = 4096;
const SPOOL_GATHER_BYTES = 1 << 20;

/** The spool of one scan (see above). */
export class TarSpool {
  /** Where data is spooled (an open, writable, empty file); undefined: no member may need it. */
  readonly #fd: number | undefined;
  /** One gathering buffer per scan (scans may run concurrently; members of one scan do not). */
  #pending: Uint8Array<ArrayBuffer> | undefined;
  /** The end of the last member spooled: the spool's size once finished. */
  end = 0;

  constructor(fd: number | undefined) {
    this.#fd = fd;
  }

  /** Writes `entry`'s data (sparse runs where they belong); returns its offset in the spool. */
  async add(entry: TarEntry): Promise<number> {
    this.#pending ??= new Uint8Array(SPOOL_GATHER_BYTES);
    const buffer = this.#pending;
    if (this.#fd === undefined) throw new FormatError("no spool file for tar data");
    const base = Math.ceil(this.end / SPOOL_ALIGN) * SPOOL_ALIGN;
    const runs = entry.sparse ?? [{ offset: 0, length: entry.storedSize }];
    let run = 0, inRun = 0;
    // Chunks from a decompressor are small and unaligned: gathering them keeps zero blocks
    // that straddle two chunks recognisable.
    const spoolFd = this.#fd;
    let pendingAt = 0, pendingLength = 0;
    const flush = () => {
      if (pendingLength > 0) {
        writeSkippingZeroBlocks(spoolFd, buffer.subarray(0, pendingLength), pendingAt);
      }
      pendingLength = 0;
    };
    const put = (bytes: Uint8Array, offset: number) => {
      if (pendingLength > 0 && pendingAt + pendingLength !== offset) flush();
      if (pendingLength === 0) pendingAt = offset;
      let at = 0;
      while (at < bytes.length) {
        const n = Math.min(bytes.length - at, buffer.length - pendingLength);
        buffer.set(bytes.subarray(at, at + n), pendingLength);
        pendingLength += n;
        at += n;
        if (pendingLength === buffer.length) {
          flush();
          pendingAt = offset + at;
        }
      }
    };
    // A reader read to the end, not `for await`: the async iterator releases its lock at the
    // end, and Deno's release makes a TypeError (with a stack) per member, most of a small
    // member's cost (tar.gz of 42,000 files: ~0.6 s of ~3.3 s CPU).
    const reader = entry.body.getReader();
    for (let r; !(r = await reader.read()).done;) {
      const chunk = r.value;
      let at = 0;
      while (at < chunk.length) {
        while (run < runs.length && inRun >= runs[run].length) {
          run++;
          inRun = 0;
        }
        if (run >= runs.length) throw new FormatError(`tar member "${entry.path}": data overrun`);
        const n = Math.min(chunk.length - at, runs[run].length - inRun);
        put(chunk.subarray(at, at + n), base + runs[run].offset + inRun);
        at += n;
        inRun += n;
      }
    }
    flush();
    this.end = base + entry.size;
    return base;
  }

  /** Sizes the spool: a sparse member may end in a hole, the spool must still reach its end. */
  finish(): void {
    if (this.#fd !== undefined && this.end > 0) {
      unwrap(libc().ftruncate(this.#fd, BigInt(this.end)), "ftruncate", "(spool)");
    }
  }
}

/**
 * A scan's failure as the user should read it: the spool file (unlinked, in `dir`) is the only
 * file a scan writes, so a full disk is its — not "write (image)", which named no file.
 */
export function spoolError(error: unknown, dir: string, hint: string): unknown {
  if (
    error instanceof SysError &&
    (error.errno === Errno.ENOSPC || error.errno === Errno.EDQUOT || error.errno === EFBIG)
  ) {
    return new UserError(
      `cannot hold the tar's file data in ${dir} while building: ${strerror(error.errno)}`,
      hint,
      { cause: error },
    );
  }
  return error;
}

/** A file past the file system's largest (ext4: 16 TiB with 4 KiB blocks). */
const EFBIG = 27;

const ZERO_BLOCK_BYTES = 4096;

/**
 * Writes `data` at `offset` but leaves whole zero 4 KiB blocks unwritten: the spool is sized
 * with ftruncate at the end, so they read as zeros and stay holes, which the image copy skips
 * (a layer's zero-filled files then take no disk space in the spool or the image).
 */
function writeSkippingZeroBlocks(fd: number, data: Uint8Array<ArrayBuffer>, offset: number): void {
  let runStart = 0; // start (in data) of the pending non-zero run
  let at = 0;
  while (at < data.length) {
    const blockEnd = Math.min(
      data.length,
      at + ZERO_BLOCK_BYTES - ((offset + at) % ZERO_BLOCK_BYTES),
    );
    const whole = blockEnd - at === ZERO_BLOCK_BYTES;
    if (whole && isZero(data, at, blockEnd)) {
      if (runStart < at) pwriteAll(fd, data.subarray(runStart, at), offset + runStart);
      runStart = blockEnd;
    }
    at = blockEnd;
  }
  if (runStart < data.length) pwriteAll(fd, data.subarray(runStart), offset + runStart);
}

function isZero(data: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (data[i] !== 0) return false;
  return true;
}
