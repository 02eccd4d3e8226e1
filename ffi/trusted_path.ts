/**
 * Whether a directory's path can be changed by someone other than root: for paths root keeps
 * using after it checked them (overlayfs's --upper/--work, looked up again at mount(2); the
 * runtime, state, recovery and disk cache directories whose records root acts on).
 */
import { Errno, SysError } from "./libc.ts";
import { statPath } from "./path_resolve.ts";
import { UserError } from "../lib/errors.ts";

/**
 * The first directory on the symlink-free absolute `path` (itself included when `self`) that
 * a user other than root could change, and who; undefined when only root can. A directory
 * must belong to root and be writable by no one else — or be sticky (/tmp), where others
 * cannot rename or remove root's entries, with the entry below it root's. `info`: statPath(path),
 * when the caller has it.
 */
export function changeableBy(
  path: string,
  self = false,
  info: { uid: number; mode: number; gid: number } = statPath(path),
): { dir: string; by: string } | undefined {
  if (self && (info.uid !== 0 || writableByOthers(info))) {
    return { dir: path, by: info.uid !== 0 ? `uid ${info.uid}` : "other users" };
  }
  return path === "/" ? undefined : firstChangeable(parentOf(path), info.uid);
}

/**
 * As changeableBy, for an entry root is about to make in the symlink-free absolute directory
 * `dir` (a socket): `dir` and those above it.
 */
export function entryChangeableBy(dir: string): { dir: string; by: string } | undefined {
  return firstChangeable(dir, 0);
}

/** `dir` or the first directory above it that others could change (`entryUid` owns the entry). */
function firstChangeable(
  dir: string,
  entryUid: number,
): { dir: string; by: string } | undefined {
  for (let below = entryUid;;) {
    const info = statPath(dir);
    const sticky = (info.mode & 0o1000) !== 0;
    if (info.uid !== 0 || (writableByOthers(info) && !(sticky && below === 0))) {
      return { dir, by: info.uid !== 0 ? `uid ${info.uid}` : "other users" };
    }
    if (dir === "/") return undefined;
    below = info.uid;
    dir = parentOf(dir);
  }
}

/**
 * Whether users other than root may write the directory: anyone, or its group when that is not
 * root's (gid 0 holds only root on a sane system, as uid 0 is only root: a root:root 0775
 * directory was refused as "writable by others").
 */
function writableByOthers(info: { mode: number; gid: number }): boolean {
  return (info.mode & 0o002) !== 0 || ((info.mode & 0o020) !== 0 && info.gid !== 0);
}

function parentOf(path: string): string {
  return path.slice(0, path.lastIndexOf("/")) || "/";
}

/**
 * `path` with the symlinks of its existing part resolved, so that what is checked is what is
 * used: a symlink on the way (/var/run → /run, or a user's own in /tmp, which they can point
 * elsewhere later) is followed once, here.
 */
export function resolvedPath(path: string): string {
  const parts = path.split("/");
  for (let end = parts.length; end > 1; end--) {
    try {
      return [Deno.realPathSync(parts.slice(0, end).join("/")), ...parts.slice(end)].join("/");
    } catch { /* not there yet: try the parent */ }
  }
  return path;
}

/** The first component of the absolute `path` that is a symlink now, if any. */
export function symlinkOn(path: string): string | undefined {
  let at = "";
  for (const part of path.split("/").filter((p) => p !== "")) {
    at += `/${part}`;
    try {
      if (Deno.lstatSync(at).isSymlink) return at;
    } catch {
      return undefined; // the rest does not exist
    }
  }
  return undefined;
}

/**
 * The directory a setting names, or `fallback` when the variable is unset or empty: an empty
 * one made the current directory the state dir (index copies reattach needs, left where the
 * next command run elsewhere does not look) and `/` the runtime dir's parent.
 */
export function dirSetting(envVar: string, fallback: string): string {
  return Deno.env.get(envVar) || fallback;
}

/** A directory root keeps records in, for its refusal: what it is and how it is chosen. */
export interface RecordsDir {
  /** e.g. "state directory". */
  what: string;
  /** The environment variable that names it, e.g. EROFS_OCI_STATE_DIR. */
  envVar: string;
  defaultPath: string;
}

/** A records directory (or one above it) that a user other than root can change. */
export class UntrustedDirError extends UserError {}

