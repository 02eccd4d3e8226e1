/**
 * Reads a directory tree into a `NodeTable` (the root as a `BuildNode`): lstat-like metadata with nanosecond mtimes
 * (statx), xattrs (listxattr/getxattr), symlink targets; hard links (same device and inode)
 * become one node. Symlinks are never followed; other file systems mounted inside are read
 * like the rest (as `cp -a` would).
 *
 * Each entry is opened once (O_PATH: nothing is opened for reading, a FIFO does not block, a
 * device is not opened) and everything about it is read through that descriptor, so all of it
 * is of one inode. Read by name, a user who owns part of the tree could exchange
 * (RENAME_EXCHANGE) one of root's files in between the stat and the xattr read and back again
 * (A-B-A): any recheck by name then passes, and the image got the user's file's owner, mode
 * and bytes with root's file's security.capability.
 */
import {
  AT_EMPTY_PATH,
  AT_FDCWD,
  AT_SYMLINK_NOFOLLOW,
  closeFd,
  cstr,
  Errno,
  errno,
  libc,
  O_CLOEXEC,
  O_NOFOLLOW,
  O_PATH,
  SysError,
} from "../../../ffi/libc.ts";
import { DeferredCloses, listDirectory } from "../../../ffi/files.ts";
import {
  openDirNoSymlinks,
  openDirTrusted,
  pathOfFd,
  readLinkBytesAt,
} from "../../../ffi/path_resolve.ts";
import { FormatError, UserError } from "../../errors.ts";
import { type BuildNode, checkEntryName, kindOfMode, NO_XATTRS, type NodeKind } from "./tree.ts";
import { NodeTable } from "./node_table.ts";
import { rootNodeOf } from "./node_table_objects.ts";
import { NOT_STORABLE, type SkippedXattr, xattrNameSupported, xattrProblem } from "./xattrs.ts";
import { pathBytes } from "./data_copy.ts";
import { smallInt } from "./small_int.ts";

/** STATX_BASIC_STATS: type, mode, nlink, uid, gid, times, ino, size, blocks. */
const STATX_BASIC_STATS = 0x7ff;
const STATX_BYTES = 256;
const ENODATA = 61, ENOTSUP = 95, ERANGE = 34;

export interface ScanOptions {
  /** Called for every xattr that EROFS cannot store (skipped). */
  onSkippedXattr?: SkippedXattr;
  /** Called every 1024 entries with the count so far. */
  onEntries?: (count: number) => void;
  /**
   * A file (its fileIdentity) not to take in: the image being written, when an earlier one
   * lies inside the source (`build . -o app.erofs` packed the last app.erofs into the new one).
   */
  leaveOut?: { identity: string; onLeftOut(path: string): void };
  /**
   * Tests only: where a racer's renames go, to check that what the scan reads of an entry is
   * all of one file: called once the entry was stat'ed, and once its xattrs and target are read.
   */
  race?: { afterStat(path: string): void; afterRead(path: string): void };
}

export interface ScanResult {
  root: BuildNode;
  entries: number;
}

interface Stat {
  kind: NodeKind;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  rdevMajor: number;
  rdevMinor: number;
}

/**
 * Scans `dir` (a directory; its own metadata becomes the root's) into a `NodeTable`; the root
 * object materializes its children only if someone reads them (the writer does not).
 */
export function scanDirectory(dir: string, options: ScanOptions = {}): ScanResult {
  // `dir` opened once, following only root's and the caller's symlinks, and its path taken from
  // that descriptor. It was checked (lstat) and then resolved again by path (realpath): a user
  // who swapped a symlink to a directory of root's in between (or a `dir/` given with a trailing
  // slash, through theirs) had root's files put into the image.
  let rootFd: number;
  try {
    rootFd = openDirTrusted(dir);
  } catch (error) {
    if (error instanceof SysError && error.errno === Errno.ENOTDIR) {
      throw new UserError(`${dir} is not a directory`);
    }
    throw error;
  }
  try {
    // Files are opened again when the image is written, by a path without symlinks (write.ts
    // refuses one that has some by then): `dir` resolved once, the walk below it follows none.
    const real = pathOfFd(rootFd);
    const realOf = (path: string) => real + path.slice(dir.length);
    // Each directory is read through a descriptor opened below the root without following any
    // symlink, by /proc/self/fd: a directory swapped for a symlink while the scan runs (to a
    // directory only root may read) is refused, not read.
    return scanBelow(dir, rootFd, realOf, options);
  } finally {
    closeFd(rootFd);
  }
}

