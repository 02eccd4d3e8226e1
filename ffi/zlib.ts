/**
 * The system zlib (libz.so.1, always present on Debian) for raw inflate from a checkpoint:
 * the symbol table and `RawInflater`, a z_stream kept in memory zlib can hold a pointer to.
 * Facts from zlib.h (1.2.13): struct z_stream_s layout (LP64, 112 bytes), Z_* constants,
 * `data_type` bits reported on every inflate() return.
 */
import { FormatError } from "../lib/errors.ts";

export const ZLIB_SYMBOLS = {
  // const char *zlibVersion(void);
  zlibVersion: { parameters: [], result: "pointer" },
  // int inflateInit2_(z_streamp strm, int windowBits, const char *version, int stream_size);
  inflateInit2_: { parameters: ["buffer", "i32", "pointer", "i32"], result: "i32" },
  // int inflate(z_streamp strm, int flush);
  inflate: { parameters: ["buffer", "i32"], result: "i32" },
  // int inflate(z_streamp strm, int flush);  — on a pool thread, so serving goes on meanwhile
  inflate_nonblocking: {
    name: "inflate",
    parameters: ["buffer", "i32"],
    result: "i32",
    nonblocking: true,
  },
  // int inflateEnd(z_streamp strm);
  inflateEnd: { parameters: ["buffer"], result: "i32" },
  // int inflateCopy(z_streamp dest, z_streamp source);
  inflateCopy: { parameters: ["buffer", "buffer"], result: "i32" },
  // int inflateReset(z_streamp strm);
  inflateReset: { parameters: ["buffer"], result: "i32" },
  // int inflatePrime(z_streamp strm, int bits, int value);
  inflatePrime: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  // int inflateSetDictionary(z_streamp strm, const Bytef *dictionary, uInt dictLength);
  inflateSetDictionary: { parameters: ["buffer", "buffer", "u32"], result: "i32" },
  // int inflateGetDictionary(z_streamp strm, Bytef *dictionary, uInt *dictLength);
  inflateGetDictionary: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  // uLong crc32(uLong crc, const Bytef *buf, uInt len);
  crc32: { parameters: ["u64", "buffer", "u32"], result: "u64" },
} as const satisfies Deno.ForeignLibraryInterface;

type ZlibSymbols = Deno.DynamicLibrary<typeof ZLIB_SYMBOLS>["symbols"];
let library: Deno.DynamicLibrary<typeof ZLIB_SYMBOLS> | undefined;

/** The opened libz (lazily: commands that never inflate need no FFI for it). */
export function zlib(): ZlibSymbols {
  library ??= Deno.dlopen("libz.so.1", ZLIB_SYMBOLS);
  return library.symbols;
}

// zlib.h constants.
export const Z_NO_FLUSH = 0;
export const Z_BLOCK = 5;
export const Z_OK = 0;
export const Z_STREAM_END = 1;
export const Z_NEED_DICT = 2;
export const Z_BUF_ERROR = -5;
/** data_type: inflate returned right after an end-of-block code. */
export const DATA_TYPE_BLOCK_END = 128;
/** data_type: the block being decoded is the last one of the deflate stream. */
export const DATA_TYPE_LAST_BLOCK = 64;
/** The deflate window (and the largest back-reference distance). */
export const DEFLATE_WINDOW_BYTES = 32768;

// struct z_stream_s on x86-64/LP64: pointers and uLong are 8 bytes, uInt/int 4.
const Z_STREAM_SIZE = 112;
const OFF_NEXT_IN = 0, OFF_AVAIL_IN = 8, OFF_NEXT_OUT = 24, OFF_AVAIL_OUT = 32;
const OFF_MSG = 48, OFF_DATA_TYPE = 88;

/** Memory outside the V8 heap, so a pointer to it stays valid (zlib keeps `next_*`). */
export function nativeBytes(length: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new ArrayBuffer(length));
}

function address(bytes: Uint8Array): bigint {
  const pointer = Deno.UnsafePointer.of(bytes as Uint8Array<ArrayBuffer>);
  return BigInt(Deno.UnsafePointer.value(pointer));
}

export interface InflateStep {
  status: number;
  consumed: number;
  produced: number;
  /** zlib's data_type after the call: unused bits of the last input byte + 64/128 flags. */
  dataType: number;
}

/**
 * A raw (windowBits −15) inflate stream. The z_stream lives in an ArrayBuffer that never moves
 * (zlib checks `state->strm == strm` on every call). Synchronous: one inflate call over a few
 * hundred KiB takes about a millisecond.
 */
export class RawInflater {
  readonly #stream = nativeBytes(Z_STREAM_SIZE);
  readonly #view = new DataView(this.#stream.buffer);
  #open = false;
  #busy = false;
  #endAfterBusy = false;

