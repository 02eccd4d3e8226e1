/**
 * Mounting an EROFS image that is a file (a FUSE blob, a local image): superblock check first,
 * then mount(2) on the file itself (file-backed EROFS, kernel 6.12+), or through read-only
 * loop devices on older kernels. mount(2) runs on a worker thread because the file may be
 * served by this very process (see lib/fuse/blob.ts).
 */
import { Errno, type LibcSymbols, strerror, SysError } from "../../ffi/libc.ts";
import { listDirectory, writeSmallFile } from "../../ffi/files.ts";
import { MS_NODEV, MS_NOSUID, MS_RDONLY } from "../../ffi/mount.ts";
import { type ErrnoReader, runLibcTask } from "../../ffi/libc_worker.ts";
import * as log from "../log.ts";
import { MountError } from "../errors.ts";
import {
  checkErofsSuperblock,
  EROFS_SUPER_END,
  type ErofsSuperblock,
} from "../erofs/superblock.ts";
import { mountOffThread, type SyscallResult } from "../sys/mount_task.ts";
import { unmountNoFollow, type UnmountOptions } from "./unmount_pinned.ts";

/** Readahead of the EROFS mount's own bdi: 1 MiB reads of the backing file. */
const READ_AHEAD_KB = 1024;

export interface MountErofsOptions {
  /** Files (or block devices) for the image's extra devices, in device-table order. */
  extraDevices?: string[];
  /** `loop` skips the file-backed attempt (tests; kernels with it compiled out). */
  via?: "auto" | "loop";
  /** mount(2) flags (default: read-only, nosuid, nodev; see mount_options.ts). */
  flags?: number;
  /** What mount(2) is given instead of `target` (a pinned /proc/self/fd path). */
  mountAt?: string;
  /**
   * The file holds the extra devices itself, each at its device slot's `mapped_blkaddr`
   * (a tar-index layer served as [meta][tar]), so none are passed.
   */
  devicesMapped?: boolean;
  /**
   * The image's first EROFS_SUPER_END bytes when the caller has them already (the mount
   * server sends them with its ready message): checked instead of reading them through the
   * file, which takes a worker thread (~30 ms quiet, 100+ ms on a loaded host).
   */
  head?: Uint8Array;
}

/** How the image ended up mounted. */
export interface ErofsMountInfo {
  superblock: ErofsSuperblock;
  /** Loop devices in use (primary first) when the loop fallback was taken. */
  loopDevices: string[];
}

/**
 * Mounts the EROFS image `file` (a regular file such as a FUSE blob, or a block device such as
 * /dev/nbdN) read-only on `target`. Throws FormatError ("not an EROFS image") before anything
 * is mounted when the superblock is wrong, MountError with the kernel's reason when mount(2)
 * fails. Regular files are mounted file-backed; kernels without that (ENOTBLK, before 6.12)
 * get read-only autoclear loop devices for the image and each extra device.
 *
 * @example
 * await mountErofsFile(blob.filePath, "/run/erofs-oci/x/layers/0");
 * await mountErofsFile("layer.meta.erofs", dir, { extraDevices: ["/path/layer.tar"] });
 */
export async function mountErofsFile(
  file: string,
  target: string,
  opts: MountErofsOptions = {},
): Promise<ErofsMountInfo> {
  const extraDevices = opts.extraDevices ?? [];
  const head = opts.head?.length === EROFS_SUPER_END
    ? opts.head
    : await readHead(file, EROFS_SUPER_END);
  const superblock = checkErofsSuperblock(head, file);
  if (superblock.extraDevices > extraDevices.length && !opts.devicesMapped) {
    throw new MountError(
      `${file} needs ${superblock.extraDevices} extra device(s), ${extraDevices.length} given`,
      "an image built with --tar=i or blob devices needs its blobs as extra devices",
    );
  }
  for (const path of extraDevices) {
    // Named in the options (device=…), which are comma-separated with no escaping; the image
    // and the target are mount(2)'s own arguments, where a ',' is just a character.
    if (path.includes(",")) throw new MountError(`cannot mount a path containing ",": ${path}`);
  }
  const devices = extraDevices.map((device) => `device=${device}`).join(",");
  const bdisBefore = new Set(erofsBdis());
  const result = await mountOffThread({
    source: file,
    target: opts.mountAt ?? target,
    fsType: "erofs",
    flags: opts.flags ?? MS_RDONLY | MS_NOSUID | MS_NODEV,
    data: devices,
    loopFallback: { extraFiles: extraDevices, dataWithoutDevices: "", always: opts.via === "loop" },
  });
  if (result.errno !== 0) throw mountError(result, file, target);
  tuneReadAhead(result.loopDevices, bdisBefore);
  return { superblock, loopDevices: result.loopDevices ?? [] };
}

/**
 * Unmounts the EROFS mount at `target`; `lazy` detaches it even while files are open (the
 * kernel finishes the unmount when they close). Unmount EROFS before the FUSE blob under it.
 */
