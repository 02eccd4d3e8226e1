/**
 * Locks of the runtime dir (lock files in it): mount, reattach and umount take turns on what
 * they change, across all mounts or on one.
 */
import { sleep } from "../timers.ts";
import { mountDir, RUNTIME_ROOT } from "./runtime_dirs.ts";

/**
 * Holds the lock of all mount changes of this runtime dir (mount's target check, reattach's
 * choice of work, umount's checks across mounts) until the returned file is closed: two
 * reattaches of one dead server each started a server of their own (both took the FUSE
 * connection over; the loser ran on, unrecorded, after umount), and a reattach during an
 * umount saw a mount half gone. The work on one mount holds its own lock (lockChangesOf).
 */
export function lockMountChanges(
  onWait: () => void = () => {},
  signal?: AbortSignal,
): Promise<Deno.FsFile> {
  Deno.mkdirSync(RUNTIME_ROOT, { recursive: true, mode: 0o700 });
  const file = openLockFile(`${RUNTIME_ROOT}/changes.lock`);
  return lockPolling(file, onWait, signal);
}

/** How often a wait that a signal may end tries the lock again. */
const LOCK_POLL_MS = 50;

/**
 * Waits for an exclusive lock on `file`, calling `onWait` once it has waited a second; ended by
 * `signal` (its reason thrown). Tried again every LOCK_POLL_MS rather than blocked in lock(): a
 * blocked lock() holds a thread of the runtime's small pool and cannot be cancelled, so
 * `mount`, interrupted while another command held the lock, went on waiting.
 */
async function lockPolling(
  file: Deno.FsFile,
  onWait: () => void,
  signal?: AbortSignal,
): Promise<Deno.FsFile> {
  const saidAt = Date.now() + 1000;
  let said = false;
  try {
    while (!file.tryLockSync(true)) {
      signal?.throwIfAborted();
      if (!said && Date.now() >= saidAt) {
        said = true;
        onWait();
      }
      await sleep(LOCK_POLL_MS);
    }
    signal?.throwIfAborted();
  } catch (error) {
    file.close();
    throw error;
  }
  return file;
}

function openLockFile(path: string): Deno.FsFile {
  return Deno.openSync(path, { read: true, write: true, create: true, mode: 0o600 });
}

/**
 * The lock of one mount's changes (`key`: its id), or of an NBD device no mount of ours owns
 * (`device-N`): reattach and umount hold it while they work on that mount, so that they take
 * turns there without holding up what they do elsewhere.
 */
function changesLockPath(key: string): string {
  return key.startsWith("device-")
    ? `${RUNTIME_ROOT}/${key}.lock`
    : `${mountDir(key)}/changes.lock`;
}

function openChangesLock(key: string): Deno.FsFile {
  return openLockFile(changesLockPath(key));
}

/** The lock of `key`'s changes if nobody holds it (undefined: held, or the mount is gone). */
export function tryLockChangesOf(key: string): Deno.FsFile | undefined {
  let file: Deno.FsFile;
  try {
    file = openChangesLock(key);
  } catch {
    return undefined; // its runtime dir is gone: an umount finished it
  }
  if (file.tryLockSync(true)) return file;
  file.close();
  return undefined;
}

/** Waits for the lock of `key`'s changes (`onWait` once it has waited a second). */
export function lockChangesOf(key: string, onWait: () => void = () => {}): Promise<Deno.FsFile> {
  return lockPolling(openChangesLock(key), onWait);
}
