/**
 * One source layer read into an EROFS build tree, straight from its (verified, compressed)
 * blob stream: file data is spooled to an unlinked file next to the output, never a tar.
 */
import { OciError, UserError } from "../errors.ts";
import { scanTar } from "../erofs/writer/from_tar.ts";
import type { BuildNode } from "../erofs/writer/tree.ts";
import { decompressTar } from "../tar/decompress.ts";
import { closeFd, O_RDWR, openFile, strerror, SysError } from "../../ffi/libc.ts";
import type { VerifiedBlob } from "./layer_blob.ts";

const O_CREAT = 0o100, O_EXCL = 0o200;

export interface LayerTree {
  root: BuildNode;
  entries: number;
  /** Releases the spool file the tree's file data points into (after the image is written). */
  close(): void;
}

export interface LayerTreeOptions {
  /** Directory for the unlinked spool file. */
  spoolDir: string;
  /** mtime of directories the tar implies without listing. */
  impliedMtimeSec: number;
  /** Keep whiteouts literally (never for images: they are meant as overlay layers). */
  literalWhiteouts?: boolean;
  onSkippedXattr?: (path: string, name: string) => void;
  onEntries?: (count: number) => void;
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
  const spoolPath = `${options.spoolDir}/.erofs-oci-spool-${crypto.randomUUID().slice(0, 8)}`;
  let spoolFd: number;
  try {
    spoolFd = openFile(spoolPath, O_RDWR | O_CREAT | O_EXCL, 0o600);
  } catch (error) {
    await blob.stream.cancel().catch(() => {});
    if (error instanceof SysError) {
      throw new UserError(`cannot write in ${options.spoolDir}: ${strerror(error.errno)}`);
    }
    throw error;
  }
  Deno.removeSync(spoolPath);
  try {
    const { stream } = await decompressTar(blob.stream);
    const { root, entries } = await scanTar(stream, {
      spoolFd,
      literalWhiteouts: options.literalWhiteouts,
      impliedMtimeSec: options.impliedMtimeSec,
      onSkippedXattr: options.onSkippedXattr,
      onEntries: options.onEntries,
    });
    // The tar reader stops at the end-of-archive marker; the rest is drained, and only a blob
    // read to its end was checked against its digest.
    if (!blob.verified()) {
      throw new OciError(`${what}: the blob was not read to its end, so it is not verified`);
    }
    return { root, entries, close: () => closeFd(spoolFd) };
  } catch (error) {
    closeFd(spoolFd);
    await blob.stream.cancel().catch(() => {});
    throw error;
  }
}
