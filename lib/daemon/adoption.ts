/**
 * A server `mount` started is the mount's once `mount` has recorded it (state.json, after the
 * layer mounts on top of the server's exports). A `mount` killed in between (kill -9, the OOM
 * killer) left the server, its FUSE keeper and mounts, and the mounts it had made on them
 * running, unrecorded: neither `list` nor `umount --all` knew them. Until the record appears
 * the server watches its parent; once that is gone, it undoes the mounts made since it was
 * ready and stops.
 */
import { mountDir } from "../state/runtime_dirs.ts";
import { readState, readStates, statePath } from "../state/mount_record.ts";
import {
  isMount,
  loopBackingFile,
  type MountEntry,
  overlayOption,
  readMountInfo,
  recordedIdentity,
} from "../sys/mountinfo.ts";
import { overlaySourceOf } from "../mount/overlay.ts";
import { umountOffThread } from "../sys/mount_task.ts";
import { pathExists } from "../../ffi/files.ts";
import { MNT_DETACH } from "../../ffi/mount.ts";
import { every } from "../timers.ts";

const POLL_MS = 100;

/** A server's watch for its mount's record (watchForAdoption). */
export interface Adoption {
  /**
   * For a server stopped before `mount` recorded the mount (a signal): stops watching and
   * detaches what was mounted since ready, as the watch does when `mount` dies first. A mount
   * left behind unrecorded would be known to nobody. False when the record is there.
   */
  undoUnrecorded(): Promise<boolean>;
}

/**
 * From ready on: polls until mount `id`'s state is recorded (then stops watching) or the
 * process that started this server (`cliPid`, our parent) is gone; then detaches what was
 * mounted under the mount's runtime dir since this call, and at `target` what was mounted there
 * from this server's `exports` (the files or devices it serves), and runs `orphaned`.
 */
export function watchForAdoption(
  id: string,
  target: string,
  cliPid: number,
  exports: string[],
  orphaned: () => Promise<void>,
): Adoption {
  const mountsAtReady = new Set(readMountInfo().map((entry) => entry.id));
  const runDir = `${mountDir(id)}/`;
  const detachNewMounts = async () => {
    for (const entry of readMountInfo().reverse()) {
      if (mountsAtReady.has(entry.id)) continue;
      if (
        entry.mountPoint.startsWith(runDir) ||
        (entry.mountPoint === target && madeFrom(entry, runDir, exports, id))
      ) {
        await umountOffThread(entry.mountPoint, MNT_DETACH);
      }
    }
  };
  const timer = every(POLL_MS, async () => {
    const now = recordOrParent(() => Deno.ppid === cliPid, () => pathExists(statePath(id)));
    if (now === "waiting") return;
    timer.cancel();
    if (now === "recorded") return;
    await detachNewMounts();
    await orphaned();
  });
  return {
    async undoUnrecorded() {
      timer.cancel();
      if (pathExists(statePath(id))) return false;
      await detachNewMounts();
      return true;
    },
  };
}

/**
 * Whether the mount `entry` stacks this mount's layers: EROFS from one of its `exports` (or a
 * loop device over one), or an overlay of its layer dirs (under `runDir`). Anything else at the
 * target is another's: another `mount` to the same directory that recorded its mount meanwhile
 * was detached by this one's undo (its record and server left, "not mounted").
 */
export function madeFrom(
  entry: MountEntry,
  runDir: string,
  exports: string[],
  id?: string,
): boolean {
  if (entry.fsType === "overlay") {
    // Its source names the mount it belongs to (overlaySourceOf), whatever its lower dirs.
    if (entry.source.startsWith("erofs-oci:")) return entry.source === overlaySourceOf(id ?? "");
    const lower = overlayOption(entry.superOptions, "lowerdir") ?? "";
    if (lower.split(":").some((dir) => dir.startsWith(runDir))) return true;
    // Lower dirs named relative to the runtime dir (an image of 100+ layers, overlay.ts): ours
    // unless another mount has recorded it as its own.
    return lower !== "" && !lower.startsWith("/") &&
      !readStates().some((state) => {
        const identity = recordedIdentity(state);
        return identity !== undefined && isMount(entry, identity);
      });
  }
  if (exports.includes(entry.source) || entry.source.startsWith(runDir)) return true;
  const backing = loopBackingFile(entry.source);
  return backing !== undefined && (exports.includes(backing) || backing.startsWith(runDir));
}

/**
 * A server `reattach` started serves a mount already recorded: it is the mount's once
 * `reattach` has written it into the record (serverPid). A `reattach` killed in between left it
 * serving, unrecorded, for good: the record still named the dead server, so the next reattach
 * started a second server on the same connection, and umount stopped only the recorded one.
 * Until the record names this process the server watches the process that started it
 * (`cliPid`); once that is gone, `orphaned` runs (the server then ends as a crashed one would,
 * leaving the mount to the next reattach).
 */
export function watchForRecord(id: string, cliPid: number, orphaned: () => void): void {
  const timer = every(POLL_MS, () => {
    const now = recordOrParent(
      () => Deno.ppid === cliPid,
      () => readState(id)?.serverPid === Deno.pid,
    );
    if (now === "waiting") return;
    timer.cancel();
    if (now === "orphaned") orphaned();
  });
}

/**
 * One look of a server at the command that started it: its record is written ("recorded"),
 * the command still runs ("waiting"), or it ended without writing it ("orphaned"). The parent
 * is read first: the command writes its record before it exits, so a record looked for once
 * the parent was seen gone is there if it was ever written. Read the other way round, a
 * command that recorded its mount and exited between the two reads (the server preempted, or
 * in a garbage collection, on a loaded host) was taken for one killed before it recorded: the
 * server detached the mount `mount` had just reported made (CI: oci_broken_reply_test read an
 * empty DIR right after a successful mount).
 */
export function recordOrParent(
  parentAlive: () => boolean,
  recorded: () => boolean,
): "recorded" | "waiting" | "orphaned" {
  const alive = parentAlive();
  if (recorded()) return "recorded";
  return alive ? "waiting" : "orphaned";
}

/**
 * Whether the mount's record names this process as its server: only then is a mount left in
 * place for `reattach` when the server is signalled (nothing else would find one unrecorded).
 */
export function recordedAsServer(id: string): boolean {
  try {
    return readState(id)?.serverPid === Deno.pid;
  } catch {
    return false; // a record that cannot be read is no record to reattach from
  }
}
