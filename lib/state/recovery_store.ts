/**
 * Recovery files on disk, where erofs-utils 1.9 keeps them (so `mount.erofs --reattach` and
 * `erofs-oci reattach` understand each other's): one file per NBD device in a 0700 directory,
 * each 0600, named `mountnbd_XXXXXX`. What the line format cannot carry (plain HTTP, the mount
 * it belongs to) goes into a companion JSON file next to it, which erofs-utils ignores.
 */
import { Errno, FormatError } from "../errors.ts";
import { formatRecoveryLine, parseRecoveryLine, type RecoveryRecord } from "./recovery_record.ts";
import { notJsonBecause, parseJson } from "../json.ts";
import { dirSetting, type RecordsDir, rootOnlyDir } from "../../ffi/trusted_path.ts";
import { FileRefusedError, readRegularFileSync } from "../../ffi/files.ts";
import { SysError } from "../../ffi/libc.ts";

const RECOVERY: RecordsDir = {
  what: "recovery directory",
  envVar: "EROFS_OCI_RECOVERY_DIR",
  defaultPath: "/var/run/erofsmount/nbd",
};

/**
 * The recovery files' directory, refused (UntrustedDirError) when a user other than root can
 * change it or a directory above it: reattach serves what a recovery file names, and one
 * planted there, or a companion rewritten, would have it serve another image as this device.
 * `create`: made (0700) if missing.
 */
export function recoveryDir(options: { create?: boolean } = {}): string {
  return rootOnlyDir(dirSetting(RECOVERY.envVar, RECOVERY.defaultPath), RECOVERY, options);
}

/**
 * Largest recovery file or companion read: a line is a few hundred bytes, a companion with a
 * tar index's record a few KiB; a bigger one is damage, not read whole.
 */
const MAX_RECOVERY_FILE_BYTES = 1 << 20;

/** Facts erofs-oci records beside the erofs-utils line. */
export interface RecoveryExtra {
  plainHttp?: boolean;
  /** Runtime id of the erofs-oci mount the device belongs to. */
  mountId?: string;
  layerIndex?: number;
  sizeBytes?: number;
  /** Digest of a local OCI layout blob, so a reattached server verifies it again. */
  digest?: string;
  /** EROFS_OCI_REGISTRY_CONFIG_DIR of the mount (hosts.toml mirrors), when it was set. */
  registryConfigDir?: string;
  /** The layer's chunk-digest table as mounted (its file is re-checked when opened). */
  chunkTable?: { digest: string; path: string; bound: boolean };
}

function companionPath(path: string): string {
  return `${path}.erofs-oci.json`;
}

const NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/** Writes a new recovery file (exclusive create, 0600) and returns its path. */
export function writeRecoveryFile(record: RecoveryRecord, extra: RecoveryExtra = {}): string {
  const dir = recoveryDir({ create: true });
  Deno.chmodSync(dir, 0o700);
  const line = recoveryLineBytes(record);
  for (let attempt = 0; attempt < 100; attempt++) {
    const suffix = Array.from(
      crypto.getRandomValues(new Uint8Array(6)),
      (b) => NAME_CHARS[b % NAME_CHARS.length],
    ).join("");
    const path = `${dir}/mountnbd_${suffix}`;
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path, { write: true, createNew: true, mode: 0o600 });
    } catch (error) {
      if (error instanceof Deno.errors.AlreadyExists) continue;
      throw error;
    }
    writeSynced(file, line);
    // Whole or absent: a crash while writing must not leave a damaged companion.
    const companion = companionPath(path);
    const tmp = `${companion}.tmp`;
    Deno.writeTextFileSync(tmp, JSON.stringify(extra), { mode: 0o600 });
    Deno.renameSync(tmp, companion);
    return path;
  }
  throw new FormatError(`could not create a recovery file in ${dir}`);
}

/**
 * Replaces the line of the recovery file at `path` (whole or not at all: a new file renamed
 * over it), e.g. with the credentials a reattach was given; its companion stays.
 */
export function rewriteRecoveryFile(path: string, record: RecoveryRecord): void {
  const tmp = `${path}.tmp`;
  const file = Deno.openSync(tmp, { write: true, create: true, truncate: true, mode: 0o600 });
  writeSynced(file, recoveryLineBytes(record));
  Deno.renameSync(tmp, path);
}

