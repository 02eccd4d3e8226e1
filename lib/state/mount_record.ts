/**
 * The record of an active mount (`state.json` in its runtime dir): written by mount and
 * reattach, read back by list, metrics, umount and reattach.
 */
import { MountError } from "../errors.ts";
import { Errno, SysError } from "../../ffi/libc.ts";
import { warn } from "../log.ts";
import { readRegularFileSync } from "../../ffi/files.ts";
import { realPathTrusted } from "../../ffi/path_resolve.ts";
import type { DiskCacheSettings } from "./mount_spec.ts";
import { checkRuntimeRoot, mountDir, MOUNTS_DIR, writeRuntimeFile } from "./runtime_dirs.ts";
import type { ServerProcess } from "./server_liveness.ts";

/** What `list` and `umount` read back. */
export interface MountState {
  id: string;
  target: string;
  image: string;
  manifestDigest?: string;
  backend: "nbd" | "fuse";
  serverPid: number;
  /**
   * Start time of the server (`/proc/PID/stat` field 22) and the pid it belongs to: a pid
   * alone may have been reused by an unrelated process. `reattach` replaces `serverPid`; a
   * start time recorded for another pid is ignored.
   */
  serverStart?: { pid: number; ticks: string };
  createdAt: string;
  /** Mount options the tool chose (`ro`, `nosuid`, `nodev`; missing in older states). */
  options?: string[];
  /** Mount id (mountinfo field 1) of the mount at `target`, to unmount exactly that one. */
  mountId?: number;
  /**
   * That mount's source and `major:minor` when it was made: a freed id goes to the next mount,
   * so the id alone may name another's (sys/mountinfo.ts MountIdentity). Missing in older
   * records.
   */
  mountSource?: string;
  mountDevice?: string;
  /** A loop device's backing file, when the mount is on one (kernels before file-backed EROFS). */
  mountBackingFile?: string;
  /** Per layer: the block device or file EROFS is mounted from and where it is mounted. */
  layers: {
    digest?: string;
    /**
     * The disk-cache origin the layer's bytes are kept under (mount_spec.ts diskCacheOrigin):
     * `cache` names the mount on that origin's row of the digest only. Missing in records
     * written before it, and for local layers.
     */
    cacheOrigin?: string;
    blockPath: string;
    layerDir: string;
    device?: string;
    /** Recovery file (NBD backend): the device's backend identifier. */
    recoveryFile?: string;
  }[];
  overlay: boolean;
  /** Cache size the server was started with (reattach starts the new one alike). */
  cacheBytes?: number;
  /** Set by `reattach`: when a new server took over the devices. */
  reattachedAt?: string;
  /** What a server started by `reattach` is started with again (see MountSpec). */
  metricsListen?: string;
  logFormat?: "json";
  diskCache?: DiskCacheSettings;
}

/** Where mount `id`'s state is recorded (written whole, then renamed there). */
export function statePath(id: string): string {
  return `${mountDir(id)}/state.json`;
}

export function readState(id: string): MountState | undefined {
  let state: unknown;
  try {
    const bytes = readRegularFileSync(statePath(id), MAX_STATE_BYTES, "mount state");
    state = JSON.parse(new TextDecoder().decode(bytes));
  } catch (error) {
    // Absent: a mount still being set up, or a leftover.
    if (!(error instanceof SysError && error.errno === Errno.ENOENT)) sayDamaged(id, error);
    return undefined;
  }
  if (!isMountState(state)) {
    sayDamaged(id, new Error("not a mount record"));
    return undefined;
  }
  state.overlay ??= state.layers.length > 1;
  return state;
}

/** A mount state file is a few KiB; more is damage. */
const MAX_STATE_BYTES = 4 << 20;
const saidDamaged = new Set<string>();

/** Says once per process which record is damaged, so that the others are still listed. */
function sayDamaged(id: string, error: unknown): void {
  if (saidDamaged.has(id)) return;
  saidDamaged.add(id);
  warn(
    `${statePath(id)} is damaged (${(error as Error).message}): that mount is left out; ` +
      "its mount point, server and runtime dir need removing by hand",
  );
}

