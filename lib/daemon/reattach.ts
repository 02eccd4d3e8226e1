/**
 * `erofs-oci reattach`: brings NBD devices whose server died back to life without unmounting.
 * For every selected device it reads the recovery file named by /sys/block/nbdN/backend,
 * rebuilds and checks the source, starts one server per original mount and RECONFIGUREs the
 * devices with fresh sockets; blocked readers then finish. Live devices are left alone.
 */
import { MountError } from "../errors.ts";
import { procStatFields } from "../../ffi/process.ts";
import { listNbdDevices, type NbdDeviceInfo } from "../nbd/sysfs.ts";
import { startServer } from "./server_process.ts";
import { testHold } from "../test_pause.ts";
import { createMountDir, removeMountDir } from "../state/runtime_dirs.ts";
import {
  DEFAULT_MOUNT_CACHE_BYTES,
  diskCacheOrigin,
  type LayerSpec,
  type MountSpec,
} from "../state/mount_spec.ts";
import { lockMountChanges, tryLockChangesOf } from "../state/change_locks.ts";
import {
  type MountState,
  readState,
  readStates,
  serverOf,
  writeState,
} from "../state/mount_record.ts";
import { serverAlive } from "../state/server_liveness.ts";
import { readMountInfo } from "../sys/mountinfo.ts";
import { layerForRecord, registryUnreachable, unverifiedLayer } from "../recovery/layer_record.ts";
import type { Credentials } from "../oci/docker_config.ts";
import { readRecoveryFile, rewriteRecoveryFile } from "../state/recovery_store.ts";
import type { RecoveryRecord } from "../state/recovery_record.ts";
import { reattachFuseMount } from "./reattach_fuse.ts";
import { checkOpenFileLimit } from "./open_file_budget.ts";
import { failureDetail } from "./reattach_detail.ts";
import { layerOnDevice } from "./nbd_ownership.ts";

export type ReattachTarget = { device: number } | { dir: string } | { all: true };

export interface ReattachOutcome {
  device: string;
  result: "reattached" | "waiting" | "alive" | "busy" | "failed";
  detail: string;
  /** The directory of the mount an NBD device is a layer of (a FUSE mount's device is it). */
  mount?: string;
}

/**
 * The mount state (if any) whose layer nbdN is, and the layer position in it: a record naming
 * nbdN whose device has since gone to another mount is not its owner (nbd_ownership.ts).
 */
function stateOfDevice(states: MountState[], info: NbdDeviceInfo) {
  for (const state of states) {
    const layerIndex = layerOnDevice(state, info);
    if (layerIndex >= 0) return { state, layerIndex };
  }
  return undefined;
}

/** Live check for devices we have no state for (e.g. attached by erofs-utils). */
function taskAlive(tid: number | undefined): boolean {
  if (tid === undefined) return false;
  const state = procStatFields(tid)?.[0];
  return state !== undefined && state !== "Z";
}

function realPath(path: string): string {
  try {
    return Deno.realPathSync(path);
  } catch {
    return path;
  }
}

