/**
 * `erofs-oci mount` orchestration: start the detached server for the layers, mount EROFS on
 * what it exports (directly at the target for one layer, as an overlay of private layer
 * mounts for several), record the state; on any failure undo every step taken.
 */
import { type SpawnedServer, spawnServer, stopServer } from "./server_process.ts";
import { procStatFields } from "../../ffi/process.ts";
import { mountErofsFile, unmountErofs } from "../mount/erofs_file.ts";
import { layerDirName, mountOverlay, overlaySourceOf, visibleLowerDirs } from "../mount/overlay.ts";
import { createMountDir, mountDir, removeMountDir } from "../state/runtime_dirs.ts";
import { forgetPendingMount, notePendingMount } from "../state/pending_mount.ts";
import { diskCacheOrigin, type MountSpec } from "../state/mount_spec.ts";
import { type MountState, writeState } from "../state/mount_record.ts";
import { describeMountFlags, mountFlags, type MountTrust } from "../mount/mount_options.ts";
import {
  type MountTarget,
  newMountOn,
  pinnedPath,
  recheckMountTarget,
  refuseOverlayDirsInUse,
} from "../mount/target_dir.ts";
import { logFormat, warn } from "../log.ts";
import { mark } from "../timing.ts";
import { testHold, testPause } from "../test_pause.ts";
import { stopFuseKeeper } from "./fuse_recovery.ts";
import { killServer, serverAlive, type ServerProcess } from "../state/server_liveness.ts";
import { lockMountChanges } from "../state/change_locks.ts";
import { MountError } from "../errors.ts";
import type { HandedMetadata } from "./handed_metadata.ts";
import { every } from "../timers.ts";

export interface MountRequest extends Omit<MountSpec, "id"> {
  /** Keep the server in this process's foreground (debugging, systemd). */
  foreground?: boolean;
  /**
   * The checked target, held open: the mount goes onto this directory (or is refused when
   * the path no longer leads to it), never to where a swapped-in symlink points.
   */
  pinnedTarget?: MountTarget;
  /** setuid bits and device nodes are ignored (nosuid, nodev) unless this says otherwise. */
  trust?: MountTrust;
  /** A server spawned ahead (spawnServer with the same `foreground`); started here. */
  server?: SpawnedServer;
  /** The layers' listed metadata, fetched while the server starts (handed_metadata.ts). */
  metadata?: Promise<HandedMetadata>;
  /**
   * Aborted when the user interrupts (lib/cli/interrupt.ts): the mount stops at its next step
   * and undoes every step taken, then rejects with the signal's reason.
   */
  signal?: AbortSignal;
}

