/**
 * Streaming zstd decompression with bounded memory, on the pure-JS `fzstd` decoder.
 *
 * fzstd allocates each frame's window as the frame header declares (up to 2 GiB) and decodes
 * as much as it is given in one synchronous call, so two guards sit in front of it: a frame
 * walker (RFC 8878 §3.1: frame header, block headers, checksum; skippable frames) rejects a
 * window above `maxWindowBytes` before fzstd sees the frame, and input is cut at block
 * boundaries so one push cannot expand into more than a few MiB of output (an RLE block is 4
 * bytes in, up to 128 KiB out: a 64 KiB chunk of them would be 2 GiB). fzstd also ignores the frame's content checksum, so corrupt data would
 * come out as wrong bytes: the walker cuts input at frame ends and the output is checked
 * against the checksum with our XXH64. (Deno's node:zlib zstd does check, but throws the
 * mismatch outside any handler and accepts a truncated frame silently.)
 */
import { Decompress } from "fzstd";
import { FormatError } from "../errors.ts";
import { Xxh64 } from "./xxhash64.ts";

/** zstd's own decoder refuses windows above 2^27 unless told otherwise (`--memory`). */
export const DEFAULT_MAX_ZSTD_WINDOW_BYTES = 1 << 27;
/** Most output one push to fzstd may produce (plus one block that began earlier). */
const FEED_OUTPUT_BUDGET_BYTES = 4 << 20;
/** RFC 8878 §3.1.1.2.3: Block_Maximum_Size. */
const MAX_BLOCK_BYTES = 128 << 10;
const ZSTD_MAGIC = 0xfd2fb528; // RFC 8878 §3.1.1
const SKIPPABLE_MAGIC_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50; // RFC 8878 §3.1.2

type WalkState = "magic" | "skipSize" | "fhd" | "fheader" | "block" | "payload" | "checksum";

/** Walks frame and block headers to learn each frame's window size before it is decoded. */
export class ZstdFrameWalker {
  #state: WalkState = "magic";
  #need = 4;
  #head: number[] = [];
  #payloadLeft = 0;
  #payloadEnds: "frame" | "block" | "skippable" = "block";
  #checksum = false;
  #frames = 0;
  readonly #maxWindowBytes: number;

  constructor(maxWindowBytes: number) {
    this.#maxWindowBytes = maxWindowBytes;
  }

  /** Upper bound of the output of the blocks seen in this `scan` call. */
  #outputBound = 0;
  #budget = Infinity;
  #paused = false;

  /** Set when the last `scan` stopped at the end of a frame. */
  frameEnded = false;
  /** The ended frame's content checksum (low 32 bits of XXH64), if it carried one. */
  frameChecksum: number | undefined;

