/**
 * A Source over a descriptor already open on a regular file (opened with the caller's checks,
 * e.g. openRegularFileFd): positioned reads on the blocking pool, no shared file position, so
 * reads need no queue. The file must not change while served; close() closes the descriptor.
 */
import { closeFd } from "../../ffi/libc.ts";
import { preadAsync } from "../../ffi/files.ts";
import type { Source } from "./source.ts";

export class FdFile implements Source {
  #closed = false;

  constructor(readonly fd: number, readonly size: number, readonly path: string) {}

  async read(offset: number, length: number): Promise<Uint8Array> {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
      offset + length > this.size
    ) throw new RangeError(`read of ${length} bytes at ${offset} outside 0..${this.size}`);
    if (this.#closed) throw new Error(`${this.path}: read after close`);
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = await preadAsync(this.fd, out.subarray(done), offset + done, this.path);
      if (n === 0) throw new Error(`${this.path}: ends before ${offset + length} (it changed)`);
      done += n;
    }
    return out;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
  }
}