/** Mounts the layers at `request.target`; returns the recorded state. */
export async function mountImage(request: MountRequest): Promise<MountState> {
  const id = createMountDir();
  // Found by umount if this process and its server both die before the record is written.
  notePendingMount(id, request.target);
  // Only the MountSpec goes to the server (as JSON): not the descriptor, not the options.
  const {
    foreground: _foreground,
    pinnedTarget: _pinned,
    trust: _trust,
    server: spawned,
    metadata,
    signal,
    ...specFields
  } = request;
  // The server logs as this command does, and so does one `reattach` starts later.
  const spec: MountSpec = {
    ...specFields,
    id,
    logFormat: specFields.logFormat ?? (logFormat() === "json" ? "json" : undefined),
  };
  const undo: (() => Promise<void> | void)[] = [() => removeMountDir(id)];
  // A FUSE server killed before it was ready (no ready line in time) may have started its
  // keeper already (recorded or not: fuse_recovery.ts), and left its FUSE mounts in the runtime
  // dir; nothing else would end them.
  // Two steps (undone last first: the keeper, then the mounts), each tried whatever the other did.
  if (spec.backend === "fuse") {
    // Loaded on this failure only: mount's start-up does not need unmount's modules.
    undo.push(async () =>
      (await import("./unmount_image.ts")).detachDeadFuseMounts(id, spec.target)
    );
    undo.push(() => stopFuseKeeper(id));
  }
  // From the last check of the target to the state written: two mounts racing onto one
  // directory both passed the check and both mounted, stacked (the second now sees the first).
  let targetLock: Deno.FsFile | undefined;
  const lockTarget = async () => {
    // An interrupt ends the wait (another command may hold the lock for long).
    targetLock ??= await lockMountChanges(undefined, signal);
  };
  try {
    const ready = await (spawned ?? spawnServer(request.foreground ?? false)).start(
      spec,
      metadata,
      signal,
    );
    mark("cli: server ready");
    const server = { pid: ready.pid, startTicks: ready.startTicks };
    undo.push(() => stopServer(id, server));
    signal?.throwIfAborted();

    // mount(2) of a FUSE layer waits on this server (the kernel reads the superblock through
    // it), and the keeper holds the connection open: were the server to die now, or stop
    // answering and the user interrupt, mount(2) would wait for good and nothing would list
    // what was left. Ending both aborts the connection: mount(2) fails and the undo runs.
    using _guard = spec.backend === "fuse" ? guardFuseMounts(id, server, signal) : undefined;
    await testHold("mount-layers");
    const trust = request.trust ?? {};
    const pinned = request.pinnedTarget;
    const layerDirs: string[] = [];
    /** The mount on the target; its mountPoint is elsewhere when a parent was renamed. */
    let targetMount: ReturnType<typeof newMountOn>;
    const multi = ready.layers.length > 1 || spec.upper !== undefined;
    for (const [index, layer] of ready.layers.entries()) {
      const dir = multi ? `${mountDir(id)}/${layerDirName(index)}` : spec.target;
      if (multi) Deno.mkdirSync(dir, { mode: 0o700 });
      const atTarget = !multi && pinned !== undefined;
      if (atTarget) {
        await lockTarget();
        recheckMountTarget(pinned);
        await testHold("mount-target-rechecked");
      }
      await mountErofsFile(layer.blockPath, dir, {
        flags: mountFlags(trust),
        mountAt: atTarget ? pinnedPath(pinned) : undefined,
        devicesMapped: spec.layers[index].tarIndex !== undefined,
        head: layer.head === undefined
          ? undefined
          : Uint8Array.from(atob(layer.head), (c) => c.charCodeAt(0)),
      });
      mark(`cli: layer ${index} mounted`);
      const made = atTarget
        ? newMountOn(pinned, { fsType: "erofs", source: layer.blockPath })
        : undefined;
      targetMount ??= made;
      undo.push(() => unmountErofs(dir, { lazy: true, mount: made }));
      layerDirs.push(dir);
      signal?.throwIfAborted();
    }
    const writable = spec.upper !== undefined;
    if (multi) {
      if (pinned) {
        await lockTarget();
        recheckMountTarget(pinned);
        await testHold("mount-target-rechecked");
      }
      if (spec.upper !== undefined && spec.work !== undefined) {
        // Again, under the lock of all mount changes: another mount started meanwhile with the
        // same --upper passed the first check too, and both overlays were mounted.
        await lockTarget();
        refuseOverlayDirsInUse({ upper: spec.upper, work: spec.work });
      }
      // overlayfs wants the top layer first; OCI manifests list the bottom layer first.
      const lowers = visibleLowerDirs([...layerDirs].reverse());
      if (lowers.length === 1 && !writable) {
        // A read-only overlay needs two lower dirs: the one left shows over an empty one.
        const empty = `${mountDir(id)}/empty`;
        Deno.mkdirSync(empty, { mode: 0o755 });
        lowers.push(empty);
      }
      await mountOverlay(spec.target, lowers, {
        upper: spec.upper,
        work: spec.work,
        flags: mountFlags(trust, writable),
        mountAt: pinned ? pinnedPath(pinned) : undefined,
        source: overlaySourceOf(id),
      });
      const made = pinned
        ? newMountOn(pinned, { fsType: "overlay", lowerDirs: lowers })
        : undefined;
      targetMount = made;
      undo.push(() => unmountErofs(spec.target, { lazy: true, mount: made }));
      signal?.throwIfAborted();
    }

    const target = targetMount?.mountPoint ?? spec.target;
    if (target !== spec.target) {
      warn(
        `${spec.target} was moved while it was being mounted: the image is mounted at ${target}`,
      );
    }
    const state: MountState = {
      id,
      target,
      image: spec.image,
      manifestDigest: spec.manifestDigest,
      backend: spec.backend,
      serverPid: ready.pid,
      serverStart: ready.startTicks ? { pid: ready.pid, ticks: ready.startTicks } : undefined,
      createdAt: new Date().toISOString(),
      options: describeMountFlags(trust, writable),
      mountId: targetMount?.id,
      mountSource: targetMount?.source,
      mountDevice: targetMount?.device,
      mountBackingFile: targetMount?.backingFile,
      cacheBytes: spec.cacheBytes,
      metricsListen: spec.metricsListen,
      diskCache: spec.diskCache,
      logFormat: spec.logFormat,
      layers: ready.layers.map((layer, index) => ({
        digest: spec.layers[index].kind === "registry"
          ? (spec.layers[index] as { digest: string }).digest
          : undefined,
        cacheOrigin: diskCacheOrigin(spec.layers[index]),
        blockPath: layer.blockPath,
        device: layer.device,
        recoveryFile: layer.recoveryFile,
        layerDir: layerDirs[index],
      })),
      overlay: multi,
    };
    testPause("mount-before-state");
    // The server died after the last mount(2) returned: its keeper is ended, so the mount
    // could not be reattached; undone like the others.
    if (diedWhileMounting.has(id)) throw new Error("the mount server died");
    writeState(state);
    // Recorded: no longer a mount in progress (a look during its umount took it for an orphan).
    forgetPendingMount(id);
    mark("cli: state written");
    return state;
  } catch (caught) {
    // An interrupt that ended a mount(2) waiting on a stopped server is said as the interrupt.
    const error = diedError(id, caught) ?? (signal?.aborted ? signal.reason : caught);
    for (const step of undo.reverse()) {
      try {
        await step();
      } catch { /* keep undoing the rest */ }
    }
    throw error;
  } finally {
    targetLock?.close();
  }
}

