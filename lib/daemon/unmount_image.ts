/**
 * `erofs-oci umount`: unmount the overlay and the layer mounts, then stop the server (which
 * disconnects its devices) and remove the runtime files. A mount whose server died is still
 * cleaned up completely.
 */
import { MountError, UserError } from "../errors.ts";
import { SysError } from "../../ffi/libc.ts";
import { unmountErofs } from "../mount/erofs_file.ts";
import {
  findState,
  type MountState,
  notMounted,
  readStates,
  serverOf,
} from "../state/mount_record.ts";
import { lockChangesOf, lockMountChanges } from "../state/change_locks.ts";
import { mountDir, removeMountDir, RUNTIME_ROOT, stateRoot } from "../state/runtime_dirs.ts";
import { serverAlive } from "../state/server_liveness.ts";
import { isMount, overlayWritableDirs, readMountInfo, recordedIdentity } from "../sys/mountinfo.ts";
import type { UnmountOptions } from "../mount/unmount_pinned.ts";
import { disconnectNbd } from "../nbd/kernel.ts";
import { removeRecoveryFile } from "../state/recovery_store.ts";
import { info, warn } from "../log.ts";
import { stopServer } from "./server_process.ts";
import { stopFuseKeeper } from "./fuse_recovery.ts";
import { pruneIndexCache, referenceText } from "../mount/index_cache.ts";
import { pruneKeptBlobs } from "../oci/kept_blobs.ts";
import { testHold } from "../test_pause.ts";
import { nbdDeviceIsLayers } from "./nbd_ownership.ts";

const EBUSY = 16;
const EINVAL = 22;
const ENOENT = 2;

/** Unmounts `dir`; false when it was not mounted (any more): the goal is reached all the same. */
async function unmountOne(dir: string, opts: UnmountOptions, shownAs: string): Promise<boolean> {
  try {
    await unmountErofs(dir, opts);
    return true;
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
    if (error instanceof SysError && (error.errno === EINVAL || error.errno === ENOENT)) {
      return false;
    }
    throw caught;
  }
}

async function releaseOrphanedDevices(state: MountState): Promise<void> {
  for (const layer of state.layers) {
    const index = /^nbd(\d+)$/.exec(layer.device ?? "")?.[1];
    if (index === undefined) continue;
    if (nbdDeviceIsLayers(Number(index), layer, state.id)) {
      try {
        await disconnectNbd(Number(index));
      } catch (error) {
        warn(`could not disconnect ${layer.device}: ${(error as Error).message}`);
      }
    }
    if (layer.recoveryFile) removeRecoveryFile(layer.recoveryFile);
  }
}

/**
 * A dead FUSE server (killed, say, with SIGKILL) leaves its FUSE mounts in the runtime dir
 * answering ENOTCONN to everything, so the dir cannot be removed: detach them (nobody can read
 * them anyway). Also the undo of a `mount` whose server died before it was ready.
 */
export async function detachDeadFuseMounts(id: string, shownAs: string): Promise<void> {
  const runDir = `${mountDir(id)}/`;
  const fuseMounts = readMountInfo().filter((entry) =>
    entry.mountPoint.startsWith(runDir) && entry.fsType.startsWith("fuse")
  );
  for (const entry of fuseMounts.reverse()) {
    await unmountOne(entry.mountPoint, { lazy: true }, shownAs);
  }
}

/** What `umount` did: `wasMounted` false when only the record (and server) of a mount gone. */
export interface Unmounted {
  state: MountState;
  wasMounted: boolean;
}

/**
 * `changing`: called once the locks are held and the checks passed, right before the first
 * change (the caller stops letting a signal end the process half-way from then on).
 */
export async function unmountImage(
  target: string,
  lazy: boolean,
  changing?: () => void,
): Promise<Unmounted> {
  for (let attempt = 1;; attempt++) {
    const result = await unmountRecorded(target, lazy, changing);
    if (!("again" in result)) return result;
    if (attempt === 3) {
      throw new MountError(
        `${target} was unmounted and mounted again by other commands while umount waited`,
        "run `erofs-oci umount` again",
      );
    }
  }
}

/** umount of what the record at `target` names, or `again` when it changed while waiting. */
async function unmountRecorded(
  target: string,
  lazy: boolean,
  changing?: () => void,
): Promise<Unmounted | { again: true }> {
  // Not while a reattach works on this mount (it would see it half gone): its own lock first,
  // then (never the other way round: reattach takes its mounts' locks without waiting, under
  // the lock of all changes) the lock of all changes, for the checks across mounts.
  const lockedId = findState(target).id;
  let mountLock: Deno.FsFile;
  try {
    mountLock = await lockChangesOf(
      lockedId,
      () => info(`umount ${target}: waiting for a reattach in progress to finish`),
    );
  } catch (error) {
    // Its runtime dir went between the lookup and the lock: another umount finished it.
    if (error instanceof Deno.errors.NotFound) throw notMounted(target);
    throw error;
  }
  let lock: Deno.FsFile | undefined;
  try {
    lock = await lockMountChanges(() =>
      info(`umount ${target}: waiting for a mount or reattach in progress`)
    );
    const state = findState(target);
    // Unmounted by another command while this one waited, and mounted again: not the mount
    // whose lock is held (a reattach of the new one could work on it meanwhile). Again with
    // the new one's lock.
    if (state.id !== lockedId) return { again: true };
    // Unmounting (even lazily detaching) the outer one would leave the inner ones serving,
    // recorded, out of every path's reach.
    const inside = mountsInside(state);
    if (inside.length) {
      throw new MountError(
        `${state.target} has ${inside.length} erofs-oci mount(s) inside it: ` +
          inside.map((s) => s.target).join(", "),
        "unmount those first (`erofs-oci umount DIR`), or all at once with `erofs-oci umount --all`",
      );
    }
    changing?.();
    return await unmountLocked(state, lazy);
  } finally {
    lock?.close();
    mountLock.close();
  }
}

