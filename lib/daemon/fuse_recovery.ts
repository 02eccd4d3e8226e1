/**
 * Crash recovery of a FUSE mount: the first server hands its /dev/fuse descriptors to a keeper
 * (lib/fuse/keeper.ts) and writes `fuse-recovery.json` in the mount's runtime dir: the keeper's
 * identity, each file's mtime, and the layers and credentials to serve them again. `reattach`
 * starts a server that takes the descriptors from the keeper. A server stopping on purpose
 * removes the record first, so nothing revives a mount being unmounted.
 *
 * The keeper's pid is known only once it runs, so a server killed between the keeper's start
 * and the record would leave a keeper nothing names. `fuse-keeper.pending`, written before the
 * keeper starts and removed once the record is there, says so: stopFuseKeeper (umount, a failed
 * mount's undo, the server's own stop) then also looks for the mount's keepers by their
 * environment (keepersOwnedBy).
 */
import { closeFd, Errno, SysError } from "../../ffi/libc.ts";
import { readRegularFileSync } from "../../ffi/files.ts";
import { pidfdOpen, pidfdSendSignal, SIGKILL } from "../../ffi/process.ts";
import { FormatError, MountError, OciError } from "../errors.ts";
import { checkErofsSuperblock, EROFS_SUPER_END } from "../erofs/superblock.ts";
import type { Source } from "../source/source.ts";
import {
  keeperAlive,
  keeperOwnedBy,
  type KeeperProcess,
  keepersOwnedBy,
  startKeeper,
  takeFromKeeper,
} from "../fuse/keeper.ts";
import type { LayerExport } from "../mount/exports.ts";
import { mountDir, writeRuntimeFile } from "../state/runtime_dirs.ts";
import type { MountSpec, StoredErofsIdentity } from "../state/mount_spec.ts";
import {
  type ErofsIdentity,
  identityDifferences,
  parseStoredIdentity,
  readImageIdentity,
} from "../recovery/erofs_identity.ts";
import { testPause } from "../test_pause.ts";
import { parseJson } from "../json.ts";
import type { Credentials } from "../oci/docker_config.ts";
import { sleep } from "../timers.ts";

/** What a new server needs to take over a FUSE mount (mode 0600: it may hold a password). */
export interface FuseRecoveryRecord {
  keeper: KeeperProcess;
  /** Per layer: the FUSE file's mtime as the kernel knows it. */
  fileMtimesSec: number[];
  /** What the first server was started with (layers, credentials, cache options). */
  spec: MountSpec;
  /**
   * Per layer, for a local image file not pinned by a digest: the file as it was served, which
   * a reattach must find again (an image rebuilt with the same UUID and time has the same
   * superblock identity). Absent in records written before.
   */
  localFiles?: (LocalFileIdentity | null)[];
}

/** A local file's identity: the same inode, unmodified. */
export interface LocalFileIdentity {
  dev: number;
  ino: number;
  sizeBytes: number;
  mtimeMs: number;
}

/** `path`'s identity now; undefined when it cannot be statted. */
export function localFileIdentity(path: string): LocalFileIdentity | undefined {
  try {
    const info = Deno.statSync(path);
    return {
      dev: info.dev,
      ino: info.ino ?? 0,
      sizeBytes: info.size,
      mtimeMs: info.mtime?.getTime() ?? 0,
    };
  } catch {
    return undefined;
  }
}

/** Marks a FUSE takeover in `MountSpec.reattach` (the NBD use names a device there). */
export const FUSE_TAKEOVER_ID = "fuse-keeper";

export function fuseRecoveryPath(id: string): string {
  return `${mountDir(id)}/fuse-recovery.json`;
}

/** There while a keeper may run that `fuse-recovery.json` does not name (yet). */
export function keeperPendingPath(id: string): string {
  return `${mountDir(id)}/fuse-keeper.pending`;
}

/** Starts the keeper for the exported FUSE layers and records how to take them over. */
export async function protectFuseMount(
  spec: MountSpec,
  exports: LayerExport[],
): Promise<number> {
  const fuse = exports.map((e, index) => {
    if (!e.fuse) throw new MountError(`layer ${index} has no FUSE descriptor to keep`);
    return e.fuse;
  });
  // Before the keeper exists: whenever this server dies from here on, the cleanup looks for it.
  Deno.writeTextFileSync(keeperPendingPath(spec.id), "", { mode: 0o600 });
  const keeper = await startKeeper(fuse.map((f) => f.fd), mountDir(spec.id));
  testPause("fuse-keeper-started");
  const record: FuseRecoveryRecord = {
    keeper,
    fileMtimesSec: fuse.map((f) => f.mtimeSec),
    spec,
    localFiles: spec.layers.map((layer) =>
      layer.kind === "local" && !layer.digest ? localFileIdentity(layer.path) ?? null : null
    ),
  };
  writeFuseRecovery(spec.id, record);
  removeIfThere(keeperPendingPath(spec.id));
  return keeper.pid;
}

