import type { Source } from "./source.ts";

/**
 * A Source over a local file (an EROFS image, a tar index). Reads are positioned (seek + read
 * loop) and serialized, because a Deno file handle has one shared position; concurrency comes
 * from the cache in front, which turns many small reads into few large ones.
 */
export class LocalFile implements Source {
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

  /** Opens `path` read-only; the size is taken once (the file must not change while served). */
  static async open(path: string): Promise<LocalFile> {
    const file = await Deno.open(path, { read: true });
    try {
      const info = await file.stat();
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

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#queue;
    this.#file.close();
  }
}