/**
 * Every field a reader of the record (list, metrics, umount, reattach) uses has its type: a
 * record damaged in one field (`"options": "x"`, no `backend`) made `list` and `metrics` fail
 * for every mount with an internal error.
 */
function isMountState(value: unknown): value is MountState {
  const s = value as Partial<MountState> | null;
  if (typeof s !== "object" || s === null) return false;
  const optional = (v: unknown, type: string) => v === undefined || typeof v === type;
  const isStringList = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === "string");
  return typeof s.id === "string" && typeof s.target === "string" && s.target.startsWith("/") &&
    typeof s.image === "string" && typeof s.createdAt === "string" &&
    Number.isSafeInteger(s.serverPid) && (s.backend === "nbd" || s.backend === "fuse") &&
    optional(s.overlay, "boolean") && optional(s.manifestDigest, "string") &&
    (s.options === undefined || isStringList(s.options)) &&
    (s.mountId === undefined || Number.isSafeInteger(s.mountId)) &&
    optional(s.mountSource, "string") && optional(s.mountDevice, "string") &&
    optional(s.mountBackingFile, "string") &&
    optional(s.cacheBytes, "number") && optional(s.reattachedAt, "string") &&
    optional(s.metricsListen, "string") && (s.logFormat === undefined || s.logFormat === "json") &&
    (s.serverStart === undefined ||
      (typeof s.serverStart === "object" && s.serverStart !== null &&
        Number.isSafeInteger(s.serverStart.pid) && typeof s.serverStart.ticks === "string")) &&
    (s.diskCache === undefined || (typeof s.diskCache === "object" && s.diskCache !== null)) &&
    Array.isArray(s.layers) &&
    s.layers.every((l) =>
      typeof l === "object" && l !== null && typeof l.blockPath === "string" &&
      typeof l.layerDir === "string" && optional(l.digest, "string") &&
      optional(l.cacheOrigin, "string") &&
      optional(l.device, "string") && optional(l.recoveryFile, "string")
    );
}

export function writeState(state: MountState): void {
  writeRuntimeFile(statePath(state.id), JSON.stringify(state, null, 2));
}

export function readStates(): MountState[] {
  checkRuntimeRoot();
  const states: MountState[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(MOUNTS_DIR)];
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    // The runtime dir is root's (0700: sockets, logs, credentials of recovery).
    if (error instanceof Deno.errors.PermissionDenied) {
      throw new MountError(
        `cannot read erofs-oci's mounts in ${MOUNTS_DIR}: permission denied`,
        "run erofs-oci as root (sudo)",
      );
    }
    throw error;
  }
  for (const entry of entries) {
    const state = readState(entry.name);
    // No state: a mount still being set up, or a leftover; not listed.
    if (state) states.push(state);
  }
  return states.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

/** The state of the mount at `target` (path compared after resolving symlinks). */
export function findState(target: string): MountState {
  // Resolved without another user's symlinks: through one, `umount` of a path in a user's
  // directory found (and unmounted) a mount of root's the symlink led to.
  let real: string;
  try {
    real = realPathTrusted(target);
  } catch {
    real = target;
  }
  // A relative path that no longer resolves (its parent was detached): the path it named.
  const absolute = lexicalAbsolute(target);
  const state = readStates().find((s) =>
    s.target === real || s.target === target || s.target === absolute
  );
  if (!state) throw notMounted(target);
  return state;
}

/** No mount of erofs-oci is recorded at the path (never was, or another command unmounted it). */
export class NotMountedError extends MountError {}

export function notMounted(target: string): NotMountedError {
  return new NotMountedError(
    `${target} is not mounted by erofs-oci`,
    "see active mounts with `erofs-oci list`",
  );
}

/** `path` made absolute against the working directory without the file system (no symlinks). */
function lexicalAbsolute(path: string): string {
  const parts: string[] = [];
  for (const part of (path.startsWith("/") ? path : `${Deno.cwd()}/${path}`).split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return `/${parts.join("/")}`;
}

/** The recorded server of a mount (the start time only when it belongs to `serverPid`). */
export function serverOf(state: MountState): ServerProcess {
  const start = state.serverStart;
  return {
    pid: state.serverPid,
    startTicks: start && start.pid === state.serverPid ? start.ticks : undefined,
  };
}
