/**
 * Paths resolved without following symlinks others control: openat2 with RESOLVE_NO_SYMLINKS
 * (or one component at a time where it is missing), the walk that follows only root's or the
 * caller's symlinks (openDirTrusted, realPathTrusted), and statx of what was opened (identity,
 * mount id), so a path checked once can be held as a descriptor and compared later.
 */
import {
  addressOf,
  AT_EMPTY_PATH,
  AT_FDCWD,
  AT_SYMLINK_NOFOLLOW,
  closeFd,
  cstr,
  Errno,
  errno,
  libc,
  O_CLOEXEC,
  O_DIRECTORY,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_PATH,
  O_RDONLY,
  SysError,
  unwrap,
} from "./libc.ts";
import { S_IFDIR, S_IFMT } from "./files.ts";
import { UserError } from "../lib/errors.ts";

/** The system call number, shared by x86_64 and arm64 (the unified table from 5.1 on). */
const SYS_OPENAT2 = 437;
/** linux/openat2.h: refuse every symlink on the way, the last component included. */
const RESOLVE_NO_SYMLINKS = 0x04;

/**
 * An O_PATH descriptor of the directory `path`, resolved by openat2 with RESOLVE_NO_SYMLINKS:
 * no component may be a symlink (ELOOP otherwise), so the descriptor names the directory that
 * the symlink-free path reached at this moment, whatever is renamed or swapped later.
 * A relative `path` is looked up in the directory `dirFd`.
 */