/** Keeps `credentials` in the mount's record for the next takeover (reattach was given them). */
export function rememberFuseCredentials(id: string, credentials: Credentials): void {
  const record = readFuseRecovery(id);
  if (!record) return;
  record.spec = { ...record.spec, credentials };
  writeFuseRecovery(id, record);
}

/** Whole or not at all (0600: it may hold credentials). */
function writeFuseRecovery(id: string, record: FuseRecoveryRecord): void {
  writeRuntimeFile(fuseRecoveryPath(id), JSON.stringify(record));
}

export function readFuseRecovery(id: string): FuseRecoveryRecord | undefined {
  let record: FuseRecoveryRecord;
  try {
    // Not waiting on a FIFO or reading a device there (damage): a regular file, bounded.
    const bytes = readRegularFileSync(fuseRecoveryPath(id), 4 << 20, "FUSE recovery record");
    record = parseJson(new TextDecoder().decode(bytes));
  } catch (error) {
    if (error instanceof SysError && error.errno === Errno.ENOENT) return undefined;
    throw new MountError(`${fuseRecoveryPath(id)} is malformed: ${(error as Error).message}`);
  }
  // Damage can leave any JSON value here (null, a number): nothing is read from it unchecked.
  if (typeof record !== "object" || record === null || Array.isArray(record)) {
    throw new MountError(`${fuseRecoveryPath(id)} is malformed`);
  }
  const { keeper } = record;
  const valid = Number.isSafeInteger(keeper?.pid) && typeof keeper.startTicks === "string" &&
    Array.isArray(keeper.fds) && keeper.fds.every((fd) => Number.isSafeInteger(fd)) &&
    Array.isArray(record.spec?.layers) && record.spec.layers.length === keeper.fds.length &&
    Array.isArray(record.fileMtimesSec) && record.fileMtimesSec.length === keeper.fds.length &&
    record.fileMtimesSec.every(Number.isFinite) &&
    (record.localFiles === undefined ||
      (Array.isArray(record.localFiles) && record.localFiles.every(isLocalFileShape))) &&
    record.spec.layers.every(isLayerSpecShape) &&
    (record.spec.cacheBytes === undefined ||
      (Number.isSafeInteger(record.spec.cacheBytes) && record.spec.cacheBytes >= 0));
  if (!valid) throw new MountError(`${fuseRecoveryPath(id)} is malformed`);
  return record;
}

/** A recorded local file's identity (or null: a layer not from a local file). */
function isLocalFileShape(value: unknown): boolean {
  const f = value as Record<string, unknown> | null;
  return f === null ||
    (typeof f === "object" && Number.isSafeInteger(f.dev) && Number.isSafeInteger(f.ino) &&
      Number.isSafeInteger(f.sizeBytes) && Number.isFinite(f.mtimeMs));
}

/** The fields a server opening a recorded layer relies on, of the right types. */
function isLayerSpecShape(value: unknown): boolean {
  const l = value as Record<string, unknown> | null;
  if (typeof l !== "object" || l === null || !Number.isSafeInteger(l.sizeBytes)) return false;
  if (l.kind === "local") return typeof l.path === "string";
  return l.kind === "registry" && typeof l.registry === "string" &&
    typeof l.repository === "string" && typeof l.digest === "string" &&
    typeof l.plainHttp === "boolean" && Number.isSafeInteger(l.layerIndex);
}

/** True when the mount can be taken over: the record is there and its keeper runs. */
export function fuseRecoverable(id: string): boolean {
  return fuseRecoveryStatus(id) === "ok";
}

/** fuseRecoverable, saying why not: no record or keeper, or a record that cannot be read. */
export function fuseRecoveryStatus(id: string): "ok" | "no keeper" | "record damaged" {
  try {
    const record = readFuseRecovery(id);
    return record !== undefined && keeperAlive(record.keeper) ? "ok" : "no keeper";
  } catch {
    return "record damaged";
  }
}

/** Per layer, a descriptor (taken from the keeper) and mtime for `ExportContext.fuseTakeover`. */
export function takeFuseDescriptors(id: string): { fd: number; mtimeSec: number }[] {
  const record = readFuseRecovery(id);
  if (!record) {
    throw new MountError("this FUSE mount has no keeper record: it cannot be taken over");
  }
  const fds = takeFromKeeper(record.keeper);
  return fds.map((fd, index) => ({ fd, mtimeSec: record.fileMtimesSec[index] }));
}

