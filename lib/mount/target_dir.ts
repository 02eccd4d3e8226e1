/**
 * Checks on the mount target before anything is started, each with the fix in its hint, and
 * the pinning that keeps the target the same directory until mount(2): resolving a registry
 * and starting the server take seconds, time enough for a user who owns a parent directory to
 * swap the path for a symlink to, say, /usr/bin.
 */
import { MountError } from "../errors.ts";
import { closeFd, Errno, SysError } from "../../ffi/libc.ts";
import { listDirectory } from "../../ffi/files.ts";
import {
  type FileIdentity,
  openDirNoSymlinks,
  openDirTrusted,
  pathOfFd,
  sameInode,
  statIdentity,
  statPath,
  UntrustedSymlinkError,
} from "../../ffi/path_resolve.ts";
import { identityOf, overlayOption, readMountInfo } from "../sys/mountinfo.ts";
import { changeableBy } from "../../ffi/trusted_path.ts";
import { OVERLAY_SPECIAL } from "./overlay.ts";

/**
 * `--upper`/`--work` of a writable mount: existing directories on one file system (overlayfs
 * wants both there), checked before a server starts; the kernel's refusal only says ENOENT or
 * EINVAL about "the overlay", after the image was resolved and the server started.
 */
export function checkOverlayDirs(
  upper: string,
  work: string,
): { upper: string; work: string } {
  const checked = (option: "--upper" | "--work", dir: string) => {
    let info: ReturnType<typeof statPath>;
    try {
      info = statPath(dir);
    } catch (error) {
      if (error instanceof SysError && error.errno === Errno.ENOENT) {
        throw new MountError(
          `${option} ${dir} does not exist`,
          `create it: mkdir -p -m 0700 ${dir}`,
        );
      }
      throw new MountError(`cannot use ${option} ${dir}: ${(error as Error).message}`);
    }
    if (!info.isDirectory) throw new MountError(`${option} ${dir} is not a directory`);
    const dev = `${info.devMajor}:${info.devMinor}`;
    return { option, dev, inode: `${dev}:${info.ino}` };
  };
  const ours = [checked("--upper", upper), checked("--work", work)];
  if (ours[0].dev !== ours[1].dev) {
    throw new MountError(
      `--upper ${upper} and --work ${work} are on different file systems`,
      "overlayfs needs both on one file system: make --work a directory next to --upper",
    );
  }
  // Absolute and symlink-free: the kernel shows them as given (in /proc/mounts), and resolves
  // them again at mount(2), seconds later: no other user may be able to change what they lead to.
  const real = { upper: unswappablePath("--upper", upper), work: unswappablePath("--work", work) };
  for (const [option, dir] of [["--upper", real.upper], ["--work", real.work]]) {
    // The kernel splits its options at ',' (and lowerdir at ':') and takes '\' as an escape:
    // such a path would name another directory than the one checked here (and could swallow
    // the options after it, redirect_dir=nofollow among them).
    if (OVERLAY_SPECIAL.test(dir)) {
      throw new MountError(
        `${option} ${dir}: overlayfs cannot be given a path containing ',', ':' or '\\'`,
        "choose a directory whose path has none of them",
      );
    }
  }
  refuseOverlayDirsInUse(real);
  return real;
}

/** `device:inode` of the directory at `path`; undefined when it is gone or unreachable. */
function inodeOf(path: string): string | undefined {
  try {
    const info = statPath(path);
    return `${info.devMajor}:${info.devMinor}:${info.ino}`;
  } catch {
    return undefined;
  }
}

/** The inodes of `path` and of every directory above it. */
function ancestry(path: string): Set<string> {
  const inodes = new Set<string>();
  for (let at = path; at !== ""; at = at.slice(0, at.lastIndexOf("/"))) {
    const inode = inodeOf(at);
    if (inode !== undefined) inodes.add(inode);
  }
  return inodes;
}

/**
 * Refuses `--upper`/`--work` (their real paths, checkOverlayDirs) that overlap each other, or
 * that another overlay uses. The kernel only warns of the latter ("upperdir is in-use …
 * undefined behavior") and both mounts' changes corrupt each other; the former it refuses at
 * mount(2) with a bare EINVAL, after a server was started. Compared as directories (device and
 * inode, each with those above it: one inside the other counts): another mount may name them
 * through a symlink. Called again under the lock of all mount changes just before the overlay
 * is mounted (mount_image.ts): two mounts started together both passed the first check.
 */
