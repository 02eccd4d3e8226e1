/**
 * A work directory owned by a live process (convert's layer images, index --push's files, a
 * trace's mount point): made 0700 and held under an exclusive flock(2) on its own descriptor for
 * the process's life. The kernel drops the lock when the process dies, however it dies (the OOM
 * killer, kill -9), where no clean-up code runs; the next command that makes one with the same
 * prefix in the same directory removes those nobody holds any more, which nothing else would
 * ever remove (a killed convert left gigabytes of layer images in --tmpdir).
 *
 * Everything goes through descriptors, never by path: the parent may be /tmp, where any user can
 * pre-create a name with our prefix (a directory of theirs, a symlink to one of root's). A
 * directory is swept only when it is really one (O_DIRECTORY | O_NOFOLLOW), ours (our uid),
 * still the one under that name, and its lock could be taken; the walk inside stays on its
 * mount and never follows a symlink.
 */
import {
  AT_REMOVEDIR,
  closeFd,
  cstr,
  Errno,
  errno,
  libc,
  O_CLOEXEC,
  O_DIRECTORY,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_RDONLY,
  SysError,
} from "./libc.ts";
import { listDirectory } from "./files.ts";
import { openDirTrusted, pathOfFd, sameInode, statIdentity } from "./path_resolve.ts";
import { entryChangeableBy } from "./trusted_path.ts";
import { UserError } from "../lib/errors.ts";

/** sys/file.h */
const LOCK_EX = 2, LOCK_NB = 4;
/**
 * The random part of a work directory's name: 12 hex digits. A sweep takes only names of
 * exactly this form, never another directory that merely starts with the prefix (tests and
 * users name theirs `erofs-oci-convert-layout-…`; Deno's temporary names end in 16 digits).
 */
const RANDOM_DIGITS = 12;
/** Directories swept by one start, and same-prefix names looked at: a start stays cheap. */
const MAX_SWEPT_PER_START = 8;
const MAX_LOOKED_AT_PER_START = 64;
/** Deeper than any work directory erofs-oci makes: a walk past it gives up (nothing removed). */
const MAX_DEPTH = 16;
/** Passes of the final removal: a file made meanwhile by a write already on its way. */
const REMOVAL_PASSES = 3;

export interface OwnedWorkDir {
  /** Its path, for the code that writes inside it by name. */
  readonly path: string;
  /**
   * Removes it and everything in it, then lets its lock go; never throws, safe to call again.
   * False when something stayed (a mount still on a directory inside).
   */
  remove(): boolean;
  /**
   * Renames `names` (files directly inside it, in this order) to the same names in the
   * directory `targetFd`, replacing what is there: a set of files made here and published
   * together. Throws SysError (naming the file) at the first that fails.
   */
  moveInto(targetFd: number, names: readonly string[], targetPath: string): void;
}

/**
 * Makes a new work directory `PREFIX<random>` in `parent` (0700), locked for this process's
 * life, after removing up to a few stale ones of the same prefix that killed processes left
 * there. `noteSwept` gets one line when any were removed. Throws (SysError, a refused path) when
 * `parent` cannot be opened or the directory cannot be made.
 * As root, a `parent` others can change is refused (UserError) unless `othersMayChangeParent`.
 */
export function makeOwnedWorkDir(
  parent: string,
  prefix: string,
  noteSwept: (line: string) => void,
  options: { othersMayChangeParent?: boolean } = {},
): OwnedWorkDir {
  const parentFd = openDirTrusted(parent);
  try {
    if (!options.othersMayChangeParent) refuseChangeableParent(parentFd, parent);
    const swept = sweepStaleWorkDirs(parentFd, prefix);
    if (swept.length > 0) {
      noteSwept(
        `removed ${swept.length} work director${swept.length === 1 ? "y" : "ies"} left in ` +
          `${parent} by killed erofs-oci commands: ${swept.join(", ")}`,
      );
    }
    const made = makeLocked(parentFd, parent, prefix);
    const path = `${parent.replace(/\/+$/, "")}/${made.name}`;
    let removed: boolean | undefined;
    return {
      path,
      remove() {
        if (removed !== undefined) return removed;
        removed = removeDirAt(parentFd, made.name, made.fd, REMOVAL_PASSES);
        closeFd(made.fd);
        closeFd(parentFd);
        return removed;
      },
      moveInto(targetFd, names, targetPath) {
        for (const name of names) {
          if (libc().renameat(made.fd, cstr(name), targetFd, cstr(name)) < 0) {
            throw new SysError("rename", errno(), `${targetPath}/${name}`);
          }
        }
      },
    };
  } catch (error) {
    closeFd(parentFd);
    throw error;
  }
}

/**
 * As root, a parent another user can change (a 0777 --tmpdir, not sticky) is refused: they
 * could rename the work dir away and put their own in its place, and root then read back and
 * pushed their files (`index --push` uploaded another user's meta image under root's
 * credentials, a helper's repro). In a sticky dir (/tmp) they cannot touch root's entries.
 */
function refuseChangeableParent(parentFd: number, parent: string): void {
  if (Deno.uid() !== 0) return;
  const changeable = entryChangeableBy(pathOfFd(parentFd));
  if (changeable === undefined) return;
  const { dir, by } = changeable;
  throw new UserError(
    `the temporary directory ${parent} can be changed by ${by} (${dir}): work files there ` +
      "could be replaced under erofs-oci",
    "use one only root can change, or a sticky one such as /tmp (--tmpdir, or TMPDIR)",
  );
}

