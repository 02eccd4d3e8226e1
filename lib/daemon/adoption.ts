/**
 * A server `mount` started is the mount's once `mount` has recorded it (state.json, after the
 * layer mounts on top of the server's exports). A `mount` killed in between (kill -9, the OOM
 * killer) left the server, its FUSE keeper and mounts, and the mounts it had made on them
 * running, unrecorded: neither `list` nor `umount --all` knew them. Until the record appears
 * the server watches its parent; once that is gone, it undoes the mounts made since it was
 * ready and stops.
 */
import { mountDir } from "../state/runtime_dirs.ts";
import { readState, statePath } from "../state/mount_record.ts";
import { readMountInfo } from "../sys/mountinfo.ts";
import { umountOffThread } from "../sys/mount_task.ts";
import { pathExists } from "../../ffi/files.ts";
import { MNT_DETACH } from "../../ffi/mount.ts";
import { every } from "../timers.ts";

const POLL_MS = 100;

/**
 * From ready on: polls until mount `id`'s state is recorded (then stops watching) or the
 * process that started this server (`cliPid`, our parent) is gone; then detaches what was
 * mounted at `target` or under the mount's runtime dir since this call, and runs `orphaned`.
 */
export function watchForAdoption(
  id: string,
  target: string,
  cliPid: number,
  orphaned: () => Promise<void>,
): void {
  const mountsAtReady = new Set(readMountInfo().map((entry) => entry.id));
  const runDir = `${mountDir(id)}/`;
  const timer = every(POLL_MS, async () => {
    if (pathExists(statePath(id))) {
      timer.cancel();
      return;
    }
    if (Deno.ppid === cliPid) return;
    timer.cancel();
    for (const entry of readMountInfo().reverse()) {
      if (mountsAtReady.has(entry.id)) continue;
      if (entry.mountPoint === target || entry.mountPoint.startsWith(runDir)) {
        await umountOffThread(entry.mountPoint, MNT_DETACH);
      }
    }
    await orphaned();
  });
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
    if (readState(id)?.serverPid === Deno.pid) {
      timer.cancel();
      return;
    }
    if (Deno.ppid === cliPid) return;
    timer.cancel();
    orphaned();
  });
}