/** The upper dir of the writable overlay mounted at `target`, if it is one. */
function writableUpperOf(target: string): string | undefined {
  return overlayWritableDirs(readMountInfo().findLast((m) => m.mountPoint === target))?.upper;
}

async function unmountLocked(state: MountState, lazy: boolean): Promise<Unmounted> {
  const top = { lazy, mount: recordedIdentity(state) };
  let wasMounted = false;
  const upper = lazy ? writableUpperOf(state.target) : undefined;
  if (state.backend === "fuse" && !serverAlive(serverOf(state))) {
    // A dead FUSE server's keeper holds the connection open, and readers whose requests the
    // dead server had taken cannot even be killed: they keep the mount busy until the keeper
    // ends (they then fail), which ends crash recovery too. So a refused umount changes
    // nothing: it says what frees them (--lazy detaches first, and the keeper ends after).
    try {
      wasMounted = await unmountOne(state.target, top, state.target);
    } catch (error) {
      if (!(error instanceof MountError)) throw error;
      throw new MountError(
        `${state.target} is busy: files are open or a process works inside it; readers may ` +
          "wait on its dead server",
        "`erofs-oci reattach DIR` lets waiting readers finish (close the others: `fuser -vm " +
          "DIR`), or `erofs-oci umount --lazy DIR` ends them with an error",
      );
    }
  } else if (upper !== undefined) {
    // Busy, a writable overlay detached lazily goes on writing to its --upper until its files
    // are closed, unseen: a mount given that --upper meanwhile (nothing can see it in use) would
    // share it with it. A plain umount first; said when only the lazy one could.
    try {
      wasMounted = await unmountOne(state.target, { ...top, lazy: false }, state.target);
    } catch (error) {
      if (!(error instanceof MountError)) throw error;
      wasMounted = await unmountOne(state.target, top, state.target);
      warn(
        `${state.target} was detached with files still open: its --upper ${upper} stays in ` +
          "use (written to) until they are closed; do not give it to another mount before",
      );
    }
  } else {
    wasMounted = await unmountOne(state.target, top, state.target);
  }
  if (state.overlay) {
    for (const layer of [...state.layers].reverse()) {
      await unmountOne(layer.layerDir, { lazy }, state.target);
    }
  }
  const server = serverOf(state);
  if (serverAlive(server)) {
    await stopServer(state.id, server);
  } else {
    // Our server is gone (killed, or another tool's server took the devices over through
    // reattach): release the devices and recovery files ourselves.
    await releaseOrphanedDevices(state);
  }
  // Also after stopServer: a server it had to kill leaves its FUSE keeper (nothing else ends
  // it) and its FUSE mounts behind.
  if (state.backend === "fuse") {
    await stopFuseKeeper(state.id);
    await detachDeadFuseMounts(state.id, state.target);
  }
  // Tests: the mounts and the server are gone, the record not yet.
  await testHold("umount-record");
  removeMountDir(state.id);
  pruneStateDir();
  return { state, wasMounted };
}

/**
 * Removes the index copies only this mount (or none) still named (lib/mount/index_cache.ts)
 * and kept blobs past their bound. Not in a state or recovery directory another user can
 * change (said once, the unmount done): what root would remove there, or keep, would be that
 * user's choice.
 */
function pruneStateDir(): void {
  try {
    pruneIndexCache();
    // Tables a full state dir could not take are in the runtime dir (mount_resolve.ts).
    pruneKeptBlobs(RUNTIME_ROOT, () => referenceText());
    pruneKeptBlobs(stateRoot({ create: false }), () => referenceText());
  } catch (error) {
    // A dir not root's alone, records past their bound: the unmount is done all the same.
    if (!(error instanceof UserError)) throw error;
    warn(`nothing pruned: ${error.message}${error.hint ? `; ${error.hint}` : ""}`);
  }
}

/**
 * The recorded mounts stacked on `state`'s mount (deepest first): their mount's parent chain in
 * mountinfo reaches it. A record whose target only lies below it by path (mounted before it and
 * now covered, or gone) is not one: it does not keep `state`'s mount busy.
 */
function mountsInside(state: MountState, mounts = readMountInfo()): MountState[] {
  const prefix = `${state.target.replace(/\/+$/, "")}/`;
  const byId = new Map(mounts.map((entry) => [entry.id, entry]));
  const own = recordedIdentity(state);
  const ownId = own && mounts.find((m) => isMount(m, own))?.id;
  const stackedOnState = (inner: MountState) => {
    const identity = recordedIdentity(inner);
    let entry = identity && mounts.find((m) => isMount(m, identity));
    if (own === undefined || entry === undefined) {
      // Older records without mount ids: still mounted where they say.
      return mounts.some((m) => m.mountPoint === inner.target);
    }
    for (let hops = 0; entry && hops < mounts.length; hops++) {
      if (entry.parentId === ownId) return true;
      entry = byId.get(entry.parentId);
    }
    return false;
  };
  return readStates()
    .filter((s) => s.id !== state.id && s.target.startsWith(prefix))
    .filter(stackedOnState)
    .sort((a, b) => b.target.length - a.target.length);
}
