/**
 * Whether a directory's path can be changed by someone other than root: for paths root keeps
 * using after it checked them (overlayfs's --upper/--work, looked up again at mount(2); the
 * runtime and state directories whose records root acts on).
 */
import { statPath } from "./path_resolve.ts";

/**
 * The first directory on the symlink-free absolute `path` (itself included when `self`) that
 * a user other than root could change, and who; undefined when only root can. A directory
 * must belong to root and be writable by no one else — or be sticky (/tmp), where others
 * cannot rename or remove root's entries, with the entry below it root's.
 */
export function changeableBy(
  path: string,
  self = false,
): { dir: string; by: string } | undefined {
  const info = statPath(path);
  if (self && (info.uid !== 0 || (info.mode & 0o022) !== 0)) {
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
    const othersWrite = (info.mode & 0o022) !== 0;
    const sticky = (info.mode & 0o1000) !== 0;
    if (info.uid !== 0 || (othersWrite && !(sticky && below === 0))) {
      return { dir, by: info.uid !== 0 ? `uid ${info.uid}` : "other users" };
    }
    if (dir === "/") return undefined;
    below = info.uid;
    dir = parentOf(dir);
  }
}

function parentOf(path: string): string {
  return path.slice(0, path.lastIndexOf("/")) || "/";
}
