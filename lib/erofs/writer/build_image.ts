/**
 * The writer's entry point: lays out a tree and writes it to `outPath` through a temporary file
 * in the same directory (unnamed while it is written), renamed into place only when complete,
 * so a failure or an interruption leaves nothing behind and never clobbers an existing image.
 */
import {
  closeFd,
  cstr,
  Errno,
  libc,
  O_CLOEXEC,
  O_WRONLY,
  strerror,
  SysError,
  unwrap,
} from "../../../ffi/libc.ts";
import { openDirPath } from "../../../ffi/files.ts";
import { UserError } from "../../errors.ts";
import { layoutImage, type LayoutOptions } from "./layout.ts";
import { writeImage, type WriteResult } from "./write.ts";
import { randomUuid } from "./format.ts";
import type { BuildNode } from "./tree.ts";

const O_CREAT = 0o100, O_EXCL = 0o200;
/** O_TMPFILE includes O_DIRECTORY, whose value differs on arm64 (asm/fcntl.h). */
const O_TMPFILE = Deno.build.arch === "aarch64" ? 0o20040000 : 0o20200000;
const AT_FDCWD = -100, AT_SYMLINK_FOLLOW = 0x400;
const EISDIR = 21, EOPNOTSUPP = 95;

/**
 * An unnamed file in the directory `dirFd` (O_TMPFILE) when the file system allows it, so an
 * interrupted build (Ctrl-C, kill) leaves nothing at all; else a named temporary file `tmpName`
 * there, removed on failure.
 */
function openOutput(dirFd: number, tmpName: string, outPath: string) {
  try {
    const fd = unwrap(
      libc().openat(dirFd, cstr("."), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0o644),
      "open",
      outPath,
    );
    return { fd, anonymous: true };
  } catch (error) {
    const code = error instanceof SysError ? error.errno : 0;
    if (code !== EOPNOTSUPP && code !== EISDIR && code !== Errno.EINVAL) {
      if (error instanceof SysError) {
        throw new UserError(`cannot write ${outPath}: ${strerror(error.errno)}`);
      }
      throw error;
    }
  }
  try {
    const flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
    const fd = unwrap(libc().openat(dirFd, cstr(tmpName), flags, 0o644), "open", outPath);
    return { fd, anonymous: false };
  } catch (error) {
    if (!(error instanceof SysError)) throw error;
    throw new UserError(`cannot write ${outPath}: ${strerror(error.errno)}`);
  }
}

export interface BuildImageOptions {
  /** Superblock build time; compact inodes are used for entries with exactly this mtime. */
  buildTimeSec?: number;
  buildTimeNsec?: number;
  uuid?: Uint8Array;
  volumeName?: string;
  order?: string[];
  inlineTailMaxBytes?: number;
  /** Write a tar-index image (metadata only) for a tar of this many 512-byte blocks. */
  tarIndex?: { tarBlocks: number };
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

/** Writes `root` as an EROFS image at `outPath`. */
export function buildImage(
  root: BuildNode,
  outPath: string,
  options: BuildImageOptions = {},
): WriteResult {
  const nowMs = Date.now();
  const layoutOptions: LayoutOptions = {
    buildTimeSec: options.buildTimeSec ?? Math.floor(nowMs / 1000),
    buildTimeNsec: options.buildTimeNsec ?? 0,
    order: options.order,
    inlineTailMaxBytes: options.inlineTailMaxBytes,
    tarIndex: options.tarIndex,
  };
  const layout = layoutImage(root, layoutOptions);
  const slash = outPath.lastIndexOf("/");
  const dir = slash < 0 ? "." : outPath.slice(0, slash) || "/";
  const base = outPath.slice(slash + 1);
  const tmpName = `.${base}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  // Every step below names its file relative to one descriptor of the directory: by path,
  // a user who owns a parent could swap the directory for a symlink between the steps and
  // have root link and rename the image into another directory (a helper did, replacing a
  // file outside the tree), or leave the temporary file behind.
  let dirFd: number;
  try {
    dirFd = openDirPath(dir);
  } catch (error) {
    if (!(error instanceof SysError)) throw error;
    throw new UserError(`cannot write ${outPath}: ${strerror(error.errno)} (${dir})`);
  }
  let target: { fd: number; anonymous: boolean };
  try {
    target = openOutput(dirFd, tmpName, outPath);
  } catch (error) {
    closeFd(dirFd);
    throw error;
  }
  const fd = target.fd;
  let done = false;
  let named = !target.anonymous;
  try {
    const result = writeImage(layout, fd, {
      uuid: options.uuid ?? randomUuid(),
      volumeName: options.volumeName,
      onProgress: options.onProgress,
    });
    if (target.anonymous) {
      // Only now does the image get a name (then the final one, atomically).
      unwrap(
        libc().linkat(
          AT_FDCWD,
          cstr(`/proc/self/fd/${fd}`),
          dirFd,
          cstr(tmpName),
          AT_SYMLINK_FOLLOW,
        ),
        "link",
        `${dir}/${tmpName}`,
      );
      named = true;
    }
    closeFd(fd);
    done = true;
    unwrap(libc().renameat(dirFd, cstr(tmpName), dirFd, cstr(base)), "rename", outPath);
    named = false;
    return result;
  } catch (error) {
    if (!done) closeFd(fd);
    if (named) libc().unlinkat(dirFd, cstr(tmpName), 0);
    if (
      error instanceof SysError && (error.errno === Errno.ENOSPC || error.errno === Errno.EDQUOT)
    ) {
      // The writer knows a descriptor only ("write (image)"): name the file and what helps.
      throw new UserError(
        `cannot write ${outPath}: ${strerror(error.errno)}`,
        "free space on that file system, or write the image elsewhere",
        { cause: error },
      );
    }
    throw error;
  } finally {
    closeFd(dirFd);
  }
}
