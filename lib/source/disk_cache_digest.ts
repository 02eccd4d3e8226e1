/**
 * The whole-blob hash of the disk cache (disk_cache_whole_check.ts): a layer without a
 * chunk-digest table is verified only by its digest, which needs every byte, so once the disk
 * cache holds them all the data file is hashed. Bounded memory (one 1 MiB buffer) and the
 * event loop is yielded between pieces, so readers keep being served while a large layer is
 * hashed. Also the digest of an index file too large to read whole (a zinfo:
 * lib/mount/layer_index_files.ts).
 */
import { createHash } from "../node_builtins.ts";
import { sleep } from "../timers.ts";

const PIECE_BYTES = 1 << 20;

/**
 * `sha256:HEX` (or sha512) of the first `sizeBytes` of a blob, in the digest's algorithm, read
 * piece by piece through `readPiece` (false: a part of the piece is not there); undefined when
 * a piece was not there or once `signal` is aborted (looked at between pieces).
 */
export async function digestOfPieces(
  readPiece: (into: Uint8Array, offset: number) => Promise<boolean>,
  sizeBytes: number,
  digest: string,
  signal?: AbortSignal,
): Promise<string | undefined> {
  const algorithm = digest.slice(0, digest.indexOf(":"));
  const hash = createHash(algorithm);
  const piece = new Uint8Array(PIECE_BYTES);
  for (let offset = 0; offset < sizeBytes; offset += PIECE_BYTES) {
    if (signal?.aborted) return undefined;
    const view = piece.subarray(0, Math.min(PIECE_BYTES, sizeBytes - offset));
    if (!await readPiece(view, offset)) return undefined;
    hash.update(view);
    if ((offset / PIECE_BYTES) % 16 === 15) await sleep(0);
  }
  return `${algorithm}:${hash.digest("hex")}`;
}