export function refuseOverlayDirsInUse(real: { upper: string; work: string }): void {
  const upper = { option: "--upper", path: real.upper, inode: inodeOf(real.upper) };
  const work = { option: "--work", path: real.work, inode: inodeOf(real.work) };
  const ours = [upper, work].map((dir) => ({ ...dir, above: ancestry(dir.path) }));
  const [u, w] = ours;
  if ((u.inode && w.above.has(u.inode)) || (w.inode && u.above.has(w.inode))) {
    throw new MountError(
      `--upper ${real.upper} and --work ${real.work} overlap (one is, or is inside, the other)`,
      "overlayfs needs them apart: e.g. two sibling directories, upper/ and work/",
    );
  }
  for (const mount of readMountInfo()) {
    if (mount.fsType !== "overlay") continue;
    for (const key of ["upperdir", "workdir"]) {
      const theirs = overlayOption(mount.superOptions, key);
      if (theirs === undefined) continue;
      const theirInode = inodeOf(theirs);
      const theirAbove = ancestry(theirs);
      for (const { option, inode, path, above } of ours) {
        if (
          (theirInode !== undefined && above.has(theirInode)) ||
          (inode !== undefined && theirAbove.has(inode))
        ) {
          throw new MountError(
            `${option} ${path} is in use by the overlay mounted at ${mount.mountPoint}`,
            "give each mount an --upper and --work of its own, apart from the others'",
          );
        }
      }
    }
  }
}

/**
 * Refuses a mount target that is, or is inside, `--upper`/`--work`: the merged view would hold
 * its own mount point, writes there went under the mount (hidden), and DIR, no longer empty,
 * could not be mounted again.
 */
export function refuseTargetInOverlayDirs(target: string, real: { upper: string; work: string }) {
  const above = ancestry(target);
  for (const [option, dir] of [["--upper", real.upper], ["--work", real.work]]) {
    const inode = inodeOf(dir);
    if (inode !== undefined && above.has(inode)) {
      throw new MountError(
        `${option} ${dir} holds the mount point ${target}`,
        "keep the mount point apart from --upper and --work",
      );
    }
  }
}

/**
 * The symlink-free path of `dir` (`--upper`/`--work`), refused unless only root can change what
 * it leads to: overlayfs takes them as paths and looks them up at mount(2), seconds after this
 * check, and a user who could rename a directory on the way (or whose symlink was on it) had
 * root's overlay write its copy-ups into, or empty as its work directory, a directory of root's
 * (a helper did both, 8 times in 10). Each directory above it must belong to root and be
 * writable by no one else — or be sticky (/tmp), where others cannot rename root's entries,
 * with the next directory root's.
 */
function unswappablePath(option: "--upper" | "--work", dir: string): string {
  const fd = openTrusted(dir, `cannot use ${option} ${dir}`);
  let path: string;
  try {
    path = pathOfFd(fd);
  } finally {
    closeFd(fd);
  }
  const changeable = changeableBy(path);
  if (changeable) {
    throw new MountError(
      `${option} ${dir}: ${changeable.dir} can be changed by ${changeable.by}, who could make ` +
        `${path} lead elsewhere while it is mounted`,
      `use a directory whose parents only root can change, e.g. mkdir -m 0700 /var/lib/${
        option === "--upper" ? "upper" : "work"
      }`,
    );
  }
  return path;
}

/**
 * `dir` opened as openDirTrusted does; its refusals as MountErrors starting with `what`.
 */
function openTrusted(dir: string, what: string): number {
  try {
    return openDirTrusted(dir);
  } catch (error) {
    if (error instanceof UntrustedSymlinkError) {
      throw new MountError(`${what}: ${error.message}`, error.hint);
    }
    if (error instanceof SysError) throw new MountError(`${what}: ${error.message}`);
    throw error;
  }
}

