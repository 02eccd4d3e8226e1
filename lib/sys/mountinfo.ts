/**
 * /proc/self/mountinfo, the way to ask about mounts without touching them: a stat() of a FUSE
 * mount whose server is wedged would hang, reading this file never does.
 * Format: proc(5) — `id parent major:minor root mountpoint options [optional…] - fstype source super`.
 */
import { readSmallFile } from "../../ffi/files.ts";

export interface MountEntry {
  id: number;
  parentId: number;
  /** Device of the mounted file system (`0:N` for FUSE and file-backed EROFS). */
  major: number;
  minor: number;
  mountPoint: string;
  /** Per-mount options (`rw,nosuid,nodev,relatime`). */
  options: string;
  fsType: string;
  source: string;
  superOptions: string;
}

/** Every mount in this process's namespace, in mount order. */
export function readMountInfo(file = "/proc/self/mountinfo"): MountEntry[] {
  // Through libc: Deno's file APIs refuse /proc without --allow-all, which we do not ask for.
  const text = readSmallFile(file, 16 << 20) ?? "";
  return text.split("\n").filter((line) => line).map(parseLine);
}

/** The last (topmost) mount on `mountPoint` (an absolute path, no trailing slash). */
export function findMount(mountPoint: string): MountEntry | undefined {
  const wanted = normalize(mountPoint);
  return readMountInfo().findLast((entry) => entry.mountPoint === wanted);
}

/** True when something is mounted on `mountPoint`. */
export function isMountPoint(mountPoint: string): boolean {
  return findMount(mountPoint) !== undefined;
}

/**
 * What tells one mount from another over time. The kernel hands a freed mount id to the next
 * mount at once (the lowest free one), so an id alone names whatever was mounted last after
 * ours went (a plain `umount DIR`): `erofs-oci umount DIR` then unmounted another program's
 * EROFS mount elsewhere. Its source and device, seen when it was made, must agree too.
 */
export interface MountIdentity {
  id: number;
  fsType?: string;
  /** mount(2)'s source as mountinfo shows it (a layer's file or device, an overlay's name). */
  source?: string;
  /** `major:minor` of the mounted file system. */
  device?: string;
  /**
   * A loop device's backing file: loop devices are handed out lowest free first too, so a
   * plain `mount -o loop` after ours went got our id, `/dev/loopN` and `7:N` (kernels before
   * file-backed EROFS mount a FUSE layer through one).
   */
  backingFile?: string;
  /** Where it must be mounted (records older than the source: `umount` found it by id alone). */
  mountPoint?: string;
  /**
   * What it must be made of, for records older than the source: a layer's file or device (or a
   * loop device's backing file), or an overlay's source or one of its lower dirs.
   */
  madeFrom?: string[];
}

/** The identity of a mount seen in mountinfo, to be recorded and found again by isMount. */
export function identityOf(
  entry: MountEntry,
): Required<Pick<MountIdentity, "fsType" | "source" | "device">> & MountIdentity {
  return {
    id: entry.id,
    fsType: entry.fsType,
    source: entry.source,
    device: deviceOf(entry),
    backingFile: loopBackingFile(entry.source),
  };
}

/** True when `entry` is the mount `identity` names (the parts it has). */
export function isMount(entry: MountEntry, identity: MountIdentity): boolean {
  return entry.id === identity.id &&
    (identity.fsType === undefined || entry.fsType === identity.fsType) &&
    (identity.source === undefined || entry.source === identity.source) &&
    (identity.device === undefined || deviceOf(entry) === identity.device) &&
    (identity.backingFile === undefined ||
      loopBackingFile(entry.source) === identity.backingFile) &&
    (identity.mountPoint === undefined || entry.mountPoint === identity.mountPoint) &&
    (identity.madeFrom === undefined || madeOfAny(entry, identity.madeFrom));
}

function madeOfAny(entry: MountEntry, paths: string[]): boolean {
  const lower = entry.fsType === "overlay"
    ? (overlayOption(entry.superOptions, "lowerdir") ?? "").split(":")
    : [loopBackingFile(entry.source)];
  return [entry.source, ...lower].some((path) => path !== undefined && paths.includes(path));
}

/** The source an overlay of mount `id` is mounted with (mountinfo's source field). */
export function overlaySourceOf(id: string): string {
  return `erofs-oci:${id}`;
}