function scanBelow(
  dir: string,
  rootFd: number,
  realOf: (path: string) => string,
  options: ScanOptions,
): ScanResult {
  const table = new NodeTable();
  const links = new Map<string, number>();
  let entries = 0;
  /** `path` names the entry in messages; `fd` is its descriptor, `st` its statFd(). */
  const build = (path: string, fd: number, st: Stat, inDir: number): number => {
    const i = table.addInode(st.kind, st.mode);
    table.uid.set(i, st.uid);
    table.gid.set(i, st.gid);
    table.mtimeSec.set(i, st.mtimeSec);
    table.mtimeNsec.set(i, st.mtimeNsec);
    table.setRdev(i, st.rdevMajor, st.rdevMinor);
    const kind = st.kind, size = st.size, nlink = st.nlink;
    const ino = inoOfLastStat();
    options.race?.afterStat(path);
    const xattrs = readXattrs(fd, options, path);
    if (xattrs.size > 0) table.setXattrs(i, xattrs);
    if (kind === "file") {
      table.size.set(i, size);
      table.sourceIno.set(i, ino);
      if (size > 0) {
        // A hard link may be laid out under another of its names, in another directory.
        table.setData(
          i,
          inDir && nlink === 1 ? inDir : table.addRef({ kind: "path", path: realOf(path) }),
          0,
        );
      }
    } else if (kind === "symlink") {
      table.setTarget(i, readLinkUtf8(fd, path));
    }
    options.race?.afterRead(path);
    return i;
  };
  build(dir, rootFd, statFd(rootFd, dir), 0);
  /**
   * Directories to read: the path in messages, the inode, the path below the root, the
   * identity the scan saw (its owner, mode and xattrs are that directory's).
   */
  const stack: [string, number, string, string][] = [[dir, 0, "", ""]];
  /** The entries' descriptors, closed in batches (the directory's own before its entries'). */
  const closes = new DeferredCloses();
  try {
    while (stack.length > 0) {
      const [path, inode, below, scanned] = stack.pop()!;
      const dirFd = below === "" ? rootFd : openBelow(below, rootFd, path, scanned);
      try {
        scanOne(path, inode, below, dirFd);
      } finally {
        if (dirFd !== rootFd) closeFd(dirFd);
      }
    }
  } finally {
    closes.flush();
  }
  options.onEntries?.(entries);
  table.trim();
  return { root: rootNodeOf(table), entries };

  function scanOne(path: string, inode: number, below: string, dirFd: number): void {
    const via = `/proc/self/fd/${dirFd}`;
    /** The directory as the data source of its files (one shared reference). */
    let inDir = 0;
    const names = new Set<string>();
    // Through libc: Deno's own file calls refuse paths under /proc.
    let listed: string[];
    try {
      listed = listDirectory(via);
    } catch (error) {
      if (!(error instanceof SysError)) throw error;
      throw new SysError("opendir", error.errno, path);
    }
    for (const name of listed) {
      const childPath = `${path}/${name}`;
      checkEntryName(name, path);
      if (names.has(name)) {
        // Names that are not UTF-8 reach us decoded lossily and can collide.
        throw new FormatError(`two names in ${path} read as ${JSON.stringify(name)}`);
      }
      names.add(name);
      const fd = openEntry(dirFd, name, path);
      try {
        const st = statFd(fd, childPath);
        if (options.leaveOut && st.kind === "file" && identity() === options.leaveOut.identity) {
          options.leaveOut.onLeftOut(childPath);
          continue;
        }
        entries++;
        if (entries % 1024 === 0) options.onEntries?.(entries);
        const isDir = st.kind === "dir";
        const key = !isDir && st.nlink > 1 ? identity() : "";
        const linked = key ? links.get(key) : undefined;
        if (linked !== undefined) {
          table.addEntry(inode, name, linked);
          continue;
        }
        if (st.kind === "file" && st.size > 0 && inDir === 0) {
          inDir = table.addRef({ kind: "child", dir: realOf(path) });
        }
        const scanned = isDir ? identity() : "";
        const child = build(childPath, fd, st, inDir);
        if (key) links.set(key, child);
        table.addEntry(inode, name, child);
        if (isDir) stack.push([childPath, child, below ? `${below}/${name}` : name, scanned]);
      } finally {
        closes.add(fd);
      }
    }
  }
}