/**
 * What a writable mount writes to `--upper` (a directory of the host's own file system, where
 * the overlay's nosuid does not apply) keeps what the image's files carry: a copy-up (any write,
 * even a `touch`) of a setuid-root program or of one with file capabilities (security.capability)
 * puts a copy there that runs as root for whoever can reach it. So some directory on the way to
 * it must be closed to other users — root's, with no search permission for others, nor for a
 * group other than root's — or its file system mounted nosuid (which ignores both). Not asked
 * with --suid: such a mount honours them itself.
 */
export function checkUpperClosed(upper: string): void {
  // The mount the directory is on, by the id statx gives (not by path: mounts stack).
  const { mountId } = statPath(upper);
  const mount = readMountInfo().find((entry) => entry.id === mountId);
  if (mount?.options.split(",").includes("nosuid")) return;
  for (let dir = upper;; dir = dir.slice(0, dir.lastIndexOf("/")) || "/") {
    const { uid, gid, mode } = statPath(dir);
    const othersSearch = (mode & 0o001) !== 0;
    const groupSearch = (mode & 0o010) !== 0 && gid !== 0;
    if (uid === 0 && !othersSearch && !groupSearch) return;
    if (dir === "/") break;
  }
  throw new MountError(
    `--upper ${upper} can be reached by other users: an image's setuid programs and files with ` +
      "capabilities copied up there would run as root for them",
    `chmod 0700 ${upper} (or a directory above it, owned by root), or use a directory on a ` +
      "file system mounted nosuid",
  );
}

/** A checked mount target, held open until the mount is made. */
export interface MountTarget {
  /** Absolute, symlink-free path, as checked (what `list` shows). */
  path: string;
  /** O_PATH descriptor of the checked directory; mount(2) goes through it. */
  fd: number;
  identity: FileIdentity;
}

/**
 * Checks that `dir` is an existing, empty directory and pins it: the absolute, symlink-free
 * path is opened without following any symlink, so later mounts land on this directory only.
 * Release the descriptor with `releaseMountTarget`.
 */
export function checkMountTarget(dir: string): MountTarget {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(dir);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new MountError(`mount point ${dir} does not exist`, `create it: mkdir -p ${dir}`);
    }
    throw new MountError(`cannot use mount point ${dir}: ${(error as Error).message}`);
  }
  if (!info.isDirectory) {
    throw new MountError(`mount point ${dir} is not a directory`);
  }
  // Not realpath: a symlink of another user's on the way would choose the directory mounted on.
  const fd = openTrusted(dir, `cannot mount on ${dir}`);
  try {
    const path = pathOfFd(fd);
    // Listed through the descriptor: the directory that will be mounted on is the one checked.
    if (listDirectory(`/proc/self/fd/${fd}`).length > 0) {
      // Something mounted there shows its files: said as what it is (a mount racing onto this
      // directory that had not recorded itself yet read as "not empty").
      const top = readMountInfo().findLast((entry) => entry.mountPoint === path);
      if (top) {
        throw new MountError(
          `mount point ${dir} is already mounted${
            isOurs(top) ? " by erofs-oci" : ""
          } (${top.fsType})`,
          "unmount it first, or mount each image on a directory of its own",
        );
      }
      throw new MountError(
        `mount point ${dir} is not empty`,
        "mount on an empty directory so no files are hidden",
      );
    }
    return { path, fd, identity: statIdentity(fd) };
  } catch (error) {
    closeFd(fd);
    throw error;
  }
}

/** What mount(2) is given for `target`: the pinned directory, not its path. */
export function pinnedPath(target: MountTarget): string {
  return `/proc/self/fd/${target.fd}`;
}

/**
 * Right before mounting: the path must still lead, without symlinks, to the pinned directory,
 * and nothing may have been mounted on it meanwhile; otherwise the mount is refused.
 */
export function recheckMountTarget(target: MountTarget): void {
  let now: FileIdentity;
  try {
    const fd = openTarget(target.path);
    try {
      now = statIdentity(fd);
    } finally {
      closeFd(fd);
    }
  } catch (error) {
    if (error instanceof MountError) throw replaced(target.path);
    throw error;
  }
  const was = target.identity;
  if (!sameInode(now, was) || now.mountId !== was.mountId) {
    throw mountedMeanwhile(target.path, was.mountId) ?? replaced(target.path);
  }
}

