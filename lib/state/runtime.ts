/**
 * Runtime state of active mounts under /run/erofs-oci (created on demand, so the first mount
 * after boot works like every other). One directory per mount holds `state.json`, the server
 * log and the control socket.
 */
import { waitAtMost } from "../source/abortable.ts";
import type { ChunkTableSpec } from "../verify/layer_tables.ts";
import { MountError } from "../errors.ts";
import type { IndexRecord } from "../gzip/index_record.ts";
import { closeFd, Errno, SysError } from "../../ffi/libc.ts";
import { warn } from "../log.ts";
import { changeableBy } from "../../ffi/trusted_path.ts";
import { readRegularFileSync, readSmallFile } from "../../ffi/files.ts";
import { realPathTrusted } from "../../ffi/path_resolve.ts";
import { pidfdOpen, pidfdSendSignal } from "../../ffi/process.ts";

export const RUNTIME_ROOT = Deno.env.get("EROFS_OCI_RUNTIME_DIR") ?? "/run/erofs-oci";
const MOUNTS_DIR = `${resolved(RUNTIME_ROOT)}/mounts`;

/**
 * `path` with the symlinks of its existing part resolved: mounts under the runtime dir are
 * unmounted without following symlinks (see unmount_pinned.ts), so a root such as
 * /var/run/erofs-oci (/var/run is a symlink to /run) is resolved once, here.
 */
function resolved(path: string): string {
  const parts = path.split("/");
  for (let end = parts.length; end > 1; end--) {
    try {
      return [Deno.realPathSync(parts.slice(0, end).join("/")), ...parts.slice(end)].join("/");
    } catch { /* not there yet: try the parent */ }
  }
  return path;
}

/**
 * Durable state (survives reboots of the runtime dir): index files of tar layers fetched from
 * registries live in `STATE_ROOT/index/LAYER/`, where reattach finds them again.
 */
export const STATE_ROOT = Deno.env.get("EROFS_OCI_STATE_DIR") ?? "/var/lib/erofs-oci";
export const INDEX_CACHE_DIR = `${STATE_ROOT}/index`;
/**
 * Indexes `mount --index-missing` made on this host, `LAYER/` each: the only copy of them, so
 * not under INDEX_CACHE_DIR, whose unreferenced directories are pruned.
 */
export const INDEXED_HERE_DIR = `${STATE_ROOT}/indexed-here`;

/** Memory cache of one mount's server unless `--cache-size` says otherwise: 32 MiB keeps the
 * server under 150 MB RSS (Deno itself is ~70 MB; see docs/benchmarks.md). */
export const DEFAULT_MOUNT_CACHE_BYTES = 32 << 20;
/** Bytes a layer's memory cache holds at least, whatever the mount's --cache-size. */
export const MIN_LAYER_CACHE_BYTES = 4 << 20;

/** Where one layer's bytes come from; also what reattach rebuilds a server from. */
/**
 * What statfs and stat said of an EROFS mounted from a layer (lib/recovery/erofs_identity.ts
 * ErofsIdentity, its 64-bit numbers as decimal strings): a FUSE reattach serves the layer only
 * when its image has the same.
 */
export interface StoredErofsIdentity {
  blockSizeBytes: number;
  blocks: string;
  inodes: string;
  fsid?: string;
  rootMtimeMs?: number[];
}

export type LayerSpec =
  | {
    kind: "local";
    path: string;
    sizeBytes: number;
    /**
     * An OCI layout blob or a local tar file: opened without following symlinks and verified
     * before serving — hashed whole, or, served through a tar index with piece digests, each
     * piece as it is read (as a registry layer's) after the first one is checked at open.
     */
    digest?: string;
    /**
     * A local tar file whose digest `mount` took from the one index of the file's size,
     * unhashed: a mismatch says the index is another file's (or the file changed).
     */
    digestFromIndex?: boolean;
    /** A tar or tar+gzip layout blob: served through its index, as a registry's. */
    tarIndex?: TarIndexSpec;
  }
  | {
    kind: "registry";
    registry: string;
    repository: string;
    reference: string;
    platform: string;
    layerIndex: number;
    digest: string;
    mediaType: string;
    sizeBytes: number;
    plainHttp: boolean;
    /**
     * An ordinary tar+gzip layer served as [meta][tar] through its index files (kept in a
     * durable place: reattach opens them again).
     */
    tarIndex?: TarIndexSpec;
    /** The layer's chunk-digest table: every byte fetched is checked against it. */
    chunkTable?: ChunkTableSpec;
    /**
     * The EROFS block size in the superblock `mount` checked (EROFS layers): the NBD device's
     * block size is chosen from it without reading the layer first. Only the device's geometry
     * depends on it (a wrong one fails the mount); the kernel reads the verified superblock.
     */
    erofsBlockBytes?: number;
  };

