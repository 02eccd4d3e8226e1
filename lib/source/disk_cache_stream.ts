/**
 * How a disk-cache fill takes a run from a streaming source: the body goes through one pooled
 * piece of whole chunks, handed to `store` (verify + pwrite) each time it is full, so a fill of
 * 8 MiB holds 1 MiB and leaves nothing per fill for the GC. Bytes that arrive as whole chunks
 * (a VerifiedSource's verified table chunks) go to `store` as they are, without that copy.
 */
import type { Source } from "./source.ts";
import { fillTrace } from "./fill_trace.ts";

const PIECE_BYTES = 1 << 20;
const MAX_POOLED_PIECES = 4;
const piecePool: Uint8Array[] = [];

function takePiece(chunkBytes: number): Uint8Array {
  const size = Math.max(chunkBytes, Math.floor(PIECE_BYTES / chunkBytes) * chunkBytes);
  const index = piecePool.findIndex((piece) => piece.length === size);
  return index >= 0 ? piecePool.splice(index, 1)[0] : new Uint8Array(size);
}

function givePiece(piece: Uint8Array): void {
  if (piecePool.length < MAX_POOLED_PIECES) piecePool.push(piece);
}

/**
 * Reads [offset, offset + length) of `source` (which has readTo) and calls `store(at, bytes)`
 * for consecutive pieces of whole `chunkBytes` chunks (the last one may be short); `bytes` is
 * valid until store's promise settles. Rejects when the source sends fewer or misplaced bytes.
 */
export async function streamInPieces(
  source: Source,
  offset: number,
  length: number,
  chunkBytes: number,
  store: (at: number, bytes: Uint8Array) => Promise<void>,
  signal?: AbortSignal,
  traceId = 0,
): Promise<void> {
  const piece = takePiece(chunkBytes);
  let pieceAt = 0; // run offset of piece[0]
  let filled = 0;
  let received = 0;
  try {
    await source.readTo!(offset, length, async (bytes, at) => {
      if (at !== received) throw new Error(`source sent bytes at ${at}, expected ${received}`);
      if (received === 0) fillTrace("body-first", traceId, bytes.length);
      received += bytes.length;
      // Whole chunks with nothing pending (a VerifiedSource hands whole verified table
      // chunks): stored from the sink's own view, without the copy into the piece.
      if (
        filled === 0 && received <= length &&
        (bytes.length % chunkBytes === 0 || received === length)
      ) {
        await store(offset + pieceAt, bytes);
        pieceAt += bytes.length;
        return;
      }
      for (let used = 0; used < bytes.length;) {
        const n = Math.min(piece.length - filled, bytes.length - used);
        piece.set(bytes.subarray(used, used + n), filled);
        filled += n;
        used += n;
        if (filled === piece.length) {
          await store(offset + pieceAt, piece);
          pieceAt += filled;
          filled = 0;
        }
      }
    }, signal);
    fillTrace("body-end", traceId);
    if (received !== length) {
      throw new Error(`source returned ${received} bytes for a read of ${length}`);
    }
    if (filled > 0) await store(offset + pieceAt, piece.subarray(0, filled));
  } finally {
    // No sink call can follow a settled readTo: the piece is free again either way.
    givePiece(piece);
  }
}
