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
import { openFile } from "../../../ffi/files.ts";
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
 * An unnamed file in `dir` (O_TMPFILE) when the file system allows it, so an interrupted
 * build (Ctrl-C, kill) leaves nothing at all; else a named temporary file removed on failure.
 */
function openOutput(dir: string, tmpPath: string, outPath: string) {
  try {
    return { fd: openFile(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0o644), anonymous: true };
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
    return {
      fd: openFile(tmpPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644),
      anonymous: false,
    };
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
  const tmpPath = `${dir}/.${base}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  const target = openOutput(dir, tmpPath, outPath);
  const fd = target.fd;
  let done = false;
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
          AT_FDCWD,
          cstr(tmpPath),
          AT_SYMLINK_FOLLOW,
        ),
        "link",
        tmpPath,
      );
    }
    closeFd(fd);
    done = true;
    Deno.renameSync(tmpPath, outPath);
    return result;
  } catch (error) {
    if (!done) closeFd(fd);
    try {
      Deno.removeSync(tmpPath);
    } catch { /* already gone */ }
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
  }
}