function recoveryLineBytes(record: RecoveryRecord): Uint8Array {
  return new TextEncoder().encode(formatRecoveryLine(record) + "\n");
}

/** Writes `bytes`, syncs them to disk and closes `file`. */
function writeSynced(file: Deno.FsFile, bytes: Uint8Array): void {
  try {
    file.writeSync(bytes);
    file.syncSync();
  } finally {
    file.close();
  }
}

/**
 * Reads a recovery file and its companion (absent for files written by erofs-utils), once the
 * directory holding it is root's alone (recoveryDir has why).
 */
export function readRecoveryFile(path: string): { record: RecoveryRecord; extra: RecoveryExtra } {
  rootOnlyDir(path.slice(0, path.lastIndexOf("/")) || "/", RECOVERY);
  let text: string;
  try {
    text = readRecoveryText(path, "recovery file");
  } catch (error) {
    throw new FormatError(
      `recovery file ${path} cannot be read: ${(error as Error).message}`,
      "the device cannot be reattached without it; unmount it and mount again",
    );
  }
  let record: RecoveryRecord;
  try {
    record = parseRecoveryLine(text);
  } catch (error) {
    throw new FormatError(`recovery file ${path} is corrupt: ${(error as Error).message}`);
  }
  let companion: string;
  try {
    companion = readRecoveryText(companionPath(path), "recovery companion file");
  } catch (error) {
    // Written by erofs-utils, or lost in a crash before it was renamed into place: defaults.
    if (error instanceof SysError && error.errno === Errno.ENOENT) return { record, extra: {} };
    if (error instanceof FileRefusedError) {
      throw new FormatError(
        error.message,
        "the device cannot be served again from it; unmount its mount and mount again",
      );
    }
    // Any other failure (EIO, out of descriptors) is no sign the facts are absent: defaults
    // could serve the layer without its checks.
    throw new FormatError(
      `recovery companion file ${companionPath(path)} cannot be read: ${(error as Error).message}`,
      "the device is not served again until it can be read; try again",
    );
  }
  return { record, extra: parseRecoveryExtra(companion, companionPath(path)) };
}

/** A recovery file's text: a regular file within MAX_RECOVERY_FILE_BYTES, else refused. */
function readRecoveryText(path: string, what: string): string {
  return new TextDecoder().decode(readRegularFileSync(path, MAX_RECOVERY_FILE_BYTES, what));
}

const isString = (v: unknown) => typeof v === "string";
const isCount = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** The type each known companion field must have (tarIndex: tarindex_record.ts checks inside). */
const EXTRA_FIELDS: Record<string, (value: unknown) => boolean> = {
  plainHttp: (v) => typeof v === "boolean",
  mountId: isString,
  layerIndex: isCount,
  sizeBytes: isCount,
  digest: isString,
  registryConfigDir: isString,
  chunkTable: (v) =>
    isObject(v) && isString(v.digest) && isString(v.path) && typeof v.bound === "boolean",
  tarIndex: isObject,
};

/**
 * A companion file's facts, each known field of its type: a damaged file (not a JSON object, a
 * field of another type) is refused rather than read as defaults, which could serve a layout
 * blob unverified or the wrong registry's bytes.
 */
export function parseRecoveryExtra(text: string, path: string): RecoveryExtra {
  const damaged = (what: string) =>
    new FormatError(
      `recovery companion file ${path} is damaged: ${what}`,
      "the device cannot be served again from it; unmount its mount and mount again",
    );
  let value: unknown;
  try {
    value = parseJson(text);
  } catch (error) {
    throw damaged(notJsonBecause(error));
  }
  if (!isObject(value)) throw damaged("not a JSON object");
  for (const [field, valid] of Object.entries(EXTRA_FIELDS)) {
    if (value[field] !== undefined && !valid(value[field])) throw damaged(`bad "${field}"`);
  }
  return value as RecoveryExtra;
}

export function removeRecoveryFile(path: string): void {
  for (const p of [path, companionPath(path), `${companionPath(path)}.tmp`]) {
    try {
      Deno.removeSync(p);
    } catch { /* already gone */ }
  }
}
