/**
 * `reattach` of a FUSE mount whose server died: its keeper still holds the /dev/fuse
 * descriptors (so the mounts stayed and readers wait), and a new server takes them over. The
 * layers come from the record the first server wrote: the same digests, so the same bytes.
 */
import {
  FUSE_TAKEOVER_ID,
  type FuseRecoveryRecord,
  localFileIdentity,
  readFuseRecovery,
  rememberFuseCredentials,
} from "./fuse_recovery.ts";
import { keeperAlive } from "../fuse/keeper.ts";
import { mountedIdentity, storedIdentity } from "../recovery/erofs_identity.ts";
import { startServer } from "./server_process.ts";
import { checkOpenFileLimit } from "./open_file_budget.ts";
import { testHold } from "../test_pause.ts";
import type { MountSpec } from "../state/mount_spec.ts";
import { type MountState, serverOf, writeState } from "../state/mount_record.ts";
import { serverAlive } from "../state/server_liveness.ts";
import type { ReattachOptions, ReattachOutcome } from "./reattach.ts";
import { failureDetail } from "./reattach_detail.ts";

export async function reattachFuseMount(
  state: MountState,
  options: ReattachOptions = {},
): Promise<ReattachOutcome> {
  const device = state.target;
  const server = serverOf(state);
  if (serverAlive(server)) {
    return { device, result: "alive", detail: `served by pid ${server.pid}, left alone` };
  }
  let record: FuseRecoveryRecord | undefined;
  try {
    record = readFuseRecovery(state.id);
  } catch (error) {
    // Named as what it is: the keeper may well be alive, and the record mended by hand.
    return { device, result: "failed", detail: failureDetail(error) };
  }
  if (!record || !keeperAlive(record.keeper)) {
    return {
      device,
      result: "failed",
      detail: "its FUSE connection is gone (no keeper): unmount it and mount again",
    };
  }
  const changedFile = options.acceptChangedImage ? undefined : changedLocalFile(record);
  if (changedFile !== undefined) {
    return {
      device,
      result: "failed",
      detail: `${changedFile} is not the file the mount was served from (replaced or ` +
        "modified since): unmount it and mount again, or reattach with --accept-changed-image " +
        "to serve it anyway (files may then read wrong)",
    };
  }
  const otherLayer = differingLayer(record, state);
  if (otherLayer !== undefined && !options.acceptChangedImage) {
    return {
      device,
      result: "failed",
      detail: `its recovery record names another layer ${otherLayer} than the mount's: ` +
        "unmount it and mount again",
    };
  }
  const spec: MountSpec = {
    ...record.spec,
    // The operator's choice: the file at the path now, not the one the mount checked.
    layers: options.acceptChangedImage
      ? record.spec.layers.map((layer) => ({ ...layer, fileId: undefined }))
      : record.spec.layers,
    id: state.id,
    backend: "fuse",
    reattach: record.spec.layers.map((layer, index) => {
      // What the kernel has mounted from each layer's FUSE file: the new server serves the
      // layer only if its image is that one (a local file replaced since is refused). A tar
      // layer's device is its index and tar, pinned by their digests and piece checks (and
      // statfs counts the tar's blocks, which its meta image's superblock does not).
      const mounted = options.acceptChangedImage || layer.tarIndex
        ? undefined
        : mountedIdentity(state.layers[index]?.blockPath ?? "");
      return {
        index,
        backendId: FUSE_TAKEOVER_ID,
        ...(mounted ? { expect: storedIdentity(mounted.identity) } : {}),
      };
    }),
    awaitSource: undefined,
    credentials: options.credentials ?? record.spec.credentials,
    // States written before these fields existed: what the first server was given.
    metricsListen: state.metricsListen ?? record.spec.metricsListen,
    logFormat: state.logFormat ?? record.spec.logFormat,
    diskCache: state.diskCache ?? record.spec.diskCache,
  };
  try {
    checkOpenFileLimit("fuse", spec.layers.length, "this mount");
    const ready = await startServer(spec, false);
    await testHold("reattach-before-state");
    if (options.credentials) rememberFuseCredentials(state.id, options.credentials);
    writeState({
      ...state,
      serverPid: ready.pid,
      serverStart: ready.startTicks ? { pid: ready.pid, ticks: ready.startTicks } : undefined,
      reattachedAt: new Date().toISOString(),
    });
    return { device, result: "reattached", detail: `new server pid ${ready.pid}` };
  } catch (error) {
    return {
      device,
      result: "failed",
      detail: failureDetail(error),
    };
  }
}

/**
 * Index of a layer the record and the mount's state disagree on: one the state knows by digest
 * that the record does not name by that digest, whatever kind the record says it is (a record
 * edited from a registry layer to a local file of another image, with a forged superblock,
 * passed and served its bytes), or one only one of them has.
 */
function differingLayer(record: FuseRecoveryRecord, state: MountState): number | undefined {
  const layers = record.spec.layers;
  const index = layers.findIndex((layer, i) =>
    state.layers[i]?.digest !== undefined && layer.digest !== state.layers[i].digest
  );
  if (index >= 0) return index;
  return layers.length === state.layers.length
    ? undefined
    : Math.min(layers.length, state.layers.length);
}

/** The path of a local layer file that is no longer the one the record says was served. */
function changedLocalFile(record: FuseRecoveryRecord): string | undefined {
  for (const [index, was] of (record.localFiles ?? []).entries()) {
    const layer = record.spec.layers[index];
    if (!was || layer?.kind !== "local") continue;
    const now = localFileIdentity(layer.path);
    const same = now !== undefined && now.dev === was.dev && now.ino === was.ino &&
      now.sizeBytes === was.sizeBytes && now.mtimeMs === was.mtimeMs;
    if (!same) return layer.path;
  }
  return undefined;
}