function deviceOf(entry: MountEntry): string {
  return `${entry.major}:${entry.minor}`;
}

/** The recorded parts of a mount record (lib/state/mount_record.ts) that name its mount. */
export interface RecordedMount {
  id: string;
  target: string;
  layers: { blockPath: string; layerDir: string }[];
  mountId?: number;
  mountSource?: string;
  mountDevice?: string;
  mountBackingFile?: string;
  overlay: boolean;
}

/** The identity a record's mount is found by, or undefined in records older than the id. */
export function recordedIdentity(record: RecordedMount): MountIdentity | undefined {
  if (record.mountId === undefined) return undefined;
  const identity = {
    id: record.mountId,
    fsType: record.overlay ? "overlay" : "erofs",
    source: record.mountSource,
    device: record.mountDevice,
    backingFile: record.mountBackingFile,
  };
  if (record.mountSource !== undefined) return identity;
  // Written by an erofs-oci before the source was recorded: at its target, made of its layers.
  return {
    ...identity,
    mountPoint: record.target,
    madeFrom: record.overlay
      ? [overlaySourceOf(record.id), ...record.layers.map((layer) => layer.layerDir)]
      : record.layers.slice(0, 1).map((layer) => layer.blockPath),
  };
}

/**
 * Whether a recorded mount (lib/state/mount_record.ts) is still there: the mount of its
 * identity (found wherever it is, as `umount` finds it), or, in records older than the id,
 * anything mounted on its target. A plain `umount DIR`, or an erofs-oci umount killed
 * half-way, leaves the record without its mount.
 */
export function recordedMountPresent(
  record: RecordedMount,
  mounts: MountEntry[] = readMountInfo(),
): boolean {
  return recordedMount(record, mounts) !== undefined;
}

/** The mount a record names (see recordedMountPresent), if it is still there. */
export function recordedMount(
  record: RecordedMount,
  mounts: MountEntry[] = readMountInfo(),
): MountEntry | undefined {
  const identity = recordedIdentity(record);
  if (identity === undefined) return mounts.findLast((m) => m.mountPoint === record.target);
  return mounts.find((m) => isMount(m, identity));
}

function parseLine(line: string): MountEntry {
  const fields = line.split(" ");
  const dash = fields.indexOf("-", 6);
  const [major, minor] = fields[2].split(":").map(Number);
  return {
    id: Number(fields[0]),
    parentId: Number(fields[1]),
    major,
    minor,
    mountPoint: unescape(fields[4]),
    options: fields[5],
    fsType: fields[dash + 1],
    source: unescape(fields[dash + 2]),
    superOptions: fields[dash + 3] ?? "",
  };
}

/** mountinfo escapes space, tab, newline and backslash as `\ooo`. */
function unescape(field: string): string {
  return field.replace(
    /\\([0-7]{3})/g,
    (_, octal: string) => String.fromCharCode(parseInt(octal, 8)),
  );
}

function normalize(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  return trimmed === "" ? "/" : trimmed.replace(/\/{2,}/g, "/");
}

/** An option of an overlay mount's super options (mountinfo escapes \, space, tab, newline). */
export function overlayOption(superOptions: string, key: string): string | undefined {
  const match = new RegExp(`(?:^|,)${key}=((?:\\\\,|[^,])*)`).exec(superOptions);
  return match?.[1].replace(/\\([0-7]{3})/g, (_, octal) => String.fromCharCode(parseInt(octal, 8)))
    .replace(/\\,/g, ",");
}

/** A writable overlay's `--upper` and `--work` (upperdir, workdir), if `entry` is one. */
export function overlayWritableDirs(
  entry: MountEntry | undefined,
): { upper: string; work: string } | undefined {
  if (entry?.fsType !== "overlay") return undefined;
  const upper = overlayOption(entry.superOptions, "upperdir");
  const work = overlayOption(entry.superOptions, "workdir");
  return upper === undefined || work === undefined ? undefined : { upper, work };
}

/** The file a loop device source (`/dev/loopN`) is backed by, or undefined for other sources. */
export function loopBackingFile(source: string): string | undefined {
  const loop = /^\/dev\/(loop\d+)$/.exec(source)?.[1];
  if (loop === undefined) return undefined;
  return readSmallFile(`/sys/block/${loop}/loop/backing_file`)?.trim() || undefined;
}