export function openDirNoSymlinks(path: string, dirFd = AT_FDCWD): number {
  return openNoSymlinks(path, dirFd, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/**
 * openat2(dirFd, path, flags, RESOLVE_NO_SYMLINKS); where openat2 is missing (Linux before 5.6,
 * a seccomp filter that denies it) the same by openat one component at a time, each with
 * O_NOFOLLOW. A path past PATH_MAX (a source tree nested deeper than 4,095 bytes: EROFS has
 * no such limit) is opened a part at a time, each part relative to the directory the one
 * before reached, each resolved the same way: no symlink is followed anywhere on it either.
 */
function openNoSymlinks(path: string, dirFd: number, flags: number): number {
  const parts = partsWithinPathMax(path);
  if (parts.length === 1) return openPart(path, dirFd, flags, path);
  const dirFlags = O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  let at = dirFd;
  try {
    for (let k = 0; k < parts.length; k++) {
      const next = openPart(parts[k], at, k === parts.length - 1 ? flags : dirFlags, path);
      if (at !== dirFd) closeFd(at);
      at = next;
    }
    return at;
  } catch (error) {
    if (at !== dirFd) closeFd(at);
    throw error;
  }
}

/** The longest path the kernel takes in one call, in bytes (PATH_MAX, 4,096, less the NUL). */
const PATH_MAX_BYTES = 4095;
const pathLengthEncoder = new TextEncoder();

/**
 * `path` cut between names into parts of at most PATH_MAX_BYTES each (one part when it fits;
 * only the first keeps a leading slash); a name is at most 255 bytes (NAME_MAX), so a cut is
 * always found.
 */
function partsWithinPathMax(path: string): string[] {
  if (path.length <= PATH_MAX_BYTES / 3) return [path]; // at most 3 UTF-8 bytes a UTF-16 unit
  if (pathLengthEncoder.encode(path).length <= PATH_MAX_BYTES) return [path];
  const parts: string[] = [];
  let part = path.startsWith("/") ? "/" : "", partBytes = part.length;
  for (const name of path.split("/").filter((name) => name !== "")) {
    const bytes = pathLengthEncoder.encode(name).length;
    // A name no part can hold (far past NAME_MAX): the kernel refuses it, by its own errno.
    if (bytes >= PATH_MAX_BYTES) return [path];
    const slash = part === "" || part === "/" ? 0 : 1;
    if (slash && partBytes + slash + bytes > PATH_MAX_BYTES) {
      parts.push(part);
      part = name;
      partBytes = bytes;
    } else {
      part += (slash ? "/" : "") + name;
      partBytes += slash + bytes;
    }
  }
  parts.push(part);
  return parts;
}

/** openNoSymlinks() of a path within PATH_MAX; errors name `whole`, the path asked for. */
function openPart(path: string, dirFd: number, flags: number, whole: string): number {
  // struct open_how { u64 flags; u64 mode; u64 resolve; }
  const how = new Uint8Array(24);
  const view = new DataView(how.buffer);
  view.setBigUint64(0, BigInt(flags), true);
  view.setBigUint64(16, BigInt(RESOLVE_NO_SYMLINKS), true);
  const name = cstr(path);
  const fd = Number(
    libc().syscall(
      BigInt(SYS_OPENAT2),
      BigInt(dirFd),
      addressOf(name),
      addressOf(how),
      24n,
    ),
  );
  if (fd >= 0) return fd;
  const code = errno();
  if (code !== Errno.ENOSYS && code !== Errno.EPERM) throw new SysError("open", code, whole);
  return openByComponents(path, dirFd, flags, whole);
}

function openByComponents(path: string, dirFd: number, flags: number, whole: string): number {
  const parts = path.split("/").filter((part) => part !== "" && part !== ".");
  const stepFlags = O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  let at = path.startsWith("/") ? unwrap(libc().open(cstr("/"), stepFlags, 0), "open", "/") : dirFd;
  try {
    for (let k = 0; k < parts.length; k++) {
      const last = k === parts.length - 1;
      const next = libc().openat(at, cstr(parts[k]), last ? flags : stepFlags, 0);
      if (next < 0) throw new SysError("open", errno(), whole);
      if (at !== dirFd) closeFd(at);
      at = next;
    }
    if (parts.length === 0) {
      const again = libc().openat(at, cstr("."), flags, 0);
      if (again < 0) throw new SysError("open", errno(), whole);
      if (at !== dirFd) closeFd(at);
      at = again;
    }
    return at;
  } catch (error) {
    if (at !== dirFd) closeFd(at);
    throw error;
  }
}

/**
 * A symlink on a path erofs-oci was given that someone other than root and the caller made:
 * following it would let that user choose where root writes, mounts or reads.
 */
export class UntrustedSymlinkError extends UserError {}

/**
 * An O_PATH descriptor of the directory `path`, resolved one component at a time without
 * letting the kernel follow symlinks: a symlink is followed only when root or the caller owns
 * it (fs.protected_symlinks' rule for sticky directories, here on the whole path), else
 * UntrustedSymlinkError. A user who owns a directory on the path can put a symlink there (or
 * swap one in) to make root write, mount or delete in a directory of root's; a directory found
 * this way is one the path's owners really hold, and calls relative to the descriptor stay
 * there whatever is renamed later. A relative `path` starts at the directory `from`.
 */
export function openDirTrusted(path: string, from = AT_FDCWD): number {
  return walkTrusted(path, from, false);
}

/**
 * The symlink-free path of the file or directory `path`, resolved as openDirTrusted does (a
 * symlink followed only when root or the caller owns it): for an input root reads and serves
 * (a local image), where a user's symlink to a file of root's would publish it.
 */
export function realPathTrusted(path: string): string {
  const fd = walkTrusted(path, AT_FDCWD, true);
  try {
    return pathOfFd(fd);
  } finally {
    closeFd(fd);
  }
}

/** A directory makeDirTrusted made: its name in the directory `parentFd` (O_PATH, the caller's). */
export interface MadeDir {
  parentFd: number;
  name: string;
}

/**
 * `mkdir -p` of `path` resolved as openDirTrusted does: each missing directory is made in the
 * descriptor of the one above it (mode `mode`, less the umask) and opened there without
 * following a symlink, so a user who owns a directory on the way cannot make root create
 * directories elsewhere; returns an O_PATH descriptor of the directory. Each directory this
 * call made (not one another made meanwhile) is pushed to `made`, top first, with a descriptor
 * of the one above it: undoing the call removes them there, not by path.
 */
export function makeDirTrusted(path: string, mode = 0o755, made?: MadeDir[]): number {
  return walkTrusted(path, AT_FDCWD, false, { mode, made });
}

function walkTrusted(
  path: string,
  from: number,
  fileAtEnd: boolean,
  makeMissing?: { mode: number; made?: MadeDir[] },
): number {
  const pending = path.split("/").filter((part) => part !== "" && part !== ".");
  const rootFlags = O_PATH | O_DIRECTORY | O_CLOEXEC;
  // A descriptor of our own to start from (`from` stays the caller's).
  let at = unwrap(
    libc().openat(from, cstr(path.startsWith("/") ? "/" : "."), rootFlags, 0),
    "open",
    path,
  );
  let links = 0;
  const walked: string[] = [];
  try {
    while (pending.length > 0) {
      const part = pending.shift()!;
      let next = openComponent(at, part);
      if (next < 0 && errno() === Errno.ENOENT && makeMissing !== undefined) {
        // Made meanwhile by another is as good (EEXIST); what is there now is checked below.
        if (libc().mkdirat(at, cstr(part), makeMissing.mode) === 0) {
          makeMissing.made?.push({ parentFd: unwrap(reopen(at), "open", path), name: part });
        } else if (errno() !== Errno.EEXIST) {
          throw new SysError("mkdir", errno(), path);
        }
        next = openComponent(at, part);
      }
      if (next < 0) throw new SysError("open", errno(), path);
      walked.push(part);
      let kind: { type: number; uid: number };
      try {
        kind = typeAndOwner(next, path);
      } catch (error) {
        closeFd(next);
        throw error;
      }
      if (kind.type === S_IFLNK) {
        let target: string;
        try {
          target = readLinkAt(next, "", path);
        } finally {
          closeFd(next);
        }
        if (kind.uid !== 0 && kind.uid !== Deno.uid()) {
          const link = `${path.startsWith("/") ? "/" : ""}${walked.join("/")}`;
          throw new UntrustedSymlinkError(
            `${link} is a symlink of uid ${kind.uid} (to ${target}): not followed on a path ` +
              `given to erofs-oci`,
            "name what it leads to, once you have checked it is the one you mean",
          );
        }
        if (++links > 40) throw new SysError("open", Errno.ELOOP, path);
        pending.unshift(...target.split("/").filter((p) => p !== "" && p !== "."));
        if (target.startsWith("/")) {
          // Opened before `at` is closed: a failed open must not leave the catch below to
          // close `at` a second time (its number may be another thread's file by then).
          const root = unwrap(libc().open(cstr("/"), rootFlags, 0), "open", "/");
          closeFd(at);
          at = root;
        }
        continue;
      }
      if (kind.type !== S_IFDIR && !(fileAtEnd && pending.length === 0)) {
        closeFd(next);
        throw new SysError("open", Errno.ENOTDIR, path);
      }
      closeFd(at);
      at = next;
    }
    return at;
  } catch (error) {
    closeFd(at);
    throw error;
  }
}

/**
 * An O_PATH descriptor of `part` in `at`, not following a symlink (or -1, errno set). Asked as a
 * directory first: only a lookup for a directory (or an open) mounts an automount point (autofs,
 * systemd's x-systemd.automount) on the way; a plain O_PATH one saw its empty directory. ENOTDIR:
 * a symlink or a file, opened as what it is.
 */
function openComponent(at: number, part: string): number {
  const name = cstr(part);
  const dir = libc().openat(at, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
  if (dir >= 0 || errno() !== Errno.ENOTDIR) return dir;
  return libc().openat(at, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
}

/** Another O_PATH descriptor of the directory `dirFd` (or -1, errno set). */
function reopen(dirFd: number): number {
  return libc().openat(dirFd, cstr("."), O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
}

/** The path the kernel has for the open file or directory `fd` (symlink-free, as of now). */
export function pathOfFd(fd: number): string {
  return readLinkAt(AT_FDCWD, `/proc/self/fd/${fd}`, `/proc/self/fd/${fd}`);
}

const S_IFLNK = 0o120000;

/** The file type bits and owner of the descriptor `fd` (an O_PATH one included). */
function typeAndOwner(fd: number, path: string): { type: number; uid: number } {
  const STATX_TYPE = 0x1, STATX_UID = 0x8;
  const buffer = new Uint8Array(256);
  unwrap(
    libc().statx(fd, cstr(""), AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_TYPE | STATX_UID, buffer),
    "statx",
    path,
  );
  const view = new DataView(buffer.buffer);
  return { type: view.getUint16(28, true) & 0o170000, uid: view.getUint32(20, true) };
}

/** The target of the symlink `path` in `dirFd` (`""`: the O_PATH descriptor of the link). */
function readLinkAt(dirFd: number, path: string, what: string): string {
  return new TextDecoder().decode(readLinkBytesAt(dirFd, path, what));
}

/** readLinkAt's bytes, undecoded (PATH_MAX bounds a target: 4,095 bytes and a NUL). */
export function readLinkBytesAt(dirFd: number, path: string, what: string): Uint8Array {
  const buffer = new Uint8Array(4097);
  const n = Number(libc().readlinkat(dirFd, cstr(path), buffer, BigInt(buffer.length - 1)));
  if (n < 0) throw new SysError("readlink", errno(), what);
  return buffer.subarray(0, n);
}

/**
 * Opens the regular file `path` read-only, resolved by openat2 with RESOLVE_NO_SYMLINKS (no
 * component a symlink: ELOOP) and O_NONBLOCK (a FIFO put there does not block the open): the
 * file a scan saw at a symlink-free path, or a refusal when one of its directories or the file
 * itself was swapped for a symlink since. The caller checks the type (fstatFd) and closes.
 */
export function openFileNoSymlinks(path: string): number {
  return openNoSymlinks(path, AT_FDCWD, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
}

/**
 * Opens the regular file named `name` (one name, no slash; a C string) in the directory `dirFd`
 * read-only as openFileNoSymlinks does a whole path: O_NOFOLLOW (a symlink there now: ELOOP),
 * O_NONBLOCK (a FIFO does not block the open). With `dirFd` from openDirNoSymlinks, the file is
 * one a symlink-free path reached. The caller checks the type and closes; errors name `what`.
 */
export function openFileAt(dirFd: number, name: Uint8Array<ArrayBuffer>, what: string): number {
  const fd = libc().openat(dirFd, name, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, 0);
  if (fd < 0) throw new SysError("open", errno(), what);
  return fd;
}

/** The parts of struct statx erofs-oci compares (identity of a file and of its mount). */
export interface FileIdentity {
  devMajor: number;
  devMinor: number;
  ino: bigint;
  /** Mount id as in /proc/self/mountinfo (field 1). */
  mountId: number;
  /** st_mode: type and permission bits. */
  mode: number;
  uid: number;
  gid: number;
}

/** Whether two identities are of one file (same device and inode). */
export function sameInode(a: FileIdentity, b: FileIdentity): boolean {
  return a.ino === b.ino && a.devMajor === b.devMajor && a.devMinor === b.devMinor;
}

/** statIdentity's: it reads the fields out before it returns (a build calls it per file). */
const statxBuffer = new Uint8Array(256);
const EMPTY_PATH = new Uint8Array(1);

/**
 * statx of `path` relative to the descriptor `dirFd` (`""`: the descriptor itself), never
 * following a symlink in the last component.
 */
export function statIdentity(dirFd: number, path = "", what = path || `fd ${dirFd}`): FileIdentity {
  const STATX_TYPE = 0x1, STATX_MODE = 0x2, STATX_UID = 0x8, STATX_GID = 0x10, STATX_INO = 0x100;
  const STATX_MNT_ID = 0x1000;
  const wanted = STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID | STATX_INO | STATX_MNT_ID;
  const buffer = statxBuffer;
  const flags = AT_SYMLINK_NOFOLLOW | (path === "" ? AT_EMPTY_PATH : 0);
  const at = path === "" ? EMPTY_PATH : cstr(path);
  unwrap(libc().statx(dirFd, at, flags, wanted, buffer), "statx", what);
  // struct statx: stx_uid, stx_gid (u32) at 20, 24; stx_mode (u16) at 28, stx_ino at 32,
  // stx_dev_major/minor at 136/140, stx_mnt_id at 144.
  const view = new DataView(buffer.buffer);
  return {
    ino: view.getBigUint64(32, true),
    devMajor: view.getUint32(136, true),
    devMinor: view.getUint32(140, true),
    mountId: Number(view.getBigUint64(144, true)),
    mode: view.getUint16(28, true),
    uid: view.getUint32(20, true),
    gid: view.getUint32(24, true),
  };
}

/**
 * statx of `path`, following symlinks: its type, permissions, owner, device and mount. Through
 * libc, so paths Deno's permission checks treat specially (/dev/shm, /proc) are stat-able too.
 */
export function statPath(path: string): {
  isDirectory: boolean;
  /** Permission bits, with setuid, setgid and sticky (07777). */
  mode: number;
  uid: number;
  gid: number;
  devMajor: number;
  devMinor: number;
  ino: bigint;
  /** Id of the mount it is on, as in /proc/self/mountinfo (field 1). */
  mountId: number;
} {
  const STATX_TYPE = 0x1, STATX_MODE = 0x2, STATX_UID = 0x8, STATX_GID = 0x10, STATX_INO = 0x100;
  const STATX_MNT_ID = 0x1000;
  const wanted = STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID | STATX_INO | STATX_MNT_ID;
  const buffer = new Uint8Array(256);
  unwrap(libc().statx(AT_FDCWD, cstr(path), 0, wanted, buffer), "statx", path);
  // struct statx: stx_uid, stx_gid (u32) at 20, 24; stx_mode (u16) at 28, stx_ino at 32,
  // stx_dev_major/minor at 136/140, stx_mnt_id at 144.
  const view = new DataView(buffer.buffer);
  const mode = view.getUint16(28, true);
  return {
    isDirectory: (mode & S_IFMT) === S_IFDIR,
    mode: mode & 0o7777,
    uid: view.getUint32(20, true),
    gid: view.getUint32(24, true),
    ino: view.getBigUint64(32, true),
    devMajor: view.getUint32(136, true),
    devMinor: view.getUint32(140, true),
    mountId: Number(view.getBigUint64(144, true)),
  };
}
