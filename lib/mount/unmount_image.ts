/**
 * `erofs-oci umount`: unmount the overlay and the layer mounts, then stop the server (which
 * disconnects its devices) and remove the runtime files.
 */
import { MountError } from "../errors.ts";
import { SysError } from "../../ffi/libc.ts";
import { unmountErofs } from "./erofs_file.ts";
import { findState, type MountState, removeMountDir } from "./runtime.ts";
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

export async function unmountImage(target: string, lazy: boolean): Promise<MountState> {
  const state = findState(target);
  await unmountOne(state.target, lazy, state.target);
  if (state.overlay) {
    for (const layer of [...state.layers].reverse()) {
      await unmountOne(layer.layerDir, lazy, state.target);
    }
  }
  await stopServer(state.id, state.serverPid);
  removeMountDir(state.id);
  return state;
}
