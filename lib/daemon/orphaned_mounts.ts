/**
 * Clearing what a mount left when its command and its server were both killed before its record
 * was written (lib/state/pending_mount.ts finds those): its mount at DIR when it is this
 * mount's, its layers' mounts, NBD devices, FUSE keeper and mounts, and its runtime dir. What
 * is at DIR is unmounted only when it is this mount's (its FUSE file or NBD device, or an
 * overlay erofs-oci made that no record names), never a mount another tool made there since.
 */
import { type OrphanedMount, orphanedMounts } from "../state/pending_mount.ts";
import { lockMountChanges } from "../state/change_locks.ts";
import { mountDir, removeMountDir } from "../state/runtime_dirs.ts";
import { readStates } from "../state/mount_record.ts";
import { type MountEntry, overlayOption, readMountInfo } from "../sys/mountinfo.ts";
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
 * those cleared.
 */
export async function clearOrphanedMounts(
  wanted: (orphan: OrphanedMount) => boolean = () => true,
): Promise<OrphanedMount[]> {
  if (!orphanedMounts().some(wanted)) return [];
  const lock = await lockMountChanges();
  try {
    const orphans = orphanedMounts().filter(wanted);
    for (const orphan of orphans) await clearOrphanedMount(orphan);
    return orphans;
  } finally {
    lock.close();
  }
}

/** Unmounts and releases what `orphan` left, then removes its runtime dir; never throws. */
async function clearOrphanedMount(orphan: OrphanedMount): Promise<void> {
  const dir = `${mountDir(orphan.id)}/`;
  const devices = nbdDevicesOf(orphan.id);
  const recorded = new Set(readStates().flatMap((s) => s.mountId === undefined ? [] : [s.mountId]));
  const mounts = readMountInfo();
  const onDevice = (entry: MountEntry) => {
    const index = /^\/dev\/nbd(\d+)$/.exec(entry.source)?.[1];
    return index !== undefined && devices.has(Number(index));
  };
  const isOurs = (entry: MountEntry) =>
    (entry.fsType === "erofs" && (entry.source.startsWith(dir) || onDevice(entry))) ||
    (entry.fsType === "overlay" && entry.source === "erofs-oci" && !recorded.has(entry.id) &&
      lowerDirsOf(entry).every((lower) => lower.startsWith(dir) || !lower.startsWith("/")));
  const top = mounts.findLast((entry) => entry.mountPoint === orphan.target);
  const steps: [string, () => Promise<void> | void][] = [];
  if (top && isOurs(top)) {
    steps.push([
      orphan.target,
      () => unmountErofs(orphan.target, { lazy: true, mountId: top.id, fsType: top.fsType }),
    ]);
  }
  for (const entry of mounts.filter((m) => m.mountPoint.startsWith(dir) && isOurs(m)).reverse()) {
    steps.push([
      entry.mountPoint,
      () => unmountErofs(entry.mountPoint, { lazy: true, mountId: entry.id, fsType: entry.fsType }),
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
  steps.push(["its runtime dir", () => removeMountDir(orphan.id)]);
  // Each tried whatever the others did.
  for (const [what, step] of steps) {
    try {
      await step();
    } catch (error) {
      warn(`clearing ${orphan.target}: ${what}: ${(error as Error).message}`);
    }
  }
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

function lowerDirsOf(entry: MountEntry): string[] {
  return (overlayOption(entry.superOptions, "lowerdir") ?? "").split(":").filter(Boolean);
}
