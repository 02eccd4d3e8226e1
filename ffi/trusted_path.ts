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
  let below = statPath(path);
  if (self && (below.uid !== 0 || (below.mode & 0o022) !== 0)) {
    return { dir: path, by: below.uid !== 0 ? `uid ${below.uid}` : "other users" };
  }
  for (let dir = path; dir !== "/";) {
    dir = dir.slice(0, dir.lastIndexOf("/")) || "/";
    const info = statPath(dir);
    const othersWrite = (info.mode & 0o022) !== 0;
    const sticky = (info.mode & 0o1000) !== 0;
    if (info.uid !== 0 || (othersWrite && !(sticky && below.uid === 0))) {
      return { dir, by: info.uid !== 0 ? `uid ${info.uid}` : "other users" };
    }
    below = info;
  }
  return undefined;
}