/**
 * A file system mounted on the directory itself since it was checked (another `mount` to the
 * same directory won the race): said as that, not as the symlink swap `replaced` warns of.
 */
function mountedMeanwhile(path: string, pinnedMountId: number): MountError | undefined {
  try {
    // Still the checked, symlink-free path: no component was swapped.
    if (Deno.realPathSync(path) !== path) return undefined;
  } catch {
    return undefined;
  }
  const top = readMountInfo().findLast((entry) => entry.mountPoint === path);
  if (!top || top.id === pinnedMountId || top.parentId !== pinnedMountId) return undefined;
  return new MountError(
    `${path} was mounted on while this mount was set up (${top.fsType}` +
      `${isOurs(top) ? ", by erofs-oci" : ""})`,
    "mount each image on a directory of its own; `erofs-oci list` shows what is mounted where",
  );
}

function isOurs(entry: { source: string; fsType: string }): boolean {
  return entry.source === "erofs-oci" || entry.source.startsWith("erofs-oci:") ||
    entry.fsType.startsWith("fuse.erofs-oci");
}

/** What a mount was made of, to know it again in mountinfo wherever its directory went. */
export interface MadeMount {
  fsType: string;
  /** mount(2)'s source: an EROFS layer's block device or file, unique to the layer. */
  source?: string;
  /** An overlay's lower dirs, top first: directories of this mount's own runtime dir. */
  lowerDirs?: string[];
}

/**
 * The mount just made on `target`: its id (mountinfo field 1) and where it is now. The newest
 * whose parent is the mount holding the pinned directory, at the checked path; without the
 * path, another mount made meanwhile on the same file system (a second `mount` or `trace` into
 * a sibling directory of /tmp) was just as new and had the same parent: the last one was taken,
 * and `umount` then unmounted that one and left ours mounted (CI: trace_interrupt_test).
 * When the directory was moved after recheckMountTarget (a user renamed a parent), mount(2)
 * still went onto the pinned directory, now elsewhere: found by what it was made of (its
 * source, an overlay's lower dirs), so its id is recorded and `umount` finds it where it went.
 */
export function newMountOn(
  target: MountTarget,
  made: MadeMount,
): (ReturnType<typeof identityOf> & { mountPoint: string }) | undefined {
  // The newest (mountinfo lists mounts in the order they were made) on the pinned directory's
  // mount: made under the lock of mount changes, onto a directory checked empty and unmounted,
  // it is ours. Not "an id absent before": the kernel hands a freed id to the next mount at
  // once, and with other mounts ending meanwhile ours got one (CI: the id went unrecorded, and
  // umount by a swapped path was refused instead of done by id).
  const candidates = readMountInfo().filter((entry) =>
    entry.parentId === target.identity.mountId && entry.fsType === made.fsType
  );
  const lowerDirs = made.lowerDirs?.join(":");
  const found = candidates.findLast((entry) => entry.mountPoint === target.path) ??
    candidates.findLast((entry) =>
      made.source !== undefined && made.fsType !== "overlay"
        ? entry.source === made.source
        : lowerDirs !== undefined && overlayOption(entry.superOptions, "lowerdir") === lowerDirs
    );
  return found && { ...identityOf(found), mountPoint: found.mountPoint };
}

export function releaseMountTarget(target: MountTarget): void {
  closeFd(target.fd);
}

/** What opening a path that no longer leads to a directory without symlinks fails with. */
const REPLACED_ERRNOS: number[] = [Errno.ELOOP, Errno.ENOENT, Errno.ENOTDIR];

function openTarget(path: string): number {
  try {
    return openDirNoSymlinks(path);
  } catch (error) {
    if (error instanceof SysError && REPLACED_ERRNOS.includes(error.errno)) {
      throw replaced(path);
    }
    throw error;
  }
}

function replaced(path: string): MountError {
  return new MountError(
    `mount point ${path} was replaced (by a symlink or another directory) while mounting`,
    "mount on a directory that no other user can rename or replace",
  );
}

/** `what` names the work, e.g. "unmounting": the message says what the user asked for. */
export function checkRoot(what = "mounting"): void {
  if (Deno.uid() !== 0) {
    throw new MountError(`${what} needs root (CAP_SYS_ADMIN)`, "run erofs-oci with sudo");
  }
}
