/**
 * Streaming zstd decompression with bounded memory, on the system libzstd (ffi/zstd.ts).
 *
 * libzstd checks the frames, blocks, window limit and content checksums itself. What is left
 * here: output comes in bounded pieces, only as the consumer pulls, one ZSTD_decompressStream
 * call per piece on a pool thread, so neither a long layer nor a bomb holds the event loop
 * (Ctrl-C, deadlines and other downloads go on); and input that stops inside a frame is an
 * error (libzstd only reports that it wants more). The pure-JS fzstd 0.1.1 used before looped
 * forever, synchronously, on some corrupt Huffman tables.
 */
import { nativeBytes } from "../../ffi/zlib.ts";
import { ZstdDecoder } from "../../ffi/zstd.ts";
import { FormatError } from "../errors.ts";

/** zstd's own decoder refuses windows above 2^27 unless told otherwise (`--memory`). */
export const DEFAULT_MAX_ZSTD_WINDOW_BYTES = 1 << 27;
/** Compressed bytes handed to one call: ZSTD_DStreamInSize(), a full block and its header. */
const INPUT_PIECE_BYTES = (128 << 10) + 3;
/** Output of one call: what the tar reader gets per chunk, as from a plain tar file. */
const OUTPUT_PIECE_BYTES = 256 << 10;

/**
 * Decompresses a zstd stream (one or more frames, skippable ones included). Output is produced
 * only as the consumer pulls; corrupt input, a window over the limit (rounded down to a power
 * of two), a wrong content checksum, or input ending mid-frame is a FormatError.
 */
export function zstdDecompressStream(
  input: ReadableStream<Uint8Array>,
  maxWindowBytes = DEFAULT_MAX_ZSTD_WINDOW_BYTES,
): ReadableStream<Uint8Array> {
  const reader = input.getReader();
  const decoder = new ZstdDecoder(maxWindowBytes);
  const compressed = nativeBytes(INPUT_PIECE_BYTES);
  let compressedFrom = 0, compressedTo = 0;
  let pending: Uint8Array = new Uint8Array();
  let inputEnded = false;
  /** The last call ended a frame: input may stop here. */
  let betweenFrames = true;
  /** The last call filled its output, so libzstd may hold more before it needs input. */
  let outputFull = false;
  let output = nativeBytes(OUTPUT_PIECE_BYTES);

  const decodePiece = async (): Promise<Uint8Array | undefined> => {
    if (compressedFrom === compressedTo && pending.length > 0) {
      compressedTo = Math.min(pending.length, compressed.length);
      compressed.set(pending.subarray(0, compressedTo));
      compressedFrom = 0;
      pending = pending.subarray(compressedTo);
    }
    const step = await decoder.decompress(
      compressed.subarray(compressedFrom, compressedTo),
      output,
    );
    compressedFrom += step.consumed;
    betweenFrames = step.frameDone;
    outputFull = step.produced === output.length;
    if (step.produced === 0) return undefined;
    // A mostly empty piece is copied out, so the consumer's views do not pin a whole buffer.
    if (step.produced * 2 < output.length) return output.slice(0, step.produced);
    const piece = output.subarray(0, step.produced);
    output = nativeBytes(OUTPUT_PIECE_BYTES);
    return piece;
  };

  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        for (;;) {
          if (compressedFrom < compressedTo || pending.length > 0 || outputFull) {
            const piece = await decodePiece();
            if (piece) {
              controller.enqueue(piece);
              return;
            }
            continue;
          }
          if (inputEnded) {
            if (!betweenFrames) {
              throw new FormatError("zstd: input ends inside a frame (truncated)");
            }
            decoder.end();
            controller.close();
            return;
          }
          const { value, done } = await reader.read();
          if (done) inputEnded = true;
          else pending = value;
        }
      } catch (error) {
        decoder.end();
        throw error;
      }
    },
    async cancel(reason) {
      decoder.end();
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}
