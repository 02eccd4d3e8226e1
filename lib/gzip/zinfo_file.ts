/**
 * Writes a zinfo file while its checkpoints are being made (ZinfoBuilder's onCheckpoint), so
 * building the index of a large layer keeps no windows in memory. The header goes last, at
 * offset 0, once the count is known; until then the file is not a valid zinfo.
 */
import { encodeCheckpoint, ZINFO_HEADER_BYTES, type ZinfoCheckpoint } from "./zinfo.ts";

export class ZinfoFileWriter {
  #count = 0;

  private constructor(readonly path: string, readonly file: Deno.FsFile) {}

  /** Creates (or truncates) `path` with room for the header. */
  static async create(path: string): Promise<ZinfoFileWriter> {
    const file = await Deno.open(path, { write: true, create: true, truncate: true, mode: 0o644 });
    try {
      writeAllSync(file, new Uint8Array(ZINFO_HEADER_BYTES));
    } catch (error) {
      file.close();
      throw error;
    }
    return new ZinfoFileWriter(path, file);
  }

  /** Appends one checkpoint (synchronous: it is called from inside ZinfoBuilder.feed). */
  add(checkpoint: ZinfoCheckpoint & { window: Uint8Array }): void {
    writeAllSync(this.file, encodeCheckpoint(checkpoint));
    this.#count++;
  }

  get count(): number {
    return this.#count;
  }

  /** Writes `header` (ZinfoBuilder.finish() with onCheckpoint) at offset 0, syncs, closes. */
  async finish(header: Uint8Array): Promise<void> {
    try {
      await this.file.seek(0, Deno.SeekMode.Start);
      writeAllSync(this.file, header);
      await this.file.sync();
    } finally {
      this.file.close();
    }
  }

  /** Closes and removes the partial file. */
  async abort(): Promise<void> {
    try {
      this.file.close();
    } catch { /* already closed */ }
    await Deno.remove(this.path).catch(() => {});
  }
}

function writeAllSync(file: Deno.FsFile, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length;) done += file.writeSync(bytes.subarray(done));
}
