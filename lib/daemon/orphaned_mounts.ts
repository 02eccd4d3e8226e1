/**
 * Clearing what a mount left when its command and its server were both killed before its record
 * was written (lib/state/pending_mount.ts finds those): its mount at DIR when it is this
 * mount's, its layers' mounts, NBD devices, FUSE keeper and mounts, and its runtime dir. What
 * is at DIR is unmounted only when it is this mount's (its FUSE file, its NBD device or a loop
 * device over either, or the overlay whose source names it), never a mount another made there.
 */
import { type OrphanedMount, orphanedMounts } from "../state/pending_mount.ts";
import { lockMountChanges } from "../state/change_locks.ts";
import { mountDir, removeMountDir } from "../state/runtime_dirs.ts";
import { identityOf, loopBackingFile, type MountEntry, readMountInfo } from "../sys/mountinfo.ts";
import { overlaySourceOf } from "../mount/overlay.ts";
import { printable } from "../text.ts";
import { unmountErofs } from "../mount/erofs_file.ts";
import { listNbdDevices } from "../nbd/sysfs.ts";
import { disconnectNbd } from "../nbd/kernel.ts";
import { readRecoveryFile, removeRecoveryFile } from "../state/recovery_store.ts";
import { stopFuseKeeper } from "./fuse_recovery.ts";
import { detachDeadFuseMounts } from "./unmount_image.ts";
import { warn } from "../log.ts";

/**
 * Clears the orphaned mounts `wanted` picks (all by default), under the lock of all mount
 * changes (a mount in progress holds it from its target's last check to its record); returns
 * those cleared (one whose mounts could not all go is said and kept).
 */
export async function clearOrphanedMounts(
  wanted: (orphan: OrphanedMount) => boolean = () => true,
): Promise<OrphanedMount[]> {
  if (!orphanedMounts().some(wanted)) return [];
  const lock = await lockMountChanges();
  try {
    const cleared: OrphanedMount[] = [];
    for (const orphan of orphanedMounts().filter(wanted)) {
      if (await clearOrphanedMount(orphan)) cleared.push(orphan);
    }
    return cleared;
  } finally {
    lock.close();
  }
}

/**
 * Unmounts and releases what `orphan` left, then removes its runtime dir; never throws. False
 * (its runtime dir and notes kept, for a later try) when a mount of it stays.
 */
async function clearOrphanedMount(orphan: OrphanedMount): Promise<boolean> {
  const dir = `${mountDir(orphan.id)}/`;
  const devices = nbdDevicesOf(orphan.id);
  const devicePaths = [...devices.keys()].map((index) => `/dev/nbd${index}`);
  // Its EROFS mounts are on its FUSE files, its NBD devices or loop devices over either; its
  // overlay names it in its source (overlaySourceOf). Nothing else at DIR is touched.
  const isOurs = (entry: MountEntry) => {
    if (entry.fsType === "overlay") return entry.source === overlaySourceOf(orphan.id);
    if (entry.fsType !== "erofs") return false;
    const from = loopBackingFile(entry.source) ?? entry.source;
    return from.startsWith(dir) || devicePaths.includes(from);
  };
  const ours = () => {
    const mounts = readMountInfo();
    const top = mounts.findLast((entry) => entry.mountPoint === orphan.target);
    return [
      ...(top && isOurs(top) ? [top] : []),
      ...mounts.filter((m) => m.mountPoint.startsWith(dir) && !m.fsType.startsWith("fuse"))
        .reverse(),
    ];
  };
  const steps: [string, () => Promise<void> | void][] = [];
  for (const entry of ours()) {
    steps.push([
      entry.mountPoint,
      () => unmountErofs(entry.mountPoint, { lazy: true, mount: identityOf(entry) }),
    ]);
  }
  for (const [index, recoveryFile] of devices) {
    steps.push([`nbd${index}`, async () => {
      await disconnectNbd(index);
      removeRecoveryFile(recoveryFile);
    }]);
  }
  steps.push(["its FUSE keeper", () => stopFuseKeeper(orphan.id)]);
  steps.push(["its FUSE mounts", () => detachDeadFuseMounts(orphan.id, orphan.target)]);
  // Each tried whatever the others did.
  for (const [what, step] of steps) {
    try {
      await step();
    } catch (error) {
      warn(`clearing ${printable(orphan.target)}: ${printable(what)}: ${(error as Error).message}`);
    }
  }
  const left = [...ours(), ...readMountInfo().filter((m) => m.mountPoint.startsWith(dir))];
  if (left.length) {
    warn(
      `${printable(orphan.target)}: ${left.length} mount(s) of the killed mount stay ` +
        `(${left.map((m) => printable(m.mountPoint)).join(", ")}); its notes are kept`,
    );
    return false;
  }
  removeMountDir(orphan.id);
  return true;
}

/** The connected NBD devices whose recovery file names mount `id`, with that file. */
function nbdDevicesOf(id: string): Map<number, string> {
  const devices = new Map<number, string>();
  let connected;
  try {
    connected = listNbdDevices();
  } catch {
    return devices;
  }
  for (const device of connected) {
    if (!device.backend) continue;
    try {
      if (readRecoveryFile(device.backend).extra.mountId === id) {
        devices.set(device.index, device.backend);
      }
    } catch { /* another tool's device, or a record that cannot be read: not ours to touch */ }
  }
  return devices;
}