/** Mounts whose server died while their layers were being mounted (see guardFuseMounts). */
const diedWhileMounting = new Map<string, { pid: number; stopped: boolean }>();

/**
 * Watches the server while the FUSE layers are mounted: on its death, or an interrupt, the
 * keeper is ended (and the server killed) so that a mount(2) waiting on it fails.
 */
function guardFuseMounts(
  id: string,
  server: ServerProcess,
  signal?: AbortSignal,
): Disposable {
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    timer.cancel();
    killServer(server);
    stopFuseKeeper(id).catch(() => {});
  };
  let stoppedSinceMs: number | undefined;
  const timer = every(200, () => {
    if (serverAlive(server)) {
      // Stopped (SIGSTOP, a debugger): mount(2) waits on it, holding the lock of all mount
      // changes, so every umount, reattach (--watch's too) and mount waited for good.
      if (!serverStopped(server.pid)) {
        stoppedSinceMs = undefined;
        return;
      }
      stoppedSinceMs ??= Date.now();
      if (Date.now() - stoppedSinceMs < STOPPED_SERVER_LIMIT_MS) return;
    }
    diedWhileMounting.set(id, { pid: server.pid, stopped: stoppedSinceMs !== undefined });
    end();
  });
  const onAbort = () => end();
  signal?.addEventListener("abort", onAbort, { once: true });
  return {
    [Symbol.dispose]() {
      timer.cancel();
      signal?.removeEventListener("abort", onAbort);
    },
  };
}

/** How long a server may stay stopped while its layers are mounted before it counts as dead. */
const STOPPED_SERVER_LIMIT_MS = 10_000;

/** True when the process is stopped (`T`) or stopped by a tracer (`t`). */
function serverStopped(pid: number): boolean {
  const state = procStatFields(pid)?.[0];
  return state === "T" || state === "t";
}

/** The error to report when the server died during guardFuseMounts (else undefined). */
function diedError(id: string, cause: unknown): MountError | undefined {
  const died = diedWhileMounting.get(id);
  if (died === undefined) return undefined;
  diedWhileMounting.delete(id);
  const what = died.stopped
    ? `was stopped for ${STOPPED_SERVER_LIMIT_MS / 1000} s (SIGSTOP, a debugger) and ended`
    : "died";
  return new MountError(
    `the mount server (pid ${died.pid}) ${what} while the layers were being mounted; nothing ` +
      "was left mounted",
    "see the server's log above or with --debug, then mount again",
    { cause },
  );
}
