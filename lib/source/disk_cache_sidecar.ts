/**
 * The sidecar file of one disk-cached blob (`<base>.meta`, beside its map and data files): bytes
 * a caller keeps with the blob for the next open, e.g. the pages of a chunk table's metadata
 * list (the caller checks them again when it reads them back). Apart from disk_cached.ts
 * because it is a file of its own with its own delayed write; the blob only tells it when it is
 * closed or degraded, and writes a pending one at whenDurable() and close().
 */
import type { DiskCache } from "./disk_cache.ts";

export class BlobSidecar {
  readonly #cache: DiskCache;
  readonly #base: string;
  readonly #closed: () => boolean;
  readonly #degraded: () => boolean;
  #pendingSidecar?: Uint8Array;
  #sidecarTimer?: ReturnType<typeof setTimeout>;

  constructor(
    cache: DiskCache,
    base: string,
    state: { closed: () => boolean; degraded: () => boolean },
  ) {
    this.#cache = cache;
    this.#base = base;
    this.#closed = state.closed;
    this.#degraded = state.degraded;
  }

  /**
   * At most `maxBytes`; undefined when absent, larger or unreadable. Read off the event loop:
   * a remount reads 2.3 MB here from a disk whose cache may be cold, and a synchronous read
   * held its FUSE INIT (and so the mount) for 20-40 ms.
   */
  async read(maxBytes: number): Promise<Uint8Array | undefined> {
    if (this.#closed()) return undefined;
    try {
      const path = `${this.#base}.meta`;
      // Not through a symlink (the cache dir is root's alone; still, a file is what we wrote).
      if (!(await Deno.lstat(path)).isFile) return undefined;
      const file = await Deno.open(path, { read: true });
      try {
        const info = await file.stat();
        if (!info.isFile || info.size > maxBytes) return undefined;
        const bytes = new Uint8Array(info.size);
        let at = 0;
        while (at < bytes.length) {
          const n = await file.read(bytes.subarray(at));
          if (n === null) return undefined; // shorter than it was: being replaced
          at += n;
        }
        return bytes;
      } finally {
        file.close();
      }
    } catch {
      return undefined;
    }
  }

  /**
   * write() `delayMs` from now (off a mount's way to ready); a later call replaces a pending
   * one, and writePending() writes a pending one at once.
   */
  writeSoon(bytes: Uint8Array, delayMs: number): void {
    this.#pendingSidecar = bytes;
    clearTimeout(this.#sidecarTimer);
    this.#sidecarTimer = setTimeout(() => this.writePending(), delayMs);
  }

  writePending(): void {
    clearTimeout(this.#sidecarTimer);
    const bytes = this.#pendingSidecar;
    this.#pendingSidecar = undefined;
    if (bytes) this.write(bytes);
  }

  /** Replaces the sidecar (written whole, then renamed into place; counted in the bound). */
  write(bytes: Uint8Array): void {
    if (this.#closed() || this.#degraded()) return;
    const path = `${this.#base}.meta`;
    const tmp = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    try {
      Deno.writeFileSync(tmp, bytes, { mode: 0o600 });
      Deno.renameSync(tmp, path);
      this.#cache.noteWritten(bytes.length);
    } catch (error) {
      try {
        Deno.removeSync(tmp);
      } catch { /* not there */ }
      this.#cache.warnOnce(`disk cache ${this.#base}.meta: ${(error as Error).message}`);
    }
  }
}