/**
 * Whether every byte read through `index` is checked against its piece digests (an index made
 * by `erofs-oci index`), so the blob under it needs no whole-blob hash before serving.
 */
export function readsCheckedByPieces(index: TarIndexSpec | undefined): boolean {
  return index?.pieces !== undefined && index.record?.pieces !== undefined;
}

/**
 * Index files of a tar layer. `record` binds them to the layer (made by `erofs-oci index`);
 * without it (files from erofs-utils) nothing ties them to the blob and reads are unverified.
 */
export const TAR_INDEX_ORIGINS = ["here", "registry", "dir", "files"] as const;
export type TarIndexOrigin = typeof TAR_INDEX_ORIGINS[number];

export interface TarIndexSpec {
  meta: string;
  zinfo?: string;
  pieces?: string;
  record?: IndexRecord;
  /**
   * Where the index came from: made on this host from bytes checked against the layer digest
   * ("here"), or from elsewhere (the registry's referrers, --index DIR, --tarindex), whose piece
   * digests and offsets nothing binds to the layer digest.
   */
  origin?: TarIndexOrigin;
  /**
   * How the device lays the layer out (lib/mount/tar_layout.ts): "512" = [meta][tar] as
   * erofs-utils, "4k" = re-laid out for kernels before 6.4. Unset: chosen for this kernel.
   */
  layout?: "512" | "4k";
}

/** Everything the server needs to serve one mount (sent over its stdin, never to disk). */
export interface MountSpec {
  id: string;
  target: string;
  image: string;
  manifestDigest?: string;
  backend: "nbd" | "fuse";
  cacheBytes: number;
  layers: LayerSpec[];
  credentials?: { username: string; password: string };
  upper?: string;
  work?: string;
  /**
   * Reattach: per layer, the connected device to RECONFIGURE (instead of CONNECT) and the
   * backend identifier (recovery file path) it was connected with.
   */
  reattach?: { index: number; backendId: string; expect?: StoredErofsIdentity }[];
  /**
   * Reattach while the registry is unreachable: report ready at once, then retry with backoff
   * until each layer's blob answers (and matches), and only then RECONFIGURE its device.
   * Readers keep waiting in the kernel meanwhile.
   */
  awaitSource?: boolean;
  /** `mount --metrics-listen` (unix:PATH or tcp:HOST:PORT): the server answers scrapes there. */
  metricsListen?: string;
  /** `--log-format json` of the mount: every line of the server log is one JSON object. */
  logFormat?: "json";
  /**
   * The mount's disk cache options; a server takes them over its inherited environment, so one
   * `reattach` starts (run with an environment of its own) keeps them too.
   */
  diskCache?: DiskCacheSettings;
}

/** `mount --disk-cache-size` / `--no-disk-cache` (maxBytes 0), `--disk-cache-keep-free`, `--fetch-all`. */
export interface DiskCacheSettings {
  /** EROFS_OCI_CACHE_DIR (unset: the default directory). */
  dir?: string;
  /** Unset: the default bound; 0: no disk cache. */
  maxBytes?: number;
  keepFreeBytes?: number;
  fetchAll?: boolean;
}

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
  /** Per layer: the block device or file EROFS is mounted from and where it is mounted. */
  layers: {
    digest?: string;
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

export function mountDir(id: string): string {
  return `${MOUNTS_DIR}/${id}`;
}

export function controlSocketPath(id: string): string {
  return `${mountDir(id)}/control.sock`;
}

export function logPath(id: string): string {
  return `${mountDir(id)}/server.log`;
}

/** How many logs of servers that failed to start are kept (the oldest go first). */
const KEPT_FAILED_LOGS = 10;

/**
 * Copies the log of a server that failed to start out of its mount's runtime dir, which the
 * failed mount's undo removes, so an error can point at it. Returns the copy's path, or
 * undefined when there was no log to keep.
 */
export function keepFailedServerLog(id: string): string | undefined {
  const dir = `${resolved(RUNTIME_ROOT)}/failed`;
  const kept = `${dir}/${id}.server.log`;
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.copyFileSync(logPath(id), kept);
    const logs = [...Deno.readDirSync(dir)]
      .filter((entry) => entry.isFile && entry.name.endsWith(".server.log"))
      .map((entry) => ({ path: `${dir}/${entry.name}`, mtimeMs: mtimeMs(`${dir}/${entry.name}`) }))
      .sort((a, b) => b.mtimeMs - a.mtimeMs);
    for (const old of logs.slice(KEPT_FAILED_LOGS)) Deno.removeSync(old.path);
    return kept;
  } catch {
    return undefined;
  }
}

