/**
 * The system libzstd (libzstd.so.1, Debian's libzstd1: dpkg itself depends on it) for streaming
 * zstd decompression: the symbol table and `ZstdDecoder`, a ZSTD_DStream fed through
 * ZSTD_inBuffer/ZSTD_outBuffer structs kept in memory the library can hold pointers to.
 * libzstd checks what a pure-JS decoder had to be guarded for: frame and block structure, the
 * window limit (ZSTD_d_windowLogMax) and each frame's content checksum. Facts from zstd.h and
 * zstd_errors.h (1.5.x; the parts used here are the stable API since 1.4.0).
 */
import { FormatError, UserError } from "../lib/errors.ts";

export const ZSTD_SYMBOLS = {
  // ZSTD_DStream* ZSTD_createDStream(void);
  ZSTD_createDStream: { parameters: [], result: "pointer" },
  // size_t ZSTD_freeDStream(ZSTD_DStream* zds);
  ZSTD_freeDStream: { parameters: ["pointer"], result: "usize" },
  // size_t ZSTD_initDStream(ZSTD_DStream* zds);
  ZSTD_initDStream: { parameters: ["pointer"], result: "usize" },
  // size_t ZSTD_DCtx_setParameter(ZSTD_DCtx* dctx, ZSTD_dParameter param, int value);
  ZSTD_DCtx_setParameter: { parameters: ["pointer", "i32", "i32"], result: "usize" },
  // size_t ZSTD_decompressStream(ZSTD_DStream* zds, ZSTD_outBuffer* output, ZSTD_inBuffer* input);
  // On a pool thread: the event loop (signal handlers, other downloads) runs meanwhile.
  ZSTD_decompressStream_nonblocking: {
    name: "ZSTD_decompressStream",
    parameters: ["pointer", "buffer", "buffer"],
    result: "usize",
    nonblocking: true,
  },
  // unsigned ZSTD_isError(size_t code);
  ZSTD_isError: { parameters: ["usize"], result: "u32" },
  // const char* ZSTD_getErrorName(size_t code);
  ZSTD_getErrorName: { parameters: ["usize"], result: "pointer" },
  // ZSTD_ErrorCode ZSTD_getErrorCode(size_t functionResult);
  ZSTD_getErrorCode: { parameters: ["usize"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

type ZstdSymbols = Deno.DynamicLibrary<typeof ZSTD_SYMBOLS>["symbols"];
let library: Deno.DynamicLibrary<typeof ZSTD_SYMBOLS> | undefined;

/** The opened libzstd (lazily: only zstd layers need it). */
export function zstd(): ZstdSymbols {
  if (!library) {
    try {
      library = Deno.dlopen("libzstd.so.1", ZSTD_SYMBOLS);
    } catch (error) {
      // Deno repeats its own prefix ("Could not open library: Could not open library: …").
      const message = error instanceof Error ? error.message.split("\n")[0] : String(error);
      const reason = message.replace(/^(Could not open library: )+/, "");
      throw new UserError(
        `cannot load libzstd.so.1 to decompress zstd (${reason})`,
        "install the libzstd1 package",
        { cause: error },
      );
    }
  }
  return library.symbols;
}

// zstd.h: ZSTD_dParameter.
const ZSTD_D_WINDOW_LOG_MAX = 100;
/** zstd.h: ZSTD_WINDOWLOG_ABSOLUTEMIN and ZSTD_WINDOWLOG_MAX_64. */
const MIN_WINDOW_LOG = 10, MAX_WINDOW_LOG = 31;
// zstd_errors.h: ZSTD_ErrorCode values (stable).
const ZSTD_ERROR_PREFIX_UNKNOWN = 10;
const ZSTD_ERROR_WINDOW_TOO_LARGE = 16;
const ZSTD_ERROR_CHECKSUM_WRONG = 22;

// struct ZSTD_inBuffer { const void* src; size_t size; size_t pos; } and ZSTD_outBuffer
// { void* dst; size_t size; size_t pos; } on LP64.
const BUFFER_STRUCT_SIZE = 24;
const OFF_POINTER = 0, OFF_SIZE = 8, OFF_POS = 16;

function address(bytes: Uint8Array<ArrayBuffer>): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes)));
}

export interface DecompressStep {
  consumed: number;
  produced: number;
  /**
   * True when the call ended a frame and flushed all of it (ZSTD_decompressStream returned 0):
   * input that stops here stops between frames.
   */
  frameDone: boolean;
}

/** Frees streams whose owner was dropped without `end()` (a consumer that stopped reading). */
const orphans = new FinalizationRegistry<Deno.PointerValue>((stream) => {
  if (stream) zstd().ZSTD_freeDStream(stream);
});

/**
 * A ZSTD_DStream refusing frames whose window exceeds 2^windowLog bytes. Each `decompress`
 * call is bounded by the sizes of its input and output (libzstd decodes at most that much),
 * and runs on a pool thread, so a caller awaiting one call per piece never blocks the event
 * loop for long, whatever the input.
 */
