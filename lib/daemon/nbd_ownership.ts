/**
 * Whether an NBD device a mount's record names is still that mount's layer. Device indexes are
 * handed out lowest free first: once a dead server's device was freed (the kernel's
 * dead-connection timeout, `nbd-client -d`) the next mount — ours or another tool's — may hold
 * the same nbdN, and a stale record's umount disconnected it, or its reattach started a second
 * server on it. The device's backend names the recovery file it was connected with.
 */
import { nbdBackend } from "../nbd/sysfs.ts";
import { readRecoveryFile } from "../state/recovery_store.ts";
import { readState } from "../state/mount_record.ts";

export function nbdDeviceIsLayers(
  index: number,
  layer: { recoveryFile?: string },
  mountId: string,
  backend: string | undefined = nbdBackend(index),
  recorded: (id: string) => boolean = (id) => readState(id) !== undefined,
): boolean {
  if (backend === undefined) return false; // not connected: nobody's
  // Records older than the recovery file name nothing to compare.
  if (layer.recoveryFile === undefined) return true;
  if (backend !== layer.recoveryFile) return false;
  try {
    const named = readRecoveryFile(backend).extra.mountId;
    // mount.erofs's records name no mount; a device `reattach` adopted under a new record
    // (the mount's own record gone) still names the mount it was made for.
    return named === undefined || named === mountId || !recorded(named);
  } catch {
    return true; // the file this mount was connected with, unreadable now: still its device
  }
}

/**
 * The position of the layer of `state` that the connected device `device` is (nbdDeviceIsLayers),
 * or -1 when it is none of its layers.
 */
export function layerOnDevice(
  state: { id: string; layers: { device?: string; recoveryFile?: string }[] },
  device: { index: number; backend?: string },
): number {
  return state.layers.findIndex((layer) =>
    layer.device === `nbd${device.index}` &&
    nbdDeviceIsLayers(device.index, layer, state.id, device.backend)
  );
}
