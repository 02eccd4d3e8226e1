/**
 * The sidecar file of one disk-cached blob (`<base>.meta`, beside its map and data files): bytes
 * a caller keeps with the blob for the next open, e.g. the pages of a chunk table's metadata
 * list (the caller checks them again when it reads them back). Apart from disk_cached.ts
 * because it is a file of its own with its own delayed write; the blob only tells it when it is
 * closed or degraded, and writes a pending one at whenDurable() and close().
 */
import type { DiskCache } from "./disk_cache.ts";
import { after, type Timer } from "../timers.ts";

export class BlobSidecar {
  readonly #cache: DiskCache;
  readonly #base: string;
  readonly #closed: () => boolean;
  readonly #degraded: () => boolean;
  #pendingSidecar?: Uint8Array;
  #ahead?: Promise<Uint8Array | undefined>;
  #sidecarTimer?: Timer;

  constructor(
    cache: DiskCache,
    base: string,
    state: { closed: () => boolean; degraded: () => boolean },
    ahead?: Promise<Uint8Array | undefined>,
  ) {
    this.#ahead = ahead;
    this.#cache = cache;
    this.#base = base;
    this.#closed = state.closed;
    this.#degraded = state.degraded;
  }

  /**
   * At most `maxBytes`; undefined when absent, larger or unreadable. The first read takes what
   * `readAhead` started, if anything (DiskCache.readSidecarAhead).
   */
  async read(maxBytes: number): Promise<Uint8Array | undefined> {
    const ahead = this.#ahead;
    this.#ahead = undefined;
    const bytes = await (ahead ?? readSidecarFile(this.#base, maxBytes));
    if (this.#closed() || !bytes || bytes.length > maxBytes) return undefined;
    return bytes;
  }

  /**
   * write() `delayMs` from now (off a mount's way to ready); a later call replaces a pending
   * one, and writePending() writes a pending one at once.
   */
  writeSoon(bytes: Uint8Array, delayMs: number): void {
    this.#pendingSidecar = bytes;
    this.#sidecarTimer?.cancel();
    this.#sidecarTimer = after(delayMs, () => this.writePending());
  }

  writePending(): void {
    this.#sidecarTimer?.cancel();
    const bytes = this.#pendingSidecar;
    this.#pendingSidecar = undefined;
    if (bytes) this.write(bytes);
  }

  /** Replaces the sidecar (written whole, then renamed into place; counted in the bound). */
  write(bytes: Uint8Array): void {
    if (this.#closed() || this.#degraded()) return;
    // Whole or not at all; without room the next mount fetches those pages again.
    const room = this.#cache.reserve(bytes.length, bytes.length, () => false);
    if (!room) return;
    const path = `${this.#base}.meta`;
    const tmp = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    let kept = false;
    try {
      Deno.writeFileSync(tmp, bytes, { mode: 0o600 });
      Deno.renameSync(tmp, path);
      room.wrote(bytes.length);
      kept = true;
    } catch (error) {
      try {
        Deno.removeSync(tmp);
      } catch { /* not there */ }
      this.#cache.warnOnce(`disk cache ${this.#base}.meta: ${(error as Error).message}`);
    } finally {
      room.end(kept);
    }
  }
}

/**
 * The sidecar of the blob whose files start with `base`, at most `maxBytes`; undefined when
 * absent, larger or unreadable. Read off the event loop in one go: a remount reads 2.3 MB here
 * from a disk whose cache may be cold (a synchronous read held its FUSE INIT, and so the mount,
 * 20-40 ms), and each step of a read loop waited for a turn of a busy event loop.
 */
export async function readSidecarFile(
  base: string,
  maxBytes: number,
): Promise<Uint8Array | undefined> {
  try {
    const path = `${base}.meta`;
    // Not through a symlink (the cache dir is root's alone; still, a file is what we wrote).
    const info = await Deno.lstat(path);
    if (!info.isFile || info.size > maxBytes) return undefined;
    const bytes = await Deno.readFile(path);
    return bytes.length <= maxBytes ? bytes : undefined;
  } catch {
    return undefined;
  }
}