/** A stopping server: without the record, nobody (reattach --watch) revives the mount. */
export function forgetFuseRecovery(id: string): void {
  removeIfThere(fuseRecoveryPath(id));
  removeIfThere(keeperPendingPath(id));
}

function removeIfThere(path: string): void {
  try {
    Deno.removeSync(path);
  } catch { /* not there */ }
}

/**
 * Ends the keeper of a mount: the one its record names and, while `fuse-keeper.pending` is
 * there or the record is gone or damaged, any other whose environment names the mount (its
 * server died before recording it, or the record was lost).
 * With the server dead this aborts its FUSE connections: readers whose requests the dead
 * server had taken wait for an answer without being killable, and get an error instead; then
 * the mounts can be removed. A server stopping on purpose ends it too (its own descriptors keep
 * the connection until it unmounts). Signalled through a pidfd checked to be the keeper, so a
 * reused pid is never hit.
 */
export async function stopFuseKeeper(id: string): Promise<void> {
  // A record that is gone or damaged names no keeper: one may still run (found by its mark).
  let record: FuseRecoveryRecord | undefined;
  try {
    record = readFuseRecovery(id);
  } catch { /* malformed: nothing we can trust to signal */ }
  let unnamed = true;
  if (record) {
    const named = record.keeper;
    await endKeeper(named, () => keeperAlive(named));
    unnamed = false;
  }
  try {
    Deno.statSync(keeperPendingPath(id));
    unnamed = true;
  } catch { /* no keeper unrecorded */ }
  if (!unnamed) return;
  const owner = mountDir(id);
  for (const keeper of keepersOwnedBy(owner)) {
    await endKeeper(keeper, () => keeperOwnedBy(keeper, owner));
  }
}

/**
 * SIGKILL through a pidfd, if `isKeeper()` still holds once it is open; waits up to 5 s.
 * Throws when no pidfd can be had for a process that is there (out of descriptors): taking
 * that for a keeper gone would leave it holding the mount's FUSE connections.
 */
export async function endKeeper(
  keeper: { pid: number },
  isKeeper: () => boolean,
): Promise<void> {
  let pidfd: number;
  try {
    pidfd = pidfdOpen(keeper.pid);
  } catch (error) {
    if (error instanceof SysError && error.errno === Errno.ESRCH) return; // gone
    throw error;
  }
  try {
    if (!isKeeper()) return;
    pidfdSendSignal(pidfd, SIGKILL);
    const deadline = Date.now() + 5_000;
    while (isKeeper() && Date.now() < deadline) {
      await sleep(20);
    }
  } catch {
    /* exited meanwhile */
  } finally {
    closeFd(pidfd);
  }
}

/**
 * One try at the first and last bytes of a layer (and its superblock) before a takeover: a
 * registry that is down makes the takeover fail, so the caller tries again later, instead of
 * a server that answers the waiting readers with EIO.
 */
export async function checkServable(
  source: Source,
  layerIndex: number,
  mounted?: StoredErofsIdentity,
): Promise<void> {
  const expected = mounted && parseStoredIdentity(mounted);
  let image: ErofsIdentity | undefined;
  try {
    const head = await source.read(0, EROFS_SUPER_END);
    checkErofsSuperblock(head, `layer ${layerIndex}`);
    await source.read(source.size - 1, 1);
    if (expected) {
      const read = (offset: number, length: number) => source.read(offset, length);
      image = await readImageIdentity(read, source.size, `layer ${layerIndex}`, head);
    }
  } catch (error) {
    if (error instanceof FormatError) throw error;
    // The registry answered: the blob is not there (deleted, garbage-collected). Waiting for
    // it to "answer" again helps only if someone pushes the image again.
    const gone = error instanceof OciError && error.status === 404;
    throw new MountError(
      `layer ${layerIndex} cannot be read (${(error as Error).message}): readers keep waiting`,
      gone
        ? "the registry no longer has the layer: push the image again and reattach, or " +
          "unmount it (`erofs-oci umount DIR`)"
        : "reattach again once the registry answers (`reattach --watch` retries by itself)",
      { cause: error },
    );
  }
  if (!expected || !image) return;
  // A local image replaced since (same size), or a record naming another layer: its files
  // would show under the mount's names.
  const differences = identityDifferences(expected, image);
  if (differences.length > 0) {
    throw new FormatError(
      `layer ${layerIndex} is not the image mounted from it (${differences.join(", ")})`,
      "unmount it and mount again, or reattach with --accept-changed-image to serve it anyway " +
        "(files may then read wrong)",
    );
  }
}