  /**
   * Advances over `chunk`, stopping right after a frame ends (see `frameEnded`) so the caller can
   * check that frame before feeding the next one. Returns the bytes consumed. Throws
   * FormatError on a bad or oversized frame.
   */
  scan(chunk: Uint8Array, outputBudgetBytes = Infinity): number {
    this.frameEnded = false;
    this.#outputBound = 0;
    this.#budget = outputBudgetBytes;
    this.#paused = false;
    let i = 0;
    while (i < chunk.length && !this.frameEnded && !this.#paused) {
      if (this.#state === "payload") {
        const n = Math.min(this.#payloadLeft, chunk.length - i);
        i += n;
        this.#payloadLeft -= n;
        if (this.#payloadLeft === 0) this.#endPayload();
        continue;
      }
      this.#head.push(chunk[i++]);
      if (this.#head.length === this.#need) this.#step();
    }
    return i;
  }

  /** True when the input so far ends exactly after a whole frame. */
  get atFrameBoundary(): boolean {
    return this.#frames > 0 && this.#state === "magic" && this.#head.length === 0;
  }

  #expect(state: WalkState, need: number): void {
    this.#state = state;
    this.#need = need;
    this.#head = [];
  }

  #payload(bytes: number, ends: "frame" | "block" | "skippable"): void {
    this.#payloadLeft = bytes;
    this.#payloadEnds = ends;
    this.#expect("payload", 0);
    if (bytes === 0) this.#endPayload();
  }

  #endPayload(): void {
    if (this.#payloadEnds === "block") {
      this.#expect("block", 3);
      if (this.#outputBound >= this.#budget) this.#paused = true;
    } else if (this.#payloadEnds === "frame" && this.#checksum) this.#expect("checksum", 4);
    else this.#endFrame(undefined);
  }

  #endFrame(checksum: number | undefined): void {
    this.#frames++;
    this.frameEnded = true;
    this.frameChecksum = checksum;
    this.#expect("magic", 4);
  }

  #step(): void {
    const h = this.#head;
    const le32 = (o: number) =>
      (h[o] | (h[o + 1] << 8) | (h[o + 2] << 16) | (h[o + 3] << 24)) >>> 0;
    switch (this.#state) {
      case "magic": {
        const magic = le32(0);
        if (magic === ZSTD_MAGIC) this.#expect("fhd", 1);
        else if ((magic & SKIPPABLE_MAGIC_MASK) === SKIPPABLE_MAGIC) this.#expect("skipSize", 4);
        else throw new FormatError("zstd: bad frame magic (corrupt, or trailing garbage)");
        return;
      }
      case "skipSize":
        this.#payload(le32(0), "skippable");
        return;
      case "fhd": {
        const fhd = h[0];
        if (fhd & 0x08) throw new FormatError("zstd: reserved frame header bit set");
        this.#checksum = (fhd & 0x04) !== 0;
        this.#state = "fheader"; // keeps the descriptor byte in #head
        this.#need = 1 + headerBytes(fhd);
        if (this.#need === 1) this.#step();
        return;
      }
      case "fheader": {
        const window = windowBytes(h);
        if (window > this.#maxWindowBytes) {
          throw new FormatError(
            `zstd: frame needs a ${window}-byte window (limit ${this.#maxWindowBytes})`,
            "recompress with a smaller window, or raise the limit if the input is trusted",
          );
        }
        this.#expect("block", 3);
        return;
      }
      case "block": {
        const header = h[0] | (h[1] << 8) | (h[2] << 16);
        const type = (header >> 1) & 3;
        if (type === 3) throw new FormatError("zstd: reserved block type");
        // Raw and RLE blocks say their output size; a compressed one is at most a full block.
        this.#outputBound += type === 2 ? MAX_BLOCK_BYTES : header >>> 3;
        // An RLE block stores one byte however large it expands.
        this.#payload(type === 1 ? 1 : header >>> 3, header & 1 ? "frame" : "block");
        return;
      }
      case "checksum":
        this.#endFrame(le32(0));
        return;
    }
  }
}

/** Frame header bytes after the descriptor: window descriptor, dictionary ID, content size. */
function headerBytes(fhd: number): number {
  const singleSegment = (fhd >> 5) & 1;
  return (singleSegment ? 0 : 1) + [0, 1, 2, 4][fhd & 3] + [singleSegment, 2, 4, 8][fhd >> 6];
}

/** RFC 8878 §3.1.1.1.2: window from the descriptor, or the content size for single segment. */
function windowBytes(h: number[]): number {
  const fhd = h[0];
  const singleSegment = (fhd >> 5) & 1;
  if (!singleSegment) {
    const base = 2 ** (10 + (h[1] >> 3));
    return base + (base / 8) * (h[1] & 7);
  }
  const fcsBytes = [1, 2, 4, 8][fhd >> 6];
  const at = 1 + [0, 1, 2, 4][fhd & 3];
  let size = 0;
  for (let k = fcsBytes - 1; k >= 0; k--) size = size * 256 + h[at + k];
  return fcsBytes === 2 ? size + 256 : size;
}

/**
 * Decompresses a zstd stream (one or more frames). Output is produced only as the consumer
 * pulls; corrupt input, a window over the limit, or input ending mid-frame is a FormatError.
 */
export function zstdDecompressStream(
  input: ReadableStream<Uint8Array>,
  maxWindowBytes = DEFAULT_MAX_ZSTD_WINDOW_BYTES,
): ReadableStream<Uint8Array> {
  const reader = input.getReader();
  const walker = new ZstdFrameWalker(maxWindowBytes);
  const ready: Uint8Array[] = [];
  let hash = new Xxh64();
  const decoder = new Decompress((chunk: Uint8Array) => {
    if (chunk.length === 0) return;
    hash.update(chunk);
    ready.push(chunk);
  });
  let pending: Uint8Array = new Uint8Array();
  let ended = false;
  /** Feeds at most one slice, never across a frame end, and checks each frame as it ends. */
  const feedSlice = () => {
    const slice = pending;
    const n = walker.scan(slice, FEED_OUTPUT_BUDGET_BYTES);
    try {
      decoder.push(slice.subarray(0, n), false);
    } catch (e) {
      throw new FormatError(`zstd: corrupt data (${(e as Error).message})`, undefined, {
        cause: e,
      });
    }
    pending = pending.subarray(n);
    if (walker.frameEnded) {
      // fzstd skips the checksum; all of this frame's output has been emitted by now.
      if (walker.frameChecksum !== undefined && hash.digestLow32() !== walker.frameChecksum) {
        throw new FormatError("zstd: content checksum mismatch (corrupt data)");
      }
      hash = new Xxh64();
    }
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      while (ready.length === 0) {
        if (ended) {
          controller.close();
          return;
        }
        if (pending.length === 0) {
          const { value, done } = await reader.read();
          if (done) {
            ended = true;
            if (!walker.atFrameBoundary) {
              throw new FormatError("zstd: input ends inside a frame (truncated)");
            }
            continue;
          }
          pending = value;
        }
        feedSlice();
      }
      controller.enqueue(ready.shift()!);
    },
    async cancel(reason) {
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}
