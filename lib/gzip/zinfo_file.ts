/**
 * Writes a zinfo file while its checkpoints are being made (ZinfoBuilder's onCheckpoint), so
 * building the index of a large layer keeps no windows in memory. The header goes last, at
 * offset 0, once the count is known; until then the file is not a valid zinfo.
 */
import { encodeCheckpoint, ZINFO_HEADER_BYTES, type ZinfoCheckpoint } from "./zinfo.ts";
import { hiddenTempName, NewFileInDir } from "../../ffi/new_file_in_dir.ts";

export class ZinfoFileWriter {
  #count = 0;

  private constructor(readonly out: NewFileInDir) {}

  /**
   * A new file that becomes `path` at commit() (`dirFd`: its directory, already open), with
   * room for the header.
   */
  static create(path: string, dirFd?: number): ZinfoFileWriter {
    const out = NewFileInDir.create(path, { tempName: hiddenTempName, dirFd });
    try {
      out.write(new Uint8Array(ZINFO_HEADER_BYTES));
    } catch (error) {
      out.discard();
      throw error;
    }
    return new ZinfoFileWriter(out);
  }

  /** Appends one checkpoint (synchronous: it is called from inside ZinfoBuilder.feed). */
  add(checkpoint: ZinfoCheckpoint & { window: Uint8Array }): void {
    this.out.write(encodeCheckpoint(checkpoint));
    this.#count++;
  }

  get count(): number {
    return this.#count;
  }

  /** Writes `header` (ZinfoBuilder.finish() with onCheckpoint) at offset 0 and syncs. */
  finish(header: Uint8Array): void {
    this.out.writeAt(header, 0);
    this.out.sync();
  }

  /** Gives the finished file its name. */
  commit(): void {
    this.out.commit();
  }

  /** Closes and removes the file (unless committed). */
  abort(): void {
    this.out.discard();
  }
}
