/**
 * A Source over a descriptor already open on a regular file (opened with the caller's checks,
 * e.g. openRegularFileFd): positioned reads on the blocking pool, no shared file position, so
 * reads need no queue. The file must not change while served; close() closes the descriptor.
 */
import { PooledReadFd } from "../../ffi/files.ts";
import { checkReadRange, type Source } from "./source.ts";

export class FdFile implements Source {
  readonly #fd: PooledReadFd;

  constructor(fd: number, readonly size: number, readonly path: string) {
    this.#fd = new PooledReadFd(fd);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, dest: Uint8Array): Promise<void> {
    const length = dest.length;
    checkReadRange(offset, length, this.size);
    if (this.#fd.closed) throw new Error(`${this.path}: read after close`);
    let done = 0;
    while (done < length) {
      const part = dest.subarray(done) as Uint8Array<ArrayBuffer>;
      const n = await this.#fd.pread(part, offset + done, this.path);
      if (n === 0) throw new Error(`${this.path}: ends before ${offset + length} (it changed)`);
      done += n;
    }
  }

  /** The descriptor closes once the reads in flight have ended (PooledReadFd). */
  close(): void {
    this.#fd.close();
  }
}