export class ZstdDecoder {
  #stream: Deno.PointerValue;
  readonly #windowLog: number;
  readonly #in = new ArrayBuffer(BUFFER_STRUCT_SIZE);
  readonly #out = new ArrayBuffer(BUFFER_STRUCT_SIZE);
  #busy = false;
  #endAfterBusy = false;

  /** `maxWindowBytes` is rounded down to a power of two (libzstd's limit is a log). */
  constructor(maxWindowBytes: number) {
    const z = zstd();
    this.#windowLog = Math.min(
      MAX_WINDOW_LOG,
      Math.max(MIN_WINDOW_LOG, Math.floor(Math.log2(maxWindowBytes))),
    );
    const stream = z.ZSTD_createDStream();
    if (stream === null) throw new Error("ZSTD_createDStream failed (out of memory)");
    this.#stream = stream;
    orphans.register(this, stream, this);
    this.#check(z.ZSTD_initDStream(stream), "ZSTD_initDStream");
    this.#check(
      z.ZSTD_DCtx_setParameter(stream, ZSTD_D_WINDOW_LOG_MAX, this.#windowLog),
      "ZSTD_DCtx_setParameter",
    );
  }

  /** The largest window accepted, in bytes. */
  get maxWindowBytes(): number {
    return 2 ** this.#windowLog;
  }

  /**
   * One ZSTD_decompressStream call from `input` into `output`: views of ArrayBuffers outside
   * the V8 heap (`nativeBytes`), left untouched until the promise settles. Corrupt data, a frame over
   * the window limit and a wrong content checksum are FormatErrors.
   */
  async decompress(
    input: Uint8Array<ArrayBuffer>,
    output: Uint8Array<ArrayBuffer>,
  ): Promise<DecompressStep> {
    if (this.#stream === null) throw new Error("zstd decompress after end");
    if (this.#busy) throw new Error("zstd decompress while another call runs");
    if (output.length === 0) throw new Error("zstd decompress needs output space");
    const inView = new DataView(this.#in), outView = new DataView(this.#out);
    inView.setBigUint64(OFF_POINTER, input.length ? address(input) : 0n, true);
    inView.setBigUint64(OFF_SIZE, BigInt(input.length), true);
    inView.setBigUint64(OFF_POS, 0n, true);
    outView.setBigUint64(OFF_POINTER, address(output), true);
    outView.setBigUint64(OFF_SIZE, BigInt(output.length), true);
    outView.setBigUint64(OFF_POS, 0n, true);
    this.#busy = true;
    let result: bigint;
    try {
      // usize results are typed bigint; BigInt() also covers a small one handed back as a number.
      result = BigInt(
        await zstd().ZSTD_decompressStream_nonblocking(
          this.#stream,
          new Uint8Array(this.#out),
          new Uint8Array(this.#in),
        ),
      );
    } finally {
      this.#busy = false;
      if (this.#endAfterBusy) this.#free();
    }
    const step = {
      consumed: Number(inView.getBigUint64(OFF_POS, true)),
      produced: Number(outView.getBigUint64(OFF_POS, true)),
      frameDone: result === 0n,
    };
    // The buffers may be collected once this call returns.
    inView.setBigUint64(OFF_POINTER, 0n, true);
    outView.setBigUint64(OFF_POINTER, 0n, true);
    if (zstd().ZSTD_isError(result)) throw this.#dataError(result);
    return step;
  }

  /** Frees libzstd's state (window included); deferred until a running call has returned. */
  end(): void {
    if (this.#stream === null) return;
    if (this.#busy) this.#endAfterBusy = true;
    else this.#free();
  }

  #free(): void {
    if (this.#stream === null) return;
    orphans.unregister(this);
    zstd().ZSTD_freeDStream(this.#stream);
    this.#stream = null;
  }

  #dataError(result: bigint): FormatError {
    const code = zstd().ZSTD_getErrorCode(result);
    if (code === ZSTD_ERROR_WINDOW_TOO_LARGE) {
      return new FormatError(
        `zstd: a frame needs a window over the ${this.maxWindowBytes}-byte limit`,
        `recompress it with a window of at most ${this.maxWindowBytes >> 20} MiB ` +
          `(zstd --long=${this.#windowLog} or less)`,
      );
    }
    if (code === ZSTD_ERROR_CHECKSUM_WRONG) {
      return new FormatError("zstd: content checksum mismatch (corrupt data)");
    }
    if (code === ZSTD_ERROR_PREFIX_UNKNOWN) {
      return new FormatError("zstd: bad frame magic (corrupt, or trailing garbage)");
    }
    return new FormatError(`zstd: corrupt data (${errorName(result)})`);
  }

  #check(result: bigint, call: string): void {
    if (zstd().ZSTD_isError(result)) throw new Error(`${call} failed: ${errorName(result)}`);
  }
}

function errorName(result: bigint): string {
  const name = zstd().ZSTD_getErrorName(result);
  return name === null ? "unknown error" : Deno.UnsafePointerView.getCString(name);
}
