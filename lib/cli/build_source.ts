/**
 * `erofs-oci build` sources that are on this machine: a directory, or a tar (plain, gzip, zstd;
 * a file or "-") read into a tree, with data referenced in place or spooled.
 */
import { ProgressLine } from "./progress.ts";
import { dirOf } from "./output_file.ts";
import { refusedSpecialPath, UsageError, UserError } from "../errors.ts";
import { fileIdentity, scanDirectory } from "../erofs/writer/from_dir.ts";
import { info } from "../log.ts";
import { skippedXattrWarner } from "../erofs/writer/xattrs.ts";
import type { BuildNode } from "../erofs/writer/tree.ts";
import { closeFd, strerror, SysError } from "../../ffi/libc.ts";
import { scratchFileIn } from "../../ffi/new_file_in_dir.ts";
import { fstatFd, S_IFMT, S_IFREG } from "../../ffi/files.ts";
import {
  openFileNoSymlinks,
  realPathTrusted,
  UntrustedSymlinkError,
} from "../../ffi/path_resolve.ts";
import { parseReference } from "../oci/reference.ts";

export interface LoadedSource {
  root: BuildNode;
  entries: number;
  /** Tar-index builds: the tar's size in 512-byte blocks up to its last member. */
  tarBlocks?: number;
  close(): void;
}

/** Reads SOURCE (a directory, a tar/tar.gz/tar.zst file, or "-") into a tree. */
export async function loadSource(
  source: string,
  output: string,
  options: { literalWhiteouts?: boolean; impliedMtimeSec?: number; tarIndex?: boolean },
): Promise<LoadedSource> {
  let sourceInfo: Deno.FileInfo | undefined;
  if (source !== "-") {
    try {
      sourceInfo = await Deno.stat(source);
    } catch (error) {
      throw refusedSpecialPath(error) ??
        new UserError(`build: cannot read ${source}: ${(error as Error).message}`);
    }
  }
  const onSkippedXattr = skippedXattrWarner();
  if (sourceInfo?.isDirectory && options.tarIndex) {
    throw new UsageError("build: --tar-index needs a tar SOURCE, not a directory");
  }
  if (sourceInfo?.isDirectory) {
    const scanning = new ProgressLine(`scanning ${source}`);
    try {
      const earlier = fileIdentity(output);
      const { root, entries } = scanDirectory(source, {
        onEntries: (count) => scanning.updateEntries(count),
        onSkippedXattr,
        leaveOut: earlier === undefined ? undefined : {
          identity: earlier,
          onLeftOut: (path) => info(`${path} left out: it is the image being written`),
        },
      });
      return { root, entries, close() {} };
    } finally {
      scanning.finish();
    }
  }
  if (sourceInfo && !sourceInfo.isFile) {
    throw new UserError(`build: ${source} is neither a directory nor a tar file`);
  }
  const tar = source === "-" ? undefined : openTarSource(source);
  return await loadTar(source, tar, output, options, onSkippedXattr);
}

/**
 * The tar SOURCE opened once, as root reads it: no symlink of another user's on its path is
 * followed (a user's link to a tar of root's put that tar into a world-readable image), and
 * what a symlink-free path reaches now must be a regular file (a FIFO swapped in is refused).
 * Read through this descriptor only: its stream and, for a plain tar, the image's file data.
 */
function openTarSource(source: string): { fd: number; sizeBytes: number } {
  let fd: number;
  try {
    fd = openFileNoSymlinks(realPathTrusted(source));
  } catch (error) {
    if (error instanceof UntrustedSymlinkError) throw error;
    throw refusedSpecialPath(error) ??
      new UserError(`build: cannot read ${source}: ${(error as Error).message}`);
  }
  try {
    const { mode, sizeBytes } = fstatFd(fd, source);
    if ((mode & S_IFMT) !== S_IFREG) {
      throw new UserError(`build: ${source} is neither a directory nor a tar file`);
    }
    return { fd, sizeBytes };
  } catch (error) {
    closeFd(fd);
    throw error;
  }
}

/**
 * loadSource of a tar: `tar` (openTarSource's: closed here, or by the result's close() when the
 * image's data is read from it) or stdin.
 */
