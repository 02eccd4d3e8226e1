/**
 * `erofs-oci umount`: unmount the overlay and the layer mounts, then stop the server (which
 * disconnects its devices) and remove the runtime files. A mount whose server died is still
 * cleaned up completely.
 */
import { MountError } from "../errors.ts";
import { SysError } from "../../ffi/libc.ts";
import { unmountErofs } from "./erofs_file.ts";
import { findState, type MountState, removeMountDir, serverAlive } from "./runtime.ts";
import { disconnectNbd } from "../nbd/kernel.ts";
import { removeRecoveryFile } from "../recovery/store.ts";
import { warn } from "../cli/log.ts";
import { stopServer } from "./mount_image.ts";

const EBUSY = 16;
const EINVAL = 22;
const ENOENT = 2;

async function unmountOne(dir: string, lazy: boolean, shownAs: string): Promise<void> {
  try {
    await unmountErofs(dir, { lazy });
  } catch (caught) {
    const error = caught instanceof MountError && caught.cause instanceof SysError
      ? caught.cause
      : caught;
    if (error instanceof SysError && error.errno === EBUSY) {
      throw new MountError(
        `${shownAs} is busy: files are open or a process works inside it`,
        "close them (see `fuser -vm DIR`) or use `erofs-oci umount --lazy`",
      );
    }
    // Not mounted any more (EINVAL) or gone: the goal is reached.
    if (error instanceof SysError && (error.errno === EINVAL || error.errno === ENOENT)) return;
    throw caught;
  }
}

async function releaseOrphanedDevices(state: MountState): Promise<void> {
  for (const layer of state.layers) {
    const index = /^nbd(\d+)$/.exec(layer.device ?? "")?.[1];
    if (index === undefined) continue;
    try {
      await disconnectNbd(Number(index));
    } catch (error) {
      warn(`could not disconnect ${layer.device}: ${(error as Error).message}`);
    }
    if (layer.recoveryFile) removeRecoveryFile(layer.recoveryFile);
  }
}

export async function unmountImage(target: string, lazy: boolean): Promise<MountState> {
  const state = findState(target);
  await unmountOne(state.target, lazy, state.target);
  if (state.overlay) {
    for (const layer of [...state.layers].reverse()) {
      await unmountOne(layer.layerDir, lazy, state.target);
    }
  }
  if (serverAlive(state.serverPid)) {
    await stopServer(state.id, state.serverPid);
  } else {
    // Our server is gone (killed, or another tool's server took the devices over through
    // reattach): release the devices and recovery files ourselves.
    await releaseOrphanedDevices(state);
  }
  removeMountDir(state.id);
  return state;
}
