/**
 * umount2 that cannot be redirected by symlinks: a user who owns a parent of a mount point can
 * swap a path component for a symlink, and a plain umount2(path) would then detach whatever
 * the symlink leads to. The parent is opened with no symlink allowed anywhere, the mount is
 * matched by its mount id, and umount2 reaches it through /proc/self/fd/PARENT/NAME with
 * UMOUNT_NOFOLLOW.
 */
import { closeFd, Errno, SysError } from "../../ffi/libc.ts";
import { readSmallFile } from "../../ffi/files.ts";
import { symlinkOn } from "../../ffi/trusted_path.ts";
import { openDirNoSymlinks } from "../../ffi/path_resolve.ts";
import { MNT_DETACH, UMOUNT_NOFOLLOW } from "../../ffi/mount.ts";
import { MountError } from "../errors.ts";
import { isMount, type MountIdentity, readMountInfo } from "../sys/mountinfo.ts";
import { type SyscallResult, umountOffThread } from "../sys/mount_task.ts";

export interface UnmountOptions {
  /** MNT_DETACH: detach even while files are open. */
  lazy?: boolean;
  /**
   * The mount as it was made (its id, mountinfo field 1, and what else tells it from a later
   * one with the id: sys/mountinfo.ts MountIdentity): only that mount is unmounted, found where
   * it is now even if a parent directory was renamed since.
   */
  mount?: MountIdentity;
}

/**
 * Unmounts the mount at `target` (or the one `opts.mount` names) without following a symlink.
 * Resolves with the errno (EINVAL: nothing of ours mounted there); throws MountError when the
 * path now leads through a symlink or to another mount.
 */
export async function unmountNoFollow(
  target: string,
  opts: UnmountOptions = {},
): Promise<SyscallResult> {
  let path = normalize(target);
  const wanted = opts.mount;
  if (wanted !== undefined) {
    const entry = readMountInfo().find((e) => isMount(e, wanted));
    if (!entry) return { errno: Errno.EINVAL, call: "umount" };
    path = entry.mountPoint;
  }
  const slash = path.lastIndexOf("/");
  const parent = path.slice(0, slash) || "/";
  const name = path.slice(slash + 1);
  if (name === "" || name === "." || name === "..") return { errno: Errno.EINVAL, call: "umount" };

  let parentFd: number;
  try {
    parentFd = openDirNoSymlinks(parent);
  } catch (error) {
    throw refusal(error, target);
  }
  try {
    let mountId: number;
    try {
      const fd = openDirNoSymlinks(name, parentFd);
      try {
        mountId = fdMountId(fd);
      } finally {
        // An open descriptor on the mount would make a plain umount EBUSY.
        closeFd(fd);
      }
    } catch (error) {
      throw refusal(error, target);
    }
    if (mountId === fdMountId(parentFd)) return { errno: Errno.EINVAL, call: "umount" };
    if (wanted !== undefined && mountId !== wanted.id) {
      throw new MountError(
        `another file system is mounted over ${path}; not unmounting it`,
        "unmount that one first",
      );
    }
    // Nobody but root can mount between the check and umount2, and the mount point itself
    // cannot be renamed while mounted, so this reaches the mount just checked.
    return await umountOffThread(
      `/proc/self/fd/${parentFd}/${name}`,
      (opts.lazy ? MNT_DETACH : 0) | UMOUNT_NOFOLLOW,
    );
  } finally {
    closeFd(parentFd);
  }
}

/** Mount id of an open descriptor, from /proc/self/fdinfo (no request to the file system). */
function fdMountId(fd: number): number {
  const info = readSmallFile(`/proc/self/fdinfo/${fd}`) ?? "";
  const match = /^mnt_id:\s*(\d+)$/m.exec(info);
  if (!match) throw new SysError("read", Errno.EIO, `/proc/self/fdinfo/${fd}: no mnt_id`);
  return Number(match[1]);
}

function refusal(error: unknown, target: string): unknown {
  if (!(error instanceof SysError)) return error;
  // A symlink as the last directory of the walk gives ENOTDIR (O_DIRECTORY with O_NOFOLLOW),
  // not ELOOP: taken for "nothing mounted there", umount said it unmounted what it left.
  if (
    error.errno === Errno.ELOOP ||
    (error.errno === Errno.ENOTDIR && symlinkOn(target) !== undefined)
  ) {
    return new MountError(
      `${target} now leads through a symlink; not unmounting what it points to`,
      "a directory on the way was replaced after mounting; check it",
      { cause: error },
    );
  }
  if (error.errno === Errno.ENOENT || error.errno === Errno.ENOTDIR) {
    // Nothing (of ours) is mounted at a path that no longer exists.
    return new MountError(`${target} is not a mount point`, undefined, {
      cause: new SysError("umount", Errno.EINVAL, target),
    });
  }
  return error;
}

function normalize(path: string): string {
  const trimmed = path.replace(/\/{2,}/g, "/").replace(/\/+$/, "");
  return trimmed === "" ? "/" : trimmed;
}