async function loadTar(
  source: string,
  tar: { fd: number; sizeBytes: number } | undefined,
  output: string,
  options: { literalWhiteouts?: boolean; impliedMtimeSec?: number; tarIndex?: boolean },
  onSkippedXattr: ReturnType<typeof skippedXattrWarner>,
): Promise<LoadedSource> {
  // The tar reader and decompressors (node:zlib, zstd) are loaded only for a tar SOURCE.
  const [{ fdTarFile, openTar }, { scanTar }, { spoolError }] = await Promise.all([
    import("../tar/decompress.ts"),
    import("../erofs/writer/from_tar.ts"),
    import("../erofs/writer/from_tar_spool.ts"),
  ]);
  const reading = new ProgressLine(
    `${options.tarIndex ? "indexing" : "reading"} ${source === "-" ? "standard input" : source}`,
  );
  let readBytes = 0, readEntries = 0;
  const showRead = () => reading.updateRead(readBytes, tar?.sizeBytes, readEntries);
  const onEntries = (count: number) => {
    readEntries = count;
    showRead();
  };
  /** Whether tar's descriptor is the result's to close now. */
  let handedOver = false;
  try {
    // The scan copies what it keeps of the tar's bytes, so the file can be read into reused
    // buffers.
    const { stream, compression } = await openTar(tar ? fdTarFile(tar.fd, source) : "-", {
      reuseChunks: true,
      onInputBytes: (doneBytes) => {
        readBytes = doneBytes;
        showRead();
      },
    });
    if (options.tarIndex) {
      const { root, entries, tarEndOffset, endMarkerBlocks } = await scanTar(stream, {
        indexOnly: true,
        literalWhiteouts: options.literalWhiteouts,
        impliedMtimeSec: options.impliedMtimeSec,
        onSkippedXattr,
        onEntries,
      });
      // mkfs.erofs counts the end-of-archive marker's zero blocks in the device too.
      return { root, entries, tarBlocks: tarEndOffset / 512 + endMarkerBlocks, close() {} };
    }
    // Data of an uncompressed tar file stays where it is, read through the descriptor the stream
    // read (it was opened again by path: another file by then); anything else is spooled next
    // to the output (unlinked at once, so nothing survives a crash).
    const tarFd = compression === "none" ? tar?.fd : undefined;
    let spoolFd: number;
    try {
      spoolFd = scratchFileIn(dirOf(output));
    } catch (error) {
      await stream.cancel().catch(() => {});
      if (error instanceof SysError) {
        throw new UserError(`build: cannot write next to ${output}: ${strerror(error.errno)}`);
      }
      throw error;
    }
    handedOver = true;
    const close = () => {
      closeFd(spoolFd);
      if (tar) closeFd(tar.fd);
    };
    try {
      const { root, entries } = await scanTar(stream, {
        literalWhiteouts: options.literalWhiteouts,
        impliedMtimeSec: options.impliedMtimeSec,
        tarFd,
        spoolFd,
        onSkippedXattr,
        onEntries,
      });
      return { root, entries, close };
    } catch (error) {
      close();
      throw spoolError(
        error,
        dirOf(output),
        "build keeps a compressed tar's file data beside OUT until the image is written: free " +
          "space there, or write OUT on a larger file system",
      );
    }
  } finally {
    reading.finish();
    if (tar && !handedOver) closeFd(tar.fd);
  }
}

/**
 * True when SOURCE names an image rather than a file: `oci:…`, or something that is not an
 * existing path, does not look like one (`/`, `.`), and parses as a reference with a tag,
 * digest or registry (a bare word stays a missing file, not a Docker Hub lookup).
 */
export function isImageSource(source: string): boolean {
  if (source.startsWith("oci:")) return true;
  if (source === "-" || source.startsWith("/") || source.startsWith(".")) return false;
  try {
    Deno.lstatSync(source);
    return false;
  } catch { /* not a path */ }
  if (!/[:@/]/.test(source)) return false;
  try {
    parseReference(source);
    return true;
  } catch {
    return false;
  }
}