export async function unmountErofs(
  target: string,
  opts: UnmountOptions = {},
): Promise<void> {
  await unmountPath(target, opts);
}

/** umount2 without following symlinks, with readable errors; shared with the overlay. */
export async function unmountPath(target: string, opts: UnmountOptions = {}): Promise<void> {
  const result = await unmountNoFollow(target, opts);
  if (result.errno === 0) return;
  const cause = new SysError("umount", result.errno, target);
  if (result.errno === Errno.EINVAL) {
    throw new MountError(`${target} is not a mount point`, undefined, { cause });
  }
  if (result.errno === Errno.EBUSY) {
    throw new MountError(
      `${target} is busy`,
      "close files and leave directories under it, or unmount lazily",
      { cause },
    );
  }
  throw new MountError(`cannot unmount ${target}: ${strerror(result.errno)}`, undefined, {
    cause,
  });
}

/**
 * The first `length` bytes of `file` (fewer if it is shorter), read on a worker thread: the
 * file may be served over FUSE by this thread, and even close() can wait for a reply (FLUSH).
 */
async function readHead(file: string, length: number): Promise<Uint8Array> {
  const result = await runLibcTask("read-head", readHeadBody, { file, length });
  if ("errno" in result) {
    const cause = new SysError(result.call, result.errno, file);
    throw new MountError(`cannot ${result.call} ${file}: ${strerror(result.errno)}`, undefined, {
      cause,
    });
  }
  return result.bytes;
}

/** Worker body of readHead (self-contained, see ffi/libc_worker.ts). */
function readHeadBody(
  libc: LibcSymbols,
  errno: ErrnoReader,
  arg: { file: string; length: number },
): { bytes: Uint8Array } | { errno: number; call: string } {
  const O_RDONLY = 0, O_CLOEXEC = 0o2000000, EINTR = 4;
  const fd = libc.open(new TextEncoder().encode(arg.file + "\0"), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) return { errno: errno(), call: "open" };
  try {
    const bytes = new Uint8Array(arg.length);
    let filled = 0;
    while (filled < arg.length) {
      const n = Number(
        libc.pread(fd, bytes.subarray(filled), BigInt(arg.length - filled), BigInt(filled)),
      );
      if (n < 0) {
        const code = errno();
        if (code === EINTR) continue;
        return { errno: code, call: "read" };
      }
      if (n === 0) break;
      filled += n;
    }
    return { bytes: bytes.subarray(0, filled) };
  } finally {
    libc.close(fd);
  }
}

function mountError(result: SyscallResult, file: string, target: string): MountError {
  const cause = new SysError(result.call, result.errno, `${file} on ${target}`);
  const reason = strerror(result.errno);
  const hints: Record<number, string> = {
    [Errno.EPERM]: "mounting needs root (CAP_SYS_ADMIN)",
    [Errno.EACCES]: "mounting needs root (CAP_SYS_ADMIN)",
    [Errno.ENODEV]: "the kernel has no EROFS support: `modprobe erofs`",
    [Errno.ENOENT]: "check that the mount point exists",
    [Errno.ENOTDIR]: "the mount point must be a directory",
    [Errno.EINVAL]: "the kernel refused the image or options; see `dmesg`",
    [Errno.EIO]: "the image could not be read; see `dmesg`",
    // What EROFS answers for a superblock or inode that does not hold together.
    [Errno.EBADMSG]:
      "the image is corrupt or truncated (the kernel's EROFS refused it); see `dmesg`",
    [Errno.EUCLEAN]:
      "the image is corrupt or truncated (the kernel's EROFS refused it); see `dmesg`",
  };
  const call = result.call === "mount" ? "mount EROFS" : result.call;
  return new MountError(`cannot ${call} ${file} on ${target}: ${reason}`, hints[result.errno], {
    cause,
  });
}

/**
 * Best effort: 1 MiB readahead for the new mount. A file-backed EROFS mount gets its own bdi
 * named `erofs-<seq>`, which nothing maps to the mount (not mountinfo, not st_dev), so we take
 * the `erofs-*` bdis that appeared during our mount(2) — a concurrent EROFS mount may get the
 * same (harmless) tuning. With 128 KiB (the default) reads over FUSE are a third as fast.
 */
function tuneReadAhead(loopDevices: string[] | undefined, bdisBefore: Set<string>): void {
  const files = loopDevices
    ? loopDevices.map((device) => `/sys/block/${device.replace("/dev/", "")}/queue/read_ahead_kb`)
    : erofsBdis().filter((name) => !bdisBefore.has(name)).map((name) =>
      `/sys/class/bdi/${name}/read_ahead_kb`
    );
  for (const file of files) {
    try {
      writeSmallFile(file, `${READ_AHEAD_KB}`);
    } catch (error) {
      log.debug(`cannot set ${file}: ${(error as Error).message}`);
    }
  }
}

function erofsBdis(): string[] {
  try {
    return listDirectory("/sys/class/bdi").filter((name) => name.startsWith("erofs-"));
  } catch {
    return [];
  }
}
