/**
 * Indexes one tar+gzip layer in a single pass over its compressed bytes, without a temporary
 * copy of the tar: the gzip stream goes through ZinfoBuilder (checkpoints to a file as they
 * are made), its output through the tar scanner in tar-index mode, and the tree becomes the
 * metadata image (`mkfs.erofs --tar=i` layout). Both digests (compressed layer, uncompressed
 * tar = OCI diff_id) are computed on the way so the index can be bound to its layer.
 */
import { createHash } from "../node_builtins.ts";
import { FormatError } from "../errors.ts";
import { type ImpliedMtime, scanTar } from "../erofs/writer/from_tar.ts";
import { buildImage } from "../erofs/writer/build_image.ts";
import type { BuildNode } from "../erofs/writer/tree.ts";
import { ZinfoBuilder } from "./zinfo_builder.ts";
import { ZinfoFileWriter } from "./zinfo_file.ts";
import { removeIn, splitPath, writeFileIn } from "../../ffi/new_file_in_dir.ts";
import { openDirTrusted } from "../../ffi/path_resolve.ts";
import { closeFd } from "../../ffi/libc.ts";
import { DEFAULT_SPAN_BYTES } from "./zinfo.ts";
import { DEFAULT_PIECE_BYTES } from "./piece_digests.ts";

export interface IndexLayerOptions {
  spanBytes?: number;
  /**
   * The compressed layer's size, when known: its checkpoints are bounded by that (as a reader
   * of the zinfo bounds them), not by the bytes read so far.
   */
  layerBytes?: number;
  /** Superblock build time and mtime of implied directories (reproducible output). */
  buildTimeSec: number;
  uuid?: Uint8Array;
  onEntries?: (count: number) => void;
  /** mtime of directories the tar implies without listing them (default buildTimeSec). */
  impliedMtimeSec?: ImpliedMtime;
  /**
   * Called with the scanned tree before the meta image is written (e.g. to give implied
   * directories the metadata of the layers below, as a stacked mount shows them).
   */
  prepareTree?: (root: BuildNode) => void | Promise<void>;
}

export interface LayerIndex {
  /** sha256:… of the compressed layer (the blob digest) and its size. */
  layerDigest: string;
  layerBytes: number;
  /** sha256:… of the uncompressed tar (OCI diff_id) and its size. */
  diffId: string;
  tarBytes: number;
  entries: number;
  checkpoints: number;
  spanBytes: number;
  members: number;
  /** Piece size of the digests written to `piecesPath`. */
  pieceBytes: number;
}

/** Where the index files go: one directory. */
export interface IndexPaths {
  meta: string;
  zinfo: string;
  /** sha256 of every piece of the tar (piece_digests.ts). */
  pieces: string;
  /**
   * Their directory, already open: every file is made, named and removed through it
   * (ffi/new_file_in_dir.ts). Without it, it is opened here for the call.
   */
  dirFd?: number;
}

/** The directory of `paths` for one index call: given, or opened here (closed at disposal). */
export function indexDir(paths: { meta: string; dirFd?: number }): Disposable & { fd: number } {
  if (paths.dirFd !== undefined) return { fd: paths.dirFd, [Symbol.dispose]: () => {} };
  const fd = openDirTrusted(splitPath(paths.meta).dir);
  return { fd, [Symbol.dispose]: () => closeFd(fd) };
}

/**
 * Streams `compressed` (a tar+gzip layer) once; writes the tar-index EROFS image, the zinfo
 * and the piece digests. All appear only when complete (temporary names, renamed last).
 */
export async function indexGzipLayer(
  compressed: ReadableStream<Uint8Array>,
  paths: IndexPaths,
  options: IndexLayerOptions,
): Promise<LayerIndex> {
  const { meta: metaPath, zinfo: zinfoPath, pieces: piecesPath } = paths;
  const spanBytes = options.spanBytes ?? DEFAULT_SPAN_BYTES;
  const pieceBytes = DEFAULT_PIECE_BYTES;
  using dir = indexDir(paths);
  const writer = ZinfoFileWriter.create(zinfoPath, dir.fd);
  const builder = new ZinfoBuilder({
    spanBytes,
    pieceBytes,
    blobBytes: options.layerBytes,
    onCheckpoint: (cp) => writer.add(cp),
  });
  const layerHash = createHash("sha256"), tarHash = createHash("sha256");
  let layerBytes = 0;
  const input = compressed.getReader();
  let pending: Iterator<Uint8Array> | undefined;
  let done = false;
  // Yields the tar bytes; the tar scanner may stop at the end-of-archive marker, so whatever
  // it leaves is drained afterwards (the whole gzip stream must pass for its CRC and zinfo).
  const next = async (): Promise<Uint8Array | undefined> => {
    for (;;) {
      if (pending) {
        const step = pending.next();
        if (!step.done) {
          tarHash.update(step.value);
          return step.value;
        }
        pending = undefined;
      }
      if (done) return undefined;
      const { value, done: end } = await input.read();
      if (end) {
        done = true;
        return undefined;
      }
      layerHash.update(value);
      layerBytes += value.length;
      pending = builder.feed(value);
    }
  };
  const tar = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const chunk = await next();
      if (chunk) controller.enqueue(chunk);
      else controller.close();
    },
    // The scanner is done with the tar; the rest is still read by the drain below.
    cancel() {},
  });
  let metaWritten = false;
  try {
    const scan = await scanTar(tar, {
      indexOnly: true,
      impliedMtimeSec: options.impliedMtimeSec ?? options.buildTimeSec,
      onEntries: options.onEntries,
    });
    while (await next()) { /* drain: padding after the end-of-archive marker */ }
    writer.finish(builder.finish());
    // After the drain: preparing may read other layers, and this blob's reply must not idle.
    await options.prepareTree?.(scan.root);
    const tarBytes = builder.uncompressedBytes;
    if (scan.tarEndOffset > tarBytes) {
      throw new FormatError(`tar ends at ${tarBytes} bytes inside its last member`);
    }
    buildImage(scan.root, metaPath, {
      dirFd: dir.fd,
      buildTimeSec: options.buildTimeSec,
      uuid: options.uuid,
      // mkfs.erofs counts the end-of-archive marker's zero blocks in the device too.
      tarIndex: { tarBlocks: scan.tarEndOffset / 512 + scan.endMarkerBlocks },
    });
    metaWritten = true;
    writeFileIn(dir.fd, piecesPath, builder.pieceDigests!);
    writer.commit();
    return {
      layerDigest: `sha256:${layerHash.digest("hex")}`,
      layerBytes,
      diffId: `sha256:${tarHash.digest("hex")}`,
      tarBytes,
      entries: scan.entries,
      checkpoints: builder.checkpointCount,
      spanBytes,
      members: builder.members,
      pieceBytes,
    };
  } catch (error) {
    writer.abort();
    if (metaWritten) {
      removeIn(dir.fd, metaPath);
      removeIn(dir.fd, piecesPath);
    }
    // The tar ran out because the gzip stream did (a truncated header or member): say that,
    // not "empty input" or "truncated archive".
    if (done && error instanceof FormatError) builder.finish(); // throws when truncated
    throw error;
  } finally {
    builder.close();
    await input.cancel().catch(() => {});
  }
}
