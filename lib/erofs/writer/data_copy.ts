/**
 * Moves file bytes into the image without passing them through JavaScript when it can:
 * copy_file_range(2) between two files (in-kernel, reflinks where the file system can), holes
 * of sparse sources skipped with SEEK_DATA/SEEK_HOLE so the image stays sparse too, and a
 * pread/pwrite loop when the kernel refuses (different file systems on old kernels, pipes).
 */
import { cstr, Errno, errno, libc, SysError } from "../../../ffi/libc.ts";
import { preadFully, pwriteFully } from "../../../ffi/files.ts";

const SEEK_DATA = 3, SEEK_HOLE = 4;
const ENXIO = 6, EXDEV = 18, EOPNOTSUPP = 95;
const CHUNK_BYTES = 8 << 20;
const FALLBACK_BUFFER_BYTES = 1 << 20;

/** Writes `data` at `offset` of `fd` entirely. */
export function pwriteAll(fd: number, data: Uint8Array<ArrayBuffer>, offset: number): void {
  pwriteFully(fd, data, offset, "write", "(image)");
}

/** Reads exactly `length` bytes at `offset`; throws when the source is shorter. */
export function preadExact(fd: number, length: number, offset: number, what: string): Uint8Array {
  return preadInto(fd, new Uint8Array(length), offset, what);
}

/** Fills `out` from `offset` of `fd`; throws when the source is shorter. */
export function preadInto(fd: number, out: Uint8Array, offset: number, what: string): Uint8Array {
  if (preadFully(fd, out, offset, "read", what) < out.length) throw new SourceChangedError(what);
  return out;
}

export class SourceChangedError extends SysError {
  constructor(what: string) {
    super("read", Errno.EIO, what, "the file got shorter while the image was built");
  }
}

/**
 * Copies `length` bytes from `src` at `srcOffset` to `dst` at `dstOffset`, leaving holes of
 * the source as holes (the destination is sized afterwards with ftruncate, so they read as
 * zeros). `onBytes` is told of progress.
 */
export function copyRange(
  src: number,
  srcOffset: number,
  dst: number,
  dstOffset: number,
  length: number,
  what: string,
  onBytes?: (n: number) => void,
): void {
  const copy: FileCopy = { src, dst, what, onBytes };
  const end = srcOffset + length;
  let at = srcOffset;
  while (at < end) {
    const data = Number(libc().lseek(src, BigInt(at), SEEK_DATA));
    if (data < 0) {
      const code = errno();
      if (code === ENXIO) break; // only a hole up to the end of the file
      // No SEEK_DATA (pipes, some file systems): treat everything as data.
      copyData(copy, at, dstOffset + (at - srcOffset), end - at);
      at = end;
      break;
    }
    if (data >= end) break;
    let hole = Number(libc().lseek(src, BigInt(data), SEEK_HOLE));
    if (hole < 0 || hole > end) hole = end;
    onBytes?.(data - at);
    copyData(copy, data, dstOffset + (data - srcOffset), hole - data);
    at = hole;
  }
  // A source that ends inside the range (SEEK_DATA says ENXIO past EOF) shrank.
  const size = Number(libc().lseek(src, 0n, 2));
  if (size >= 0 && size < end) throw new SourceChangedError(what);
  if (at < end) onBytes?.(end - at);
}

/** The two files of one copyRange call, what to name in errors, and whom to tell of progress. */
interface FileCopy {
  src: number;
  dst: number;
  what: string;
  onBytes?: (n: number) => void;
}

function copyData(copy: FileCopy, srcOffset: number, dstOffset: number, length: number): void {
  const offIn = new BigInt64Array([BigInt(srcOffset)]);
  const offOut = new BigInt64Array([BigInt(dstOffset)]);
  let left = length;
  while (left > 0) {
    const n = Number(
      libc().copy_file_range(
        copy.src,
        new Uint8Array(offIn.buffer),
        copy.dst,
        new Uint8Array(offOut.buffer),
        BigInt(Math.min(left, CHUNK_BYTES)),
        0,
      ),
    );
    if (n < 0) {
      const code = errno();
      if (code === Errno.EINTR) continue;
      if (code === EXDEV || code === Errno.EINVAL || code === Errno.ENOSYS || code === EOPNOTSUPP) {
        copyByBuffer(copy, Number(offIn[0]), Number(offOut[0]), left);
        return;
      }
      throw new SysError("copy_file_range", code, copy.what);
    }
    if (n === 0) throw new SourceChangedError(copy.what);
    left -= n;
    copy.onBytes?.(n);
  }
}

function copyByBuffer(copy: FileCopy, srcOffset: number, dstOffset: number, length: number): void {
  for (let done = 0; done < length;) {
    const n = Math.min(FALLBACK_BUFFER_BYTES, length - done);
    const chunk = preadExact(copy.src, n, srcOffset + done, copy.what) as Uint8Array<ArrayBuffer>;
    pwriteAll(copy.dst, chunk, dstOffset + done);
    done += n;
    copy.onBytes?.(n);
  }
}

const pathEncoder = new TextEncoder();
/**
 * One NUL-terminated path buffer shared by the writer's synchronous calls (statx, open, xattr
 * calls): a typed array per call made most of a big build's garbage, and so its peak RSS.
 */
const pathBuffer = new Uint8Array(16384);

/** `path` as a C string, valid until the next call; longer paths get their own buffer. */
export function pathBytes(path: string): Uint8Array<ArrayBuffer> {
  const { read, written } = pathEncoder.encodeInto(
    path,
    pathBuffer.subarray(0, pathBuffer.length - 1),
  );
  if (read < path.length) return cstr(path);
  pathBuffer[written] = 0;
  return pathBuffer;
}
