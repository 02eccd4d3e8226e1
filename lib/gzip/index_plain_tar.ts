/**
 * Indexes an uncompressed tar layer in one pass: the blob is the tar, so it needs no zinfo —
 * only the tar-index meta image and the sha256 of every 1 MiB piece of the blob (counted
 * from offset 0), which a mount checks before serving any byte of a ranged registry read.
 */
import { createHash } from "../node_builtins.ts";
import { FormatError } from "../errors.ts";
import { scanTar } from "../erofs/writer/from_tar.ts";
import { buildImage } from "../erofs/writer/build_image.ts";
import { indexDir, type IndexLayerOptions, type LayerIndex } from "./index_layer.ts";
import { removeIn, writeFileIn } from "../../ffi/new_file_in_dir.ts";
import { DEFAULT_PIECE_BYTES } from "./piece_digests.ts";
import { PieceHasher } from "../source/piece_hasher.ts";

/**
 * Streams `tar` (a plain tar layer) once; writes the meta image and the piece digests. Both
 * appear only when complete. `checkpoints`/`members` are 0 and `spanBytes` 0 in the result.
 */
export async function indexPlainTarLayer(
  tar: ReadableStream<Uint8Array>,
  paths: { meta: string; pieces: string; dirFd?: number },
  options: IndexLayerOptions,
): Promise<LayerIndex> {
  const pieceBytes = DEFAULT_PIECE_BYTES;
  const hasher = new PieceHasher(pieceBytes);
  const hash = createHash("sha256");
  let tarBytes = 0;
  const input = tar.getReader();
  let done = false;
  // Every byte of the blob is hashed (layer digest = diff_id) even past the end-of-archive
  // marker, where the scanner stops: the drain below reads the rest.
  const next = async (): Promise<Uint8Array | undefined> => {
    if (done) return undefined;
    const { value, done: end } = await input.read();
    if (end) {
      done = true;
      return undefined;
    }
    hash.update(value);
    hasher.update(value);
    tarBytes += value.length;
    return value;
  };
  const scanned = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const chunk = await next();
      if (chunk) controller.enqueue(chunk);
      else controller.close();
    },
    cancel() {},
  });
  using dir = indexDir(paths);
  let metaWritten = false;
  try {
    const scan = await scanTar(scanned, {
      indexOnly: true,
      impliedMtimeSec: options.impliedMtimeSec ?? options.buildTimeSec,
      onEntries: options.onEntries,
      emptyInput: "archive", // a 0-byte tar layer: legal, it adds nothing
    });
    while (await next()) { /* drain: padding after the end-of-archive marker */ }
    await options.prepareTree?.(scan.root);
    if (scan.tarEndOffset > tarBytes) {
      throw new FormatError(`tar ends at ${tarBytes} bytes inside its last member`);
    }
    // mkfs.erofs counts the end-of-archive marker's zero blocks in the device too.
    const tarBlocks = scan.tarEndOffset / 512 + scan.endMarkerBlocks;
    const pieces = hasher.finish();
    buildImage(scan.root, paths.meta, {
      dirFd: dir.fd,
      buildTimeSec: options.buildTimeSec,
      uuid: options.uuid,
      tarIndex: { tarBlocks },
    });
    metaWritten = true;
    writeFileIn(dir.fd, paths.pieces, pieces);
    const digest = `sha256:${hash.digest("hex")}`;
    return {
      layerDigest: digest,
      layerBytes: tarBytes,
      diffId: digest,
      tarBytes,
      entries: scan.entries,
      checkpoints: 0,
      spanBytes: 0,
      members: 0,
      pieceBytes,
    };
  } catch (error) {
    if (metaWritten) removeIn(dir.fd, paths.meta);
    throw error;
  } finally {
    await input.cancel().catch(() => {});
  }
}