/**
 * Why root cannot trust the existing directory `path` (symlink-free): "D is owned by uid N" or
 * "D is writable by others" for the first directory D — `path` or one above it — that a user
 * other than root could change (changeableBy); undefined when only root can, or when not
 * running as root (other users' directories are theirs). `info`: statPath(path), when taken.
 */
export function notRootsAlone(
  path: string,
  info?: ReturnType<typeof statPath>,
): string | undefined {
  if (Deno.uid() !== 0) return undefined;
  const changeable = changeableBy(path, true, info);
  if (!changeable) return undefined;
  const { dir, by } = changeable;
  return `${dir} is ${by.startsWith("uid") ? `owned by ${by}` : "writable by others"}`;
}

/**
 * What rootOnlyDir found root's alone in this process, by the path it was given (the
 * environment's value or the default) and whether it made it: the directory it resolved to and
 * what statx said of it then. A later call checks only that the directory there is still that
 * one, root's, with the same mode: one statx instead of mkdir -p and a realpath (a readlink
 * per component) again; the state dir is asked for 4 times by one registry mount.
 */
const checkedDirs = new Map<string, { resolved: string; seen: DirSeen }>();

type DirSeen = Pick<ReturnType<typeof statPath>, "devMajor" | "devMinor" | "ino" | "uid" | "mode">;

/** Whether `resolved` is still the directory `seen` describes (removed and made again is not). */
function stillSeen(resolved: string, seen: DirSeen): boolean {
  let now;
  try {
    now = statPath(resolved);
  } catch {
    return false; // gone (or unreachable): checked again from the start
  }
  // The owner and mode too: an inode number is reused once the directory is removed.
  return now.isDirectory && now.ino === seen.ino && now.devMajor === seen.devMajor &&
    now.devMinor === seen.devMinor && now.uid === seen.uid && now.mode === seen.mode;
}

/**
 * `path` resolved (resolvedPath), once shown to be root's alone — itself and every directory
 * above it (notRootsAlone) — when running as root: what root reads there it acts on (an index
 * that decides which bytes a verified mount serves, a record naming what to unmount), and a
 * user who could write there, or rename root's directories away, could plant it. Other users'
 * processes get `path` back as is. Not there yet: made (0700) first when `create`, else
 * returned unchecked (nothing there to trust). Checked once per process while the directory
 * stays the one checked (checkedDirs): the directories above it are root's alone, so only
 * root can change what it resolves to.
 * Throws UntrustedDirError naming the directory and what to do.
 */
export function rootOnlyDir(path: string, role: RecordsDir, options: { create?: boolean } = {}) {
  if (Deno.uid() !== 0) return path;
  const key = `${options.create ? "made" : "looked"} ${path}`;
  const known = checkedDirs.get(key);
  if (known && stillSeen(known.resolved, known.seen)) return known.resolved;
  checkedDirs.delete(key);
  // realpath fails on a symlink that leads nowhere (now): the path then still holds it, and
  // where it leads later — another user's link in /tmp, flipped at will — is not what was
  // checked (an umount pruned root's index copies through one, a helper's repro). Looked at
  // before mkdir -p too, which fails on such a link ("File exists").
  const absolute = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  const refuseLink = (at: string) => {
    const link = symlinkOn(at);
    if (link === undefined) return;
    throw new UntrustedDirError(
      `${role.what} ${path} leads through the symlink ${link}, which does not lead to a ` +
        "directory now, so where it leads is not trusted",
      `make ${link} a directory, or set ${role.envVar} to a path without it`,
    );
  };
  refuseLink(resolvedPath(absolute));
  if (options.create) Deno.mkdirSync(absolute, { recursive: true, mode: 0o700 });
  const resolved = resolvedPath(absolute);
  refuseLink(resolved);
  let seen, why;
  try {
    // What is checked is what is remembered: a directory swapped in later is not that one.
    seen = statPath(resolved);
    why = notRootsAlone(resolved, seen);
  } catch (error) {
    if (error instanceof SysError && error.errno === Errno.ENOENT) return resolved;
    throw error;
  }
  if (why) {
    throw new UntrustedDirError(
      `${role.what} ${path} is not root's alone: ${why}, so what it holds is not trusted`,
      `make it root-owned and 0700, the directories above it writable by root only, or set ` +
        `${role.envVar} to such a directory (default ${role.defaultPath})`,
    );
  }
  checkedDirs.set(key, { resolved, seen });
  return resolved;
}
