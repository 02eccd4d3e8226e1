/**
 * Which boot a blob's unsynced chunks belong to. A fill marks its chunks WRITTEN (map byte 2)
 * as soon as their verified bytes are in the data file, and syncs and marks them PRESENT (1)
 * later, when the disk is quiet (disk_cache_fill.ts): until then the bytes live in the page
 * cache, which every process of this boot shares and which survives any process's crash, but
 * not a reboot. So `<base>.boot` names the boot the map's WRITTEN bytes were written in, and
 * the first opener in another boot turns them back into absent chunks before anyone reads
 * them. The file needs no sync: a boot id is never reused, so a stale or lost one always
 * differs from the running boot's, and the clearing simply happens (again).
 */
import { readSmallFile } from "../../ffi/files.ts";
import {
  byteRuns,
  closeQuietly,
  F_WRLCK,
  IN_USE_OFFSET,
  openCacheFile,
  preadExact,
  pwriteAll,
  sleepSync,
  tryLock,
  unlock,
} from "./disk_cache_io.ts";
import { fstatFd } from "../../ffi/files.ts";

/** The map byte of a chunk verified and written, not yet synced (valid in its boot only). */
export const WRITTEN = 2;
/** The map byte the boot check is serialised on (past the in-use byte). */
const BOOT_LOCK_OFFSET = IN_USE_OFFSET + 1;
const BOOT_ID_BYTES = 36;
const POLL_MS = 5;
const POLL_LIMIT = 2000;

let bootId: string | undefined;

/** The running boot's id (a random UUID the kernel makes at boot). */
export function currentBootId(): string {
  if (bootId) return bootId;
  let id: string | undefined;
  try {
    id = readSmallFile("/proc/sys/kernel/random/boot_id", 64)?.trim();
  } catch { /* no /proc: see below */ }
  // Without it no other process can vouch for WRITTEN chunks: each process then counts as a
  // boot of its own, and a later opener drops them (fetched again, never wrong).
  bootId = id && id.length === BOOT_ID_BYTES ? id : `process-${crypto.randomUUID()}`;
  return bootId;
}

/** [start, stop) runs of WRITTEN bytes in `map`, which starts at chunk `first`. */
export function writtenRuns(map: Uint8Array, first: number): [number, number][] {
  return byteRuns(map, first, (byte) => byte === WRITTEN);
}

/** The boot id in `<base>.boot`, or undefined when there is none (or it is not one). */
function recordedBoot(base: string): string | undefined {
  let fd = -1;
  try {
    fd = openCacheFile(`${base}.boot`, false);
    const size = fstatFd(fd).sizeBytes;
    if (size <= 0 || size > 128) return undefined;
    const bytes = new Uint8Array(size);
    preadExact(fd, bytes, 0);
    return new TextDecoder().decode(bytes);
  } catch {
    return undefined;
  } finally {
    closeQuietly(fd);
  }
}

/**
 * Whether the blob's WRITTEN chunks are this boot's (for readers that do not open the blob:
 * claimBoot clears older ones before it names this boot).
 */
export function writtenIsTrusted(base: string): boolean {
  return recordedBoot(base) === currentBootId();
}

/**
 * Makes the blob's WRITTEN chunks this boot's: when `<base>.boot` names another boot (or
 * none), they become absent and the file names this one. Called by every opener before it
 * reads the map; serialised between processes on a lock of the map file.
 */
export function claimBoot(base: string, mapFd: number, chunkCount: number): void {
  if (writtenIsTrusted(base)) return;
  for (let tries = 0; !tryLock(mapFd, F_WRLCK, BOOT_LOCK_OFFSET, 1); tries++) {
    if (tries >= POLL_LIMIT) throw new Error(`${base}.map: the boot check stays locked`);
    sleepSync(POLL_MS);
  }
  try {
    if (writtenIsTrusted(base)) return;
    // Nobody in this boot wrote WRITTEN bytes yet (they claim first), so they are all stale.
    const map = new Uint8Array(chunkCount);
    preadExact(mapFd, map, 0);
    for (const [start, stop] of writtenRuns(map, 0)) {
      pwriteAll(mapFd, new Uint8Array(stop - start), start);
    }
    const tmp = `${base}.boot.${crypto.randomUUID().slice(0, 8)}.tmp`;
    try {
      Deno.writeTextFileSync(tmp, currentBootId(), { mode: 0o600 });
      Deno.renameSync(tmp, `${base}.boot`);
    } catch (error) {
      try {
        Deno.removeSync(tmp);
      } catch { /* not there */ }
      throw error;
    }
  } finally {
    unlock(mapFd, BOOT_LOCK_OFFSET, 1);
  }
}