/** mkdir, open and lock, until one holds (a sweeper may remove a new one before it is locked). */
function makeLocked(
  parentFd: number,
  parent: string,
  prefix: string,
): { name: string; fd: number } {
  for (let attempt = 0;; attempt++) {
    const name = `${prefix}${crypto.randomUUID().replaceAll("-", "").slice(0, RANDOM_DIGITS)}`;
    if (libc().mkdirat(parentFd, cstr(name), 0o700) < 0) {
      const code = errno();
      if (code === Errno.EEXIST && attempt < 8) continue;
      throw new SysError("mkdir", code, `${parent}/${name}`);
    }
    const fd = openOwnDir(parentFd, name);
    if (fd >= 0 && takeLock(fd) && sameEntry(parentFd, name, fd)) return { name, fd };
    if (fd >= 0) closeFd(fd);
    if (attempt >= 8) throw new SysError("mkdir", Errno.EEXIST, `${parent}/${name}`);
  }
}

/** Removes stale work directories of `prefix` in `parentFd`; returns the names removed. */
function sweepStaleWorkDirs(parentFd: number, prefix: string): string[] {
  let names: string[];
  try {
    names = listDirectory(`/proc/self/fd/${parentFd}`).filter((n) => isWorkDirName(n, prefix));
  } catch {
    return []; // making ours says what is wrong with the directory
  }
  const uid = Deno.uid();
  const swept: string[] = [];
  for (const name of names.slice(0, MAX_LOOKED_AT_PER_START)) {
    if (swept.length >= MAX_SWEPT_PER_START) break;
    // A symlink (ELOOP) or anything not a directory (ENOTDIR) does not open: left alone.
    const fd = openOwnDir(parentFd, name);
    if (fd < 0) continue;
    try {
      if (statIdentity(fd, "", name).uid !== uid) continue; // another user's
      if (!takeLock(fd)) continue; // a live process holds it
      if (!sameEntry(parentFd, name, fd)) continue; // renamed or replaced meanwhile
      if (removeDirAt(parentFd, name, fd, 1)) swept.push(name);
    } catch {
      /* gone meanwhile: the next start */
    } finally {
      closeFd(fd);
    }
  }
  return swept;
}

function isWorkDirName(name: string, prefix: string): boolean {
  const random = name.slice(prefix.length);
  return name.startsWith(prefix) && random.length === RANDOM_DIGITS && /^[0-9a-f]+$/.test(random);
}

function openOwnDir(parentFd: number, name: string): number {
  const flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
  return libc().openat(parentFd, cstr(name), flags, 0);
}

/** flock(LOCK_EX | LOCK_NB): false when another open description holds it. */
function takeLock(fd: number): boolean {
  for (;;) {
    if (libc().flock(fd, LOCK_EX | LOCK_NB) === 0) return true;
    if (errno() !== Errno.EINTR) return false;
  }
}

/** Whether `name` in `parentFd` is still the directory `fd` is open on. */
function sameEntry(parentFd: number, name: string, fd: number): boolean {
  try {
    return sameInode(statIdentity(fd, "", name), statIdentity(parentFd, name, name));
  } catch {
    return false;
  }
}

/**
 * Empties the directory `fd` (`name` in `parentFd`) and removes it; true once it is gone.
 * Another mount found inside (a trace's mount point left mounted) is not entered, and keeps
 * the directory.
 */
function removeDirAt(parentFd: number, name: string, fd: number, passes: number): boolean {
  let mountId: number;
  try {
    mountId = statIdentity(fd, "", name).mountId;
  } catch {
    return false;
  }
  for (let pass = 0; pass < passes; pass++) {
    emptyDir(fd, mountId, 0);
    if (libc().unlinkat(parentFd, cstr(name), AT_REMOVEDIR) === 0) return true;
    if (errno() === Errno.ENOENT) return true;
  }
  return false;
}

function emptyDir(fd: number, mountId: number, depth: number): void {
  let names: string[];
  try {
    names = listDirectory(`/proc/self/fd/${fd}`);
  } catch {
    return;
  }
  for (const name of names) {
    if (libc().unlinkat(fd, cstr(name), 0) === 0) continue;
    // unlinkat without AT_REMOVEDIR refuses a directory with EISDIR. Removed as one when empty;
    // a mount point refuses that with EBUSY and is never opened (a FUSE mount whose server is
    // gone would hang the walk); only one that is not empty is walked into.
    if (errno() !== Errno.EISDIR) continue;
    if (libc().unlinkat(fd, cstr(name), AT_REMOVEDIR) === 0) continue;
    if (errno() !== Errno.ENOTEMPTY || depth >= MAX_DEPTH) continue;
    const sub = openOwnDir(fd, name);
    if (sub < 0) continue;
    try {
      if (statIdentity(sub, "", name).mountId !== mountId) continue;
      emptyDir(sub, mountId, depth + 1);
    } catch {
      continue;
    } finally {
      closeFd(sub);
    }
    libc().unlinkat(fd, cstr(name), AT_REMOVEDIR);
  }
}