function parseDeviceName(text: string): number | undefined {
  const m = /^(?:\/dev\/)?nbd(\d+)$/.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** Turns the command's argument into a target: nbdN / /dev/nbdN, a directory, or all. */
export function reattachTarget(arg: string | undefined, all: boolean): ReattachTarget {
  if (all) return { all: true };
  if (arg === undefined) throw new MountError("say which: DEVICE, DIR or --all");
  const device = parseDeviceName(arg);
  if (device !== undefined) return { device };
  if (arg.startsWith("/dev/")) {
    throw new MountError(`${arg} is not an NBD device`, "give /dev/nbdN, a mount dir or --all");
  }
  return { dir: arg };
}

function selectDevices(target: ReattachTarget, states: MountState[]): NbdDeviceInfo[] {
  const devices = listNbdDevices();
  if ("all" in target) return devices.filter((d) => d.backend !== undefined);
  if ("device" in target) {
    const device = devices.find((d) => d.index === target.device);
    if (!device) throw new MountError(`nbd${target.device} does not exist`);
    if (device.backend === undefined) {
      throw new MountError(
        `nbd${target.device} is not connected (free device): nothing to reattach`,
        "see devices to reattach with `erofs-oci list`",
      );
    }
    return [device];
  }
  let real = target.dir;
  try {
    real = Deno.realPathSync(target.dir);
  } catch { /* compare as given */ }
  const state = states.find((s) => s.target === real || s.target === target.dir);
  if (!state) {
    throw new MountError(`${target.dir} is not mounted by erofs-oci`, "see `erofs-oci list`");
  }
  // FUSE mounts are reattached by reattachFuseMount.
  if (state.backend !== "nbd") return [];
  return devices.filter((device) => layerOnDevice(state, device) >= 0);
}

interface PlannedDevice {
  info: NbdDeviceInfo;
  backendId: string;
  layer: LayerSpec;
  credentials?: Credentials;
  state?: MountState;
  layerIndex: number;
  /** False when the registry was unreachable: the server verifies once it is back. */
  verified: boolean;
  /** The record with the credentials reattach was given, to keep once they serve. */
  newCredentials?: RecoveryRecord;
}

/** State for a device another tool mounted, so `list` and `umount` know it from now on. */
function adoptedState(
  id: string,
  planned: PlannedDevice[],
  serverPid: number,
  reattachedAt: string,
): MountState {
  const mounts = readMountInfo();
  const layers = planned.map((p) => {
    const blockPath = `/dev/nbd${p.info.index}`;
    return {
      digest: p.layer.kind === "registry" ? p.layer.digest : undefined,
      cacheOrigin: diskCacheOrigin(p.layer),
      blockPath,
      device: `nbd${p.info.index}`,
      layerDir: mounts.find((m) => m.source === blockPath)?.mountPoint ?? "",
      recoveryFile: p.backendId,
    };
  });
  const first = planned[0].layer;
  return {
    id,
    // Not mounted in this mount namespace (a container's): known by its device, which `list`
    // shows and `umount /dev/nbdN` takes. An empty target is a damaged record to every reader:
    // the server was invisible and each later `reattach --all` started another one.
    target: layers[0].layerDir || layers[0].blockPath,
    image: first.kind === "registry" ? first.reference : first.path,
    backend: "nbd",
    serverPid,
    createdAt: reattachedAt,
    layers,
    overlay: false,
    reattachedAt,
  };
}

export interface ReattachOptions {
  /** Serve a recorded image even when it is not the one mounted from the device. */
  acceptChangedImage?: boolean;
  /**
   * Registry credentials to use instead of the recorded ones (a password changed since the
   * mount); recorded for the next reattach once a server runs with them.
   */
  credentials?: Credentials;
}

/** Reattaches what `target` selects; one outcome per device. */
export async function reattach(
  target: ReattachTarget,
  options: ReattachOptions = {},
): Promise<ReattachOutcome[]> {
  const outcomes: ReattachOutcome[] = [];
  const held: Deno.FsFile[] = [];
  let work: ReattachWork;
  // What to do is chosen under the lock of all mount changes, read after it (a reattach that
  // ran meanwhile has recorded its server, now alive); the work itself (registry checks, new
  // servers: up to minutes with a registry that hangs) holds only the locks of the mounts it
  // revives, so one mount's trouble keeps neither the others nor new mounts waiting.
  const lock = await lockMountChanges();
  try {
    work = await selectWork(target, outcomes, held);
  } catch (error) {
    for (const file of held) file.close();
    throw error;
  } finally {
    lock.close();
  }
  try {
    return await reattachSelected(work, outcomes, options);
  } finally {
    for (const file of held) file.close();
  }
}

type OwnedDevice = NonNullable<ReturnType<typeof stateOfDevice>>;

/** The `mount` of an NBD device's outcome: the directory of the mount it is a layer of. */
function mountOf(state: MountState | undefined): { mount: string } | undefined {
  return state?.target ? { mount: state.target } : undefined;
}

/** The FUSE mounts and NBD devices a reattach revives, each claimed by its lock. */
interface ReattachWork {
  fuse: MountState[];
  nbd: { info: NbdDeviceInfo; owner?: OwnedDevice }[];
}

/**
 * The FUSE mounts and NBD devices `target` selects whose server is dead, each claimed by its
 * mount's lock (or, for a device no mount of ours owns, the device's): one another reattach
 * or an umount is working on is left to it, with an outcome saying so.
 */
async function selectWork(
  target: ReattachTarget,
  outcomes: ReattachOutcome[],
  held: Deno.FsFile[],
): Promise<ReattachWork> {
  const states = readStates();
  // Tests: another reattach finishes here, between this read and the claims.
  await testHold("reattach-before-claim");
  const claimed = new Set<string>();
  const claim = (key: string, device: string, mount?: string): boolean => {
    if (claimed.has(key)) return true;
    const lock = tryLockChangesOf(key);
    if (!lock) {
      outcomes.push({
        device,
        result: "busy",
        detail: "another reattach or an umount is working on it: left to that one",
        ...(mount === undefined ? {} : { mount }),
      });
      return false;
    }
    held.push(lock);
    claimed.add(key);
    return true;
  };
  const fuseStates = states.filter((s) => s.backend === "fuse");
  const fuseSelected = "all" in target
    ? fuseStates
    : "dir" in target
    ? fuseStates.filter((s) => s.target === realPath(target.dir) || s.target === target.dir)
    : [];
  // Each record is read again once its lock is held: a reattach writes its new server into the
  // record holding only that lock, so one that finished between readStates and the claim has
  // recorded a live server the first read did not show (both started a server).
  const fuse: MountState[] = [];
  for (const state of fuseSelected) {
    if (!claim(state.id, state.target)) continue;
    const fresh = readState(state.id);
    if (fresh) fuse.push(fresh);
  }
  const nbd: ReattachWork["nbd"] = [];
  for (const info of selectDevices(target, states)) {
    const name = `nbd${info.index}`;
    let owner = stateOfDevice(states, info);
    if (leftAlive(name, owner, info, outcomes)) continue;
    if (!claim(owner?.state.id ?? `device-${info.index}`, name, mountOf(owner?.state)?.mount)) {
      continue;
    }
    const now = freshDeviceInfo(info);
    owner = stateOfDevice(readStates(), now);
    // A device adopted meanwhile is recorded under a mount id of its own: its lock too.
    if (owner && !claim(owner.state.id, name, mountOf(owner.state)?.mount)) continue;
    if (leftAlive(name, owner, now, outcomes)) continue;
    nbd.push({ info, owner });
  }
  return { fuse, nbd };
}

/** True (with its outcome) when the device's server runs: left alone. */
function leftAlive(
  name: string,
  owner: OwnedDevice | undefined,
  info: NbdDeviceInfo,
  outcomes: ReattachOutcome[],
): boolean {
  // By pid and recorded start time, as everywhere else: a dead server's pid reused by another
  // process (another mount's server) is not this mount's server.
  const alive = owner ? serverAlive(serverOf(owner.state)) : taskAlive(info.pid);
  if (!alive) return false;
  outcomes.push({
    device: name,
    result: "alive",
    detail: `served by pid ${owner ? owner.state.serverPid : info.pid}, left alone`,
    ...mountOf(owner?.state),
  });
  return true;
}

/** The device as sysfs shows it now (its server's pid changes with a reattach). */
function freshDeviceInfo(info: NbdDeviceInfo): NbdDeviceInfo {
  return listNbdDevices().find((d) => d.index === info.index) ?? info;
}

async function reattachSelected(
  work: ReattachWork,
  outcomes: ReattachOutcome[],
  options: ReattachOptions,
): Promise<ReattachOutcome[]> {
  const groups = new Map<string, PlannedDevice[]>();
  for (const state of work.fuse) outcomes.push(await reattachFuseMount(state, options));

  for (const { info, owner } of work.nbd) {
    const name = `nbd${info.index}`;
    try {
      const backendId = info.backend!;
      const read = readRecoveryFile(backendId);
      const extra = read.extra;
      const fromRegistry = read.record.kind !== "LOCAL" && read.record.kind !== "TARINDEX_LOCAL";
      const record = options.credentials && fromRegistry
        ? { ...read.record, credentials: options.credentials }
        : read.record;
      const newCredentials = record === read.record ? undefined : record;
      let verified = true;
      let rebuilt: { layer: LayerSpec; credentials?: Credentials };
      try {
        rebuilt = await layerForRecord(record, extra, info.sizeBytes, {
          deviceIndex: info.index,
          acceptChangedImage: options.acceptChangedImage,
        });
      } catch (error) {
        // Registry down: the server waits for it (readers keep waiting in the kernel).
        const unverified = registryUnreachable(error)
          ? unverifiedLayer(record, extra, info.sizeBytes)
          : undefined;
        if (!unverified) throw error;
        rebuilt = unverified;
        verified = false;
      }
      const { layer, credentials } = rebuilt;
      const key = owner?.state.id ?? extra.mountId ?? `device-${info.index}`;
      const planned: PlannedDevice = {
        info,
        backendId,
        layer,
        credentials,
        state: owner?.state,
        layerIndex: owner?.layerIndex ?? 0,
        verified,
        newCredentials,
      };
      groups.set(key, [...(groups.get(key) ?? []), planned]);
    } catch (error) {
      outcomes.push({
        device: name,
        result: "failed",
        detail: `${failureDetail(error)} (left untouched)`,
        ...mountOf(owner?.state),
      });
    }
  }

  for (const planned of groups.values()) {
    planned.sort((a, b) => a.layerIndex - b.layerIndex);
    const state = planned[0].state;
    // Devices we have no state for (attached by erofs-utils) get a runtime dir of their own.
    const id = state?.id ?? createMountDir();
    const spec: MountSpec = {
      id,
      target: state?.target ?? "",
      image: state?.image ?? planned[0].layer.kind,
      manifestDigest: state?.manifestDigest,
      backend: "nbd",
      cacheBytes: state?.cacheBytes ?? DEFAULT_MOUNT_CACHE_BYTES,
      layers: planned.map((p) => p.layer),
      credentials: planned.find((p) => p.credentials)?.credentials,
      reattach: planned.map((p) => ({ index: p.info.index, backendId: p.backendId })),
      awaitSource: planned.some((p) => !p.verified),
      metricsListen: state?.metricsListen,
      diskCache: state?.diskCache,
      logFormat: state?.logFormat,
    };
    try {
      checkOpenFileLimit("nbd", spec.layers.length, "this mount");
      const ready = await startServer(spec, false);
      await testHold("reattach-before-state");
      const reattachedAt = new Date().toISOString();
      // The start time makes liveness checks exact (a reused pid is not taken for it).
      const serverStart = ready.startTicks
        ? { pid: ready.pid, ticks: ready.startTicks }
        : undefined;
      writeState({
        ...(state ?? adoptedState(id, planned, ready.pid, reattachedAt)),
        serverPid: ready.pid,
        serverStart,
        reattachedAt,
      });
      for (const p of planned) {
        if (p.newCredentials) rewriteRecoveryFile(p.backendId, p.newCredentials);
      }
      for (const p of planned) {
        outcomes.push(
          ready.waiting
            ? {
              device: `nbd${p.info.index}`,
              result: "waiting",
              detail: `registry unreachable: server pid ${ready.pid} retries with backoff ` +
                "and reattaches when it is back; readers keep waiting",
              ...mountOf(state),
            }
            : {
              device: `nbd${p.info.index}`,
              result: "reattached",
              detail: `new server pid ${ready.pid}`,
              ...mountOf(state),
            },
        );
      }
    } catch (error) {
      if (!state) removeMountDir(id);
      for (const p of planned) {
        outcomes.push({
          device: `nbd${p.info.index}`,
          result: "failed",
          detail: failureDetail(error),
          ...mountOf(state),
        });
      }
    }
  }
  return outcomes.sort((a, b) => a.device.localeCompare(b.device, "en", { numeric: true }));
}
