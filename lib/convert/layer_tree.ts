/**
 * One source layer read into an EROFS build tree, straight from its (verified, compressed)
 * blob stream: file data is spooled to an unlinked file next to the output, never a tar.
 *
 * Producers such as umoci leave unchanged parent directories out of a layer (`etc/new` without
 * `etc/`). Such implied directories are reported, so the caller can give them the metadata the
 * layers below have there: otherwise a 0700 directory would show up 0755 once stacked.
 */
import { FormatError, OciError, UserError } from "../errors.ts";
import { MARK_IMPLIED, scanTar, takeImplied } from "../erofs/writer/from_tar.ts";
import { spoolError } from "../erofs/writer/from_tar_spool.ts";
import type { BuildNode } from "../erofs/writer/tree.ts";
import type { SkippedXattr } from "../erofs/writer/xattrs.ts";
import { decompressTar } from "../tar/decompress.ts";
import { closeFd, strerror, SysError } from "../../ffi/libc.ts";
import { scratchFileIn } from "../../ffi/new_file_in_dir.ts";
import type { VerifiedBlob } from "./layer_blob.ts";

export interface LayerTree {
  root: BuildNode;
  entries: number;
  /** Directories the tar implies without listing them (and the root when it is not listed). */
  implied: Set<BuildNode>;
  /** Releases the spool file the tree's file data points into (after the image is written). */
  close(): void;
}

export interface LayerTreeOptions {
  /** Directory for the unlinked spool file. */
  spoolDir: string;
  /** mtime of directories the tar implies without listing. */
  impliedMtimeSec: number;
  /**
   * Refuse a layer whose uncompressed tar grows past this, or whose files hold more (sparse
   * ones at their full size): decompression bombs fill disks.
   */
  maxTarBytes?: number;
  onSkippedXattr?: SkippedXattr;
  onEntries?: (count: number) => void;
  /** What to do when `spoolDir` fills up (where else to put it). */
  spoolHint?: string;
}

/**
 * Reads `blob` (tar, tar+gzip or tar+zstd, sniffed) into a tree with OCI whiteouts in their
 * overlayfs form. Throws unless the whole blob arrived and matched its digest.
 */
export async function readLayerTree(
  blob: VerifiedBlob,
  what: string,
  options: LayerTreeOptions,
): Promise<LayerTree> {
  let spoolFd: number;
  try {
    spoolFd = scratchFileIn(options.spoolDir);
  } catch (error) {
    await blob.stream.cancel().catch(() => {});
    if (error instanceof SysError) {
      throw new UserError(`cannot write in ${options.spoolDir}: ${strerror(error.errno)}`);
    }
    throw error;
  }
  const close = () => {
    if (spoolFd >= 0) closeFd(spoolFd);
    spoolFd = -1;
  };
  try {
    const { stream } = await decompressTar(blob.stream, { maxOutputBytes: options.maxTarBytes });
    const { root, entries } = await scanTar(stream, {
      emptyInput: "archive", // a 0-byte tar layer: legal (Go's archive/tar), it adds nothing
      spoolFd,
      impliedMtimeSec: MARK_IMPLIED,
      maxFileBytes: options.maxTarBytes,
      onSkippedXattr: options.onSkippedXattr,
      onEntries: options.onEntries,
    });
    // The tar reader stops at the end-of-archive marker; the rest is drained, and only a blob
    // read to its end was checked against its digest.
    if (!blob.verified()) {
      throw new OciError(`${what}: the blob was not read to its end, so it is not verified`);
    }
    const implied = takeImplied(root, options.impliedMtimeSec);
    return { root, entries, implied, close };
  } catch (error) {
    close();
    await blob.stream.cancel().catch(() => {});
    // What was wrong in the layer's bytes ("gzip: corrupt …", a bad tar header) says which
    // layer: with several, the message alone named none.
    if (error instanceof FormatError && !error.message.startsWith(what)) {
      throw new FormatError(`${what}: ${error.message}`, error.hint, { cause: error });
    }
    throw spoolError(error, options.spoolDir, options.spoolHint ?? "free space there");
  }
}
