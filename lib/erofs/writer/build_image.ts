/**
 * The writer's entry point: lays out a tree and writes it to `outPath` through a temporary file
 * in the same directory (unnamed while it is written), renamed into place only when complete,
 * so a failure or an interruption leaves nothing behind and never clobbers an existing image.
 */
import { layoutImage, type LayoutOptions } from "./layout.ts";
import { writeImage, type WriteResult } from "./write.ts";
import { randomUuid } from "./format.ts";
import type { BuildNode } from "./tree.ts";
import { hiddenTempName, NewFileInDir } from "../../../ffi/new_file_in_dir.ts";

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
  /** `outPath`'s directory, already open (ffi/new_file_in_dir.ts); the caller closes it. */
  dirFd?: number;
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
  const out = NewFileInDir.create(outPath, {
    tempName: hiddenTempName,
    dirFd: options.dirFd,
  });
  try {
    const result = writeImage(layout, out.fd, {
      uuid: options.uuid ?? randomUuid(),
      volumeName: options.volumeName,
      onProgress: options.onProgress,
    });
    out.commit();
    return result;
  } catch (error) {
    out.discard();
    throw out.failure(error);
  }
}
