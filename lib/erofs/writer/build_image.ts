/**
 * The writer's entry point: lays out a tree and writes it to `outPath` through a temporary file
 * in the same directory, renamed into place only when complete, so a failure leaves nothing
 * behind and never clobbers an existing image.
 */
import { closeFd, O_CLOEXEC, O_WRONLY, openFile, strerror, SysError } from "../../../ffi/libc.ts";
import { UserError } from "../../errors.ts";
import { layoutImage, type LayoutOptions } from "./layout.ts";
import { writeImage, type WriteResult } from "./write.ts";
import { randomUuid } from "./format.ts";
import type { BuildNode } from "./tree.ts";

const O_CREAT = 0o100, O_EXCL = 0o200;

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
  let fd: number;
  try {
    fd = openFile(tmpPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644);
  } catch (error) {
    if (!(error instanceof SysError)) throw error;
    throw new UserError(`cannot write ${outPath}: ${strerror(error.errno)}`);
  }
  let done = false;
  try {
    const result = writeImage(layout, fd, {
      uuid: options.uuid ?? randomUuid(),
      volumeName: options.volumeName,
      onProgress: options.onProgress,
    });
    closeFd(fd);
    done = true;
    Deno.renameSync(tmpPath, outPath);
    return result;
  } catch (error) {
    if (!done) closeFd(fd);
    try {
      Deno.removeSync(tmpPath);
    } catch { /* already gone */ }
    throw error;
  }
}
