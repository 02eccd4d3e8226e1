import type { Source } from "./source.ts";
import type { DirectReadable, DirectReadFiles } from "./direct_reads.ts";
import { PRESENT } from "./disk_cache_sync.ts";
import { closeQuietly, openMemoryFile, pwriteAll } from "./disk_cache_io.ts";
import { fstatFd, openFile, S_IFBLK, S_IFMT, S_IFREG } from "../../ffi/files.ts";
import { FormatError } from "../errors.ts";
import { openFileNoSymlinks } from "../../ffi/path_resolve.ts";
import { openDirectReadFiles } from "./disk_cache_direct.ts";
import { O_NONBLOCK, O_RDONLY } from "../../ffi/libc.ts";

/** The chunk of a local file's direct reads: only the size of the map (one byte each). */
const DIRECT_CHUNK_BYTES = 1 << 20;

/**
 * A Source over a local file (an EROFS image, a tar index). Reads are positioned (seek + read
 * loop) and serialized, because a Deno file handle has one shared position; concurrency comes
 * from the cache in front, which turns many small reads into few large ones. A regular file's
 * reads can be answered by a reader thread itself (direct reads: every chunk is there), not
 * through this thread's event loop: a metadata walk's thousands of small READs cost ~40-80 us
 * each that way (the mount server runs without V8's JIT).
 */
export class LocalFile implements Source, DirectReadable {
  readonly size: number;
  readonly path: string;
  readonly #file: Deno.FsFile;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(path: string, file: Deno.FsFile, size: number) {
    this.path = path;
    this.#file = file;
    this.size = size;
  }

  /**
   * Opens `path` read-only; the size is taken once (the file must not change while served).
   * `noSymlinks`: only the file reached with no symlink anywhere on the path (as root, for an
   * image another user could have linked elsewhere since it was checked), and, with `fileId`
   * (`dev:ino`), only that file: a ELOOP SysError or an Error saying it was replaced otherwise.
   */
  static async open(
    path: string,
    options: { noSymlinks?: boolean; fileId?: string } = {},
  ): Promise<LocalFile> {
    // Deno opens by path, following links: the file it opened must be the one a descriptor
    // opened without any (compared by dev and inode), which must be the expected one.
    let reached: { dev: bigint; ino: bigint } | undefined;
    if (options.noSymlinks) {
      const fd = openFileNoSymlinks(path);
      try {
        const info = fstatFd(fd, path);
        const type = info.mode & S_IFMT;
        // Before Deno's open, which a FIFO would hold for good.
        if (type !== S_IFREG && type !== S_IFBLK) {
          throw new FormatError(`${path}: not a regular file or block device`);
        }
        reached = { dev: info.dev, ino: info.ino };
      } finally {
        closeQuietly(fd);
      }
      if (options.fileId !== undefined && `${reached.dev}:${reached.ino}` !== options.fileId) {
        throw new FormatError(`${path} is not the file the mount checked (replaced since)`);
      }
    }
    const file = await Deno.open(path, { read: true });
    try {
      const info = await file.stat();
      // Deno's numbers: an inode past 2^53 (overlayfs xino, NFS) is rounded as Number() does.
      if (
        reached !== undefined &&
        (info.dev !== Number(reached.dev) || info.ino !== Number(reached.ino))
      ) {
        throw new FormatError(`${path} was replaced while it was opened`);
      }
      if (!info.isFile && !info.isBlockDevice) {
        throw new Error(`${path}: not a regular file or block device`);
      }
      // A block device reports size 0 through stat; seeking to the end gives its size.
      const size = info.isFile ? info.size : await file.seek(0, Deno.SeekMode.End);
      return new LocalFile(path, file, size);
    } catch (error) {
      file.close();
      throw error;
    }
  }

  read(offset: number, length: number, _signal?: AbortSignal): Promise<Uint8Array> {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
      offset + length > this.size
    ) {
      return Promise.reject(
        new RangeError(`read of ${length} bytes at ${offset} outside 0..${this.size}`),
      );
    }
    const result = this.#queue.then(() => this.#readAt(offset, length));
    this.#queue = result.catch(() => {});
    return result;
  }

  async #readAt(offset: number, length: number): Promise<Uint8Array> {
    if (this.#closed) throw new Error(`${this.path}: read after close`);
    const out = new Uint8Array(length);
    await this.#file.seek(offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < length) {
      const n = await this.#file.read(out.subarray(done));
      if (n === null) {
        throw new Error(
          `${this.path}: file ended at ${offset + done}, expected ${this.size} bytes`,
        );
      }
      done += n;
    }
    return out;
  }

  /**
   * Descriptors for a reader thread: the file opened again (only if it is still the file this
   * source opened) and a presence map in memory saying every chunk is there. undefined for a
   * block device, or when any of it cannot be had.
   */
  openDirectReads(): DirectReadFiles | undefined {
    if (this.#closed) return undefined;
    let dataFd = -1, mapFd = -1;
    try {
      const opened = this.#file.statSync();
      if (!opened.isFile) return undefined;
      // Nonblocking: a FIFO put there since would not hang this thread (refused below).
      dataFd = openFile(this.path, O_RDONLY | O_NONBLOCK);
      const now = fstatFd(dataFd);
      // Deno's numbers: an inode past 2^53 is compared as Number() rounds it.
      if (
        Number(now.ino) !== opened.ino || Number(now.dev) !== opened.dev ||
        now.sizeBytes !== this.size
      ) return undefined; // replaced since it was opened: the reader would read another file
      mapFd = openMemoryFile() ?? -1;
      if (mapFd < 0) return undefined;
      const chunks = Math.ceil(this.size / DIRECT_CHUNK_BYTES);
      if (chunks > 0) pwriteAll(mapFd, new Uint8Array(chunks).fill(PRESENT), 0);
      // Read-only copies of both, as a disk cache blob's (the reader's OFD locks on its own).
      return openDirectReadFiles({
        mapFd,
        dataFd,
        chunkBytes: DIRECT_CHUNK_BYTES,
        size: this.size,
      });
    } catch {
      return undefined;
    } finally {
      closeQuietly(dataFd);
      closeQuietly(mapFd);
    }
  }

  /** Nothing to keep: the file is all there. */
  noteDirectReads(_ranges: readonly number[]): void {}

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#queue;
    this.#file.close();
  }
}