/**
 * An O_PATH descriptor of the entry `name` of the directory `dirFd` (of `path`), not following
 * a symlink: the one inode all of the entry's metadata is read from.
 */
function openEntry(dirFd: number, name: string, path: string): number {
  const fd = libc().openat(dirFd, pathBytes(name), O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
  if (fd >= 0) return fd;
  const code = errno();
  if (code === Errno.ENOENT && name.includes("\ufffd")) {
    // Lossily decoded, the name names nothing there.
    throw new FormatError(
      `a file name in ${path} is not valid UTF-8 (it reads as ${JSON.stringify(name)})`,
      "non-UTF-8 file names are not supported: rename it",
    );
  }
  throw new SysError("open", code, `${path}/${name}`);
}

/**
 * The directory `below` the root, opened without following a symlink anywhere on the way, and
 * checked to be the one the scan saw there (`scanned`, its identity()): another one exchanged
 * in since would have its entries listed under the first one's owner, mode and xattrs.
 */
function openBelow(below: string, rootFd: number, path: string, scanned: string): number {
  let fd: number;
  try {
    fd = openDirNoSymlinks(below, rootFd);
  } catch (error) {
    if (!(error instanceof SysError)) throw error;
    const swapped = error.errno === Errno.ELOOP || error.errno === Errno.ENOTDIR ||
      error.errno === Errno.ENOENT;
    if (!swapped) throw new SysError("open", error.errno, path);
    throw changedWhileScanned(path, "a symlink or a file is where it was");
  }
  let same: boolean;
  try {
    statFd(fd, path);
    same = identity() === scanned;
  } catch (error) {
    closeFd(fd);
    throw error;
  }
  if (same) return fd;
  closeFd(fd);
  throw changedWhileScanned(path, "another directory is at its name now");
}

function changedWhileScanned(path: string, what: string): FormatError {
  return new FormatError(
    `${path} changed while it was scanned (${what})`,
    "build from a tree nothing else writes to while the build runs",
  );
}

/** The device and inode of the file at `path` (not following a symlink), if there is one. */
export function fileIdentity(path: string): string | undefined {
  try {
    return statPath(path).kind === "file" ? identity() : undefined;
  } catch {
    return undefined;
  }
}

/** The inode number the last stat saw (as a Number: compared, never used as an id). */
function inoOfLastStat(): number {
  return Number(statxView.getBigUint64(32, true));
}

/** Device and inode of the file the last stat looked at (hard links share them). */
function identity(): string {
  const v = statxView;
  return `${v.getUint32(136, true)}:${v.getUint32(140, true)}:${v.getBigUint64(32, true)}`;
}

/** Reused by every statx call: the scan is synchronous. */
const statxBuffer = new Uint8Array(STATX_BYTES);
const statxView = new DataView(statxBuffer.buffer);
/**
 * Reused for every entry too (its fields are copied into the node): an object, a BigInt or two
 * per entry made much of a big scan's garbage, and the young generation grows with it.
 */
const lastStat: Stat = {
  kind: "file",
  mode: 0,
  nlink: 0,
  uid: 0,
  gid: 0,
  size: 0,
  mtimeSec: 0,
  mtimeNsec: 0,
  rdevMajor: 0,
  rdevMinor: 0,
};

/** lstat-like metadata of `path`, valid until the next call. */
function statPath(path: string): Stat {
  return statAt(AT_FDCWD, pathBytes(path), AT_SYMLINK_NOFOLLOW, path);
}

const EMPTY_PATH = cstr("");

/** statPath() of the file the descriptor `fd` (of `path`) refers to. */
function statFd(fd: number, path: string): Stat {
  return statAt(fd, EMPTY_PATH, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, path);
}

function statAt(dirFd: number, at: Uint8Array, flags: number, path: string): Stat {
  const rc = libc().statx(dirFd, at, flags, STATX_BASIC_STATS, statxBuffer);
  if (rc < 0) throw new SysError("stat", errno(), path);
  // struct statx (linux/stat.h): nlink@16 uid@20 gid@24 mode@28 ino@32 size@40
  // mtime {i64 sec, u32 nsec}@112, rdev major/minor@128/132, dev major/minor@136/140.
  const v = statxView;
  const mode = v.getUint16(28, true);
  const kind = kindOfMode(mode);
  if (!kind) throw new FormatError(`unknown file type 0o${(mode & 0o170000).toString(8)}: ${path}`);
  const size = smallInt(v.getUint32(44, true) * 2 ** 32 + v.getUint32(40, true));
  if (size > Number.MAX_SAFE_INTEGER) throw new FormatError(`file too large: ${path}`);
  const st = lastStat;
  st.kind = kind;
  st.mode = mode & 0o7777;
  st.nlink = v.getUint32(16, true);
  st.uid = v.getUint32(20, true);
  st.gid = v.getUint32(24, true);
  st.size = size;
  // Exact: |seconds| below 2^53 (a signed high word times 2^32 plus the unsigned low word).
  st.mtimeSec = smallInt(v.getInt32(116, true) * 2 ** 32 + v.getUint32(112, true));
  st.mtimeNsec = v.getUint32(120, true);
  st.rdevMajor = v.getUint32(128, true);
  st.rdevMinor = v.getUint32(132, true);
  return st;
}

const strictDecoder = new TextDecoder("utf-8", { fatal: true });

/** Reused for every listxattr call (most files have no xattrs at all). */
let listBuffer = new Uint8Array(4096);

/** `/proc/self/fd/N` as a C string, by N: descriptor numbers come back, so these do too. */
const procFdPaths: Uint8Array[] = [];

/**
 * The xattrs of the file the O_PATH descriptor `fd` refers to. f*xattr refuse O_PATH
 * descriptors (EBADF, as getxattrat with AT_EMPTY_PATH does on 6.18), and opening the file
 * for reading could block (a FIFO) or act (a device). The path /proc/self/fd/N followed
 * (listxattr, not llistxattr, which reads the proc link's own) resolves to that very inode
 * without a lookup by name, and to a symlink itself, not to its target, when the descriptor
 * is of a symlink (O_NOFOLLOW): its trusted. and security. xattrs are read through it as well.
 */
function readXattrs(
  fd: number,
  options: ScanOptions,
  named: string,
): ReadonlyMap<string, Uint8Array> {
  const cpath = procFdPaths[fd] ??= cstr(`/proc/self/fd/${fd}`);
  let list: Uint8Array;
  for (;;) {
    const n = Number(libc().listxattr(cpath, listBuffer, BigInt(listBuffer.length)));
    if (n === 0) return NO_XATTRS;
    if (n > 0) {
      list = listBuffer.subarray(0, n);
      break;
    }
    const code = errno();
    if (code === ENOTSUP) return NO_XATTRS;
    if (code !== ERANGE || listBuffer.length >= 1 << 20) {
      throw new SysError("listxattr", code, named);
    }
    listBuffer = new Uint8Array(listBuffer.length * 4);
  }
  const out = new Map<string, Uint8Array>();
  let name: string;
  for (let start = 0, end; start < list.length; start = end + 1) {
    end = list.indexOf(0, start);
    if (end < 0) end = list.length;
    if (end === start) continue;
    try {
      name = strictDecoder.decode(list.subarray(start, end));
    } catch {
      // Decoded leniently it would name no xattr (ENODATA) and vanish without a word.
      throw new FormatError(
        `an xattr name of ${named} is not valid UTF-8`,
        "non-UTF-8 xattr names are not supported: remove or rename that xattr",
      );
    }
    if (!xattrNameSupported(name)) {
      options.onSkippedXattr?.(named, name, NOT_STORABLE);
      continue;
    }
    let value = new Uint8Array(256);
    for (;;) {
      const n = Number(libc().getxattr(cpath, cstr(name), value, BigInt(value.length)));
      if (n >= 0) {
        const problem = xattrProblem(name, value.subarray(0, n));
        if (problem) throw new FormatError(`${named}: ${problem}`);
        out.set(name, value.slice(0, n));
        break;
      }
      const code = errno();
      if (code === ENODATA) break; // removed meanwhile
      if (code !== ERANGE || value.length >= 1 << 16) {
        throw new SysError("getxattr", code, named);
      }
      value = new Uint8Array(value.length === 256 ? 65536 : value.length * 4);
    }
  }
  return out;
}

/**
 * The target of the symlink the O_PATH descriptor `fd` refers to (copied); one that is not
 * UTF-8 is refused as such (not an internal error).
 */
function readLinkUtf8(fd: number, named: string): Uint8Array {
  const target = readLinkBytesAt(fd, "", named);
  try {
    strictDecoder.decode(target);
    return target.slice();
  } catch {
    throw new FormatError(
      `the symlink ${named} points to a name that is not valid UTF-8`,
      "non-UTF-8 names are not supported: point it elsewhere",
    );
  }
}