  /** A fresh raw inflate stream, or a copy of `source`'s state (zlib's inflateCopy). */
  constructor(source?: RawInflater) {
    const z = zlib();
    if (source) {
      if (!source.#open || source.#busy) throw new Error("inflateCopy of a stream in use");
      this.#check(z.inflateCopy(this.#stream, source.#stream), "inflateCopy");
    } else {
      const status = z.inflateInit2_(this.#stream, -15, z.zlibVersion(), Z_STREAM_SIZE);
      if (status !== Z_OK) throw new Error(`zlib inflateInit2 failed (${status})`);
    }
    this.#open = true;
  }

  /** Back to the start of a deflate stream (a new gzip member), keeping the allocation. */
  reset(): void {
    this.#check(zlib().inflateReset(this.#stream), "inflateReset");
  }

  /** Feeds the low `bits` bits of `value` before the next input byte (a mid-byte start). */
  prime(bits: number, value: number): void {
    if (bits === 0) return;
    this.#check(zlib().inflatePrime(this.#stream, bits, value), "inflatePrime");
  }

  setDictionary(window: Uint8Array<ArrayBuffer>): void {
    this.#check(
      zlib().inflateSetDictionary(this.#stream, window, window.length),
      "inflateSetDictionary",
    );
  }

  /** The last ≤ 32 KiB of output of the current deflate stream, front-padded with zeros. */
  window(): Uint8Array<ArrayBuffer> {
    const out = nativeBytes(DEFLATE_WINDOW_BYTES);
    const length = new Uint32Array(new ArrayBuffer(4));
    this.#check(
      zlib().inflateGetDictionary(this.#stream, out, new Uint8Array(length.buffer)),
      "inflateGetDictionary",
    );
    const have = length[0];
    if (have === DEFLATE_WINDOW_BYTES) return out;
    const padded = nativeBytes(DEFLATE_WINDOW_BYTES);
    padded.set(out.subarray(0, have), DEFLATE_WINDOW_BYTES - have);
    return padded;
  }

  /**
   * One inflate() call. `input` and `output` must come from `nativeBytes` (or be large enough
   * to live outside the V8 heap). Returns the zlib status; data errors become FormatError.
   */
  inflate(input: Uint8Array, output: Uint8Array, flush = Z_NO_FLUSH): InflateStep {
    this.#begin(input, output);
    return this.#finish(input, output, zlib().inflate(this.#stream, flush));
  }

  /**
   * inflate() on a pool thread: the event loop keeps serving while a span inflates, and
   * cursors of different spans inflate on different cores. `input`, `output` and this
   * inflater must not be touched until the promise settles.
   */
  async inflateAsync(
    input: Uint8Array,
    output: Uint8Array,
    flush = Z_NO_FLUSH,
  ): Promise<InflateStep> {
    this.#begin(input, output);
    this.#busy = true;
    try {
      return this.#finish(input, output, await zlib().inflate_nonblocking(this.#stream, flush));
    } finally {
      this.#busy = false;
      if (this.#endAfterBusy) zlib().inflateEnd(this.#stream);
    }
  }

  #begin(input: Uint8Array, output: Uint8Array): void {
    if (!this.#open) throw new Error("inflate after end");
    if (this.#busy) throw new Error("inflate while another inflate runs");
    // zlib refuses a NULL next_out outright (Z_STREAM_ERROR), which would read as corruption.
    if (output.length === 0) throw new Error("inflate needs output space");
    const v = this.#view;
    v.setBigUint64(OFF_NEXT_IN, input.length ? address(input) : 0n, true);
    v.setUint32(OFF_AVAIL_IN, input.length, true);
    v.setBigUint64(OFF_NEXT_OUT, output.length ? address(output) : 0n, true);
    v.setUint32(OFF_AVAIL_OUT, output.length, true);
  }

  #finish(input: Uint8Array, output: Uint8Array, status: number): InflateStep {
    const v = this.#view;
    const consumed = input.length - v.getUint32(OFF_AVAIL_IN, true);
    const produced = output.length - v.getUint32(OFF_AVAIL_OUT, true);
    // Clear the pointers: the buffers may be collected once this call returns.
    v.setBigUint64(OFF_NEXT_IN, 0n, true);
    v.setBigUint64(OFF_NEXT_OUT, 0n, true);
    if (status < 0 && status !== Z_BUF_ERROR || status === Z_NEED_DICT) {
      throw new FormatError(`corrupt deflate data: ${this.#message() ?? `zlib status ${status}`}`);
    }
    return { status, consumed, produced, dataType: v.getInt32(OFF_DATA_TYPE, true) };
  }

  /** Frees zlib's state; deferred until a running inflateAsync has returned. */
  end(): void {
    if (!this.#open) return;
    this.#open = false;
    if (this.#busy) {
      this.#endAfterBusy = true;
      return;
    }
    zlib().inflateEnd(this.#stream);
  }

  #message(): string | undefined {
    const raw = this.#view.getBigUint64(OFF_MSG, true);
    if (raw === 0n) return undefined;
    return Deno.UnsafePointerView.getCString(Deno.UnsafePointer.create(raw)!);
  }

  #check(status: number, call: string): void {
    if (status !== Z_OK) throw new Error(`zlib ${call} failed (${status})`);
  }
}

/** CRC-32 (gzip trailer) of `bytes`, continuing from `crc`. */
export function crc32(crc: number, bytes: Uint8Array<ArrayBuffer>): number {
  let value = BigInt(crc);
  for (let at = 0; at < bytes.length; at += 0x40000000) {
    const part = bytes.subarray(at, Math.min(bytes.length, at + 0x40000000));
    value = zlib().crc32(value, part, part.length) as bigint;
  }
  return Number(value);
}