function mtimeMs(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

/**
 * Holds the lock of all mount changes of this runtime dir (mount's target check, reattach's
 * choice of work, umount's checks across mounts) until the returned file is closed: two
 * reattaches of one dead server each started a server of their own (both took the FUSE
 * connection over; the loser ran on, unrecorded, after umount), and a reattach during an
 * umount saw a mount half gone. The work on one mount holds its own lock (lockChangesOf).
 */
export function lockMountChanges(onWait: () => void = () => {}): Promise<Deno.FsFile> {
  Deno.mkdirSync(RUNTIME_ROOT, { recursive: true, mode: 0o700 });
  return lockSaying(openLockFile(`${RUNTIME_ROOT}/changes.lock`), onWait);
}

function openLockFile(path: string): Deno.FsFile {
  return Deno.openSync(path, { read: true, write: true, create: true, mode: 0o600 });
}

/** Waits for an exclusive lock on `file`, calling `onWait` once it has waited a second. */
async function lockSaying(file: Deno.FsFile, onWait: () => void): Promise<Deno.FsFile> {
  try {
    let got = false;
    const locked = file.lock(true).then(() => got = true);
    // A reattach starting servers can hold it for a while: say why nothing happens.
    await waitAtMost(locked, 1000);
    if (!got) onWait();
    await locked;
  } catch (error) {
    file.close();
    throw error;
  }
  return file;
}

/**
 * The lock of one mount's changes (`key`: its id), or of an NBD device no mount of ours owns
 * (`device-N`): reattach and umount hold it while they work on that mount, so that they take
 * turns there without holding up what they do elsewhere.
 */
function changesLockPath(key: string): string {
  return key.startsWith("device-")
    ? `${RUNTIME_ROOT}/${key}.lock`
    : `${mountDir(key)}/changes.lock`;
}

function openChangesLock(key: string): Deno.FsFile {
  return openLockFile(changesLockPath(key));
}

/** The lock of `key`'s changes if nobody holds it (undefined: held, or the mount is gone). */
export function tryLockChangesOf(key: string): Deno.FsFile | undefined {
  let file: Deno.FsFile;
  try {
    file = openChangesLock(key);
  } catch {
    return undefined; // its runtime dir is gone: an umount finished it
  }
  if (file.tryLockSync(true)) return file;
  file.close();
  return undefined;
}

/** Waits for the lock of `key`'s changes (`onWait` once it has waited a second). */
export function lockChangesOf(key: string, onWait: () => void = () => {}): Promise<Deno.FsFile> {
  return lockSaying(openChangesLock(key), onWait);
}

let runtimeRootTrusted = false;

/**
 * Refuses (as root) a runtime dir another user can change: root reads its mount records and
 * acts on them (`umount --all` unmounts what they name), and a user who made
 * EROFS_OCI_RUNTIME_DIR first (under /tmp) planted one that had root unmount a file system of
 * its choice (a helper's repro). Not there yet is fine: it is made root's, 0700.
 */
function checkRuntimeRoot(): void {
  if (runtimeRootTrusted || Deno.uid() !== 0) return;
  let changeable;
  try {
    changeable = changeableBy(resolved(RUNTIME_ROOT), true);
  } catch (error) {
    if (error instanceof SysError && error.errno === Errno.ENOENT) return;
    throw error;
  }
  if (changeable) {
    throw new MountError(
      `runtime directory ${RUNTIME_ROOT} is not root's alone: ${changeable.dir} can be changed ` +
        `by ${changeable.by}, so its mount records are not trusted`,
      "set EROFS_OCI_RUNTIME_DIR to a directory only root can change (default /run/erofs-oci)",
    );
  }
  runtimeRootTrusted = true;
}

/** Creates the runtime dir of a new mount (0700: it holds sockets and logs). */
export function createMountDir(): string {
  checkRuntimeRoot();
  Deno.mkdirSync(MOUNTS_DIR, { recursive: true, mode: 0o700 });
  Deno.chmodSync(RUNTIME_ROOT, 0o700);
  checkRuntimeRoot();
  const id = crypto.randomUUID().slice(0, 8);
  Deno.mkdirSync(mountDir(id), { mode: 0o700 });
  return id;
}

export function removeMountDir(id: string): void {
  try {
    Deno.removeSync(mountDir(id), { recursive: true });
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
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

/** The fields every reader of a record relies on, of the right types. */
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
      optional(l.device, "string") && optional(l.recoveryFile, "string")
    );
}

export function writeState(state: MountState): void {
  const file = statePath(state.id);
  Deno.writeTextFileSync(`${file}.tmp`, JSON.stringify(state, null, 2), { mode: 0o600 });
  Deno.renameSync(`${file}.tmp`, file);
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

/** Argument that marks the detached mount server in its command line. */
export const SERVER_COMMAND = "__mount-server";

/** A server process as recorded: pid, and its start time when known. */
export interface ServerProcess {
  pid: number;
  startTicks?: string;
}

/** The recorded server of a mount (the start time only when it belongs to `serverPid`). */
export function serverOf(state: MountState): ServerProcess {
  const start = state.serverStart;
  return {
    pid: state.serverPid,
    startTicks: start && start.pid === state.serverPid ? start.ticks : undefined,
  };
}

/**
 * Start time of process `pid` in clock ticks after boot (`/proc/PID/stat` field 22), or
 * undefined when there is no such process. The command name (field 2) may hold spaces and
 * parentheses, so fields are counted after its closing parenthesis.
 */
export function processStartTicks(pid: number): string | undefined {
  const stat = readProcFile(pid, "stat");
  if (!stat) return undefined;
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // rest[0] is field 3 (state), so field 22 is rest[19].
  if (rest[0] === "Z") return undefined;
  return rest[19];
}

/**
 * True when `server` is a live erofs-oci mount server: its command line carries
 * SERVER_COMMAND and, when the start time was recorded, the process started at that time, so
 * a pid reused after a crash (even by another erofs-oci server) does not count.
 */
export function serverAlive(server: ServerProcess | number): boolean {
  const { pid, startTicks } = typeof server === "number" ? { pid: server } : server;
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  const cmdline = readProcFile(pid, "cmdline");
  if (!cmdline?.split("\0").includes(SERVER_COMMAND)) return false;
  const ticks = processStartTicks(pid);
  if (ticks === undefined) return false;
  return startTicks === undefined || ticks === startTicks;
}

/**
 * SIGKILL through a pidfd that was checked to be `server` after it was opened: the signal
 * cannot reach a process that reused the pid. False when the server is already gone.
 */
export function killServer(server: ServerProcess): boolean {
  let pidfd: number;
  try {
    pidfd = pidfdOpen(server.pid);
  } catch (error) {
    if (error instanceof SysError && error.errno === Errno.ESRCH) return false;
    throw error;
  }
  try {
    if (!serverAlive(server)) return false;
    pidfdSendSignal(pidfd, SIGKILL);
    return true;
  } catch (error) {
    if (error instanceof SysError && error.errno === Errno.ESRCH) return false;
    throw error;
  } finally {
    closeFd(pidfd);
  }
}

const SIGKILL = 9;

/**
 * /proc/PID/NAME, or undefined when the process is gone (a process exiting while it is read
 * answers ESRCH). Through libc: Deno's file APIs refuse /proc without --allow-all.
 */
function readProcFile(pid: number, name: string): string | undefined {
  try {
    return readSmallFile(`/proc/${pid}/${name}`);
  } catch (error) {
    if (error instanceof SysError && error.errno === Errno.ESRCH) return undefined;
    throw error;
  }
}
