/**
 * Opens a layer tar that may be compressed: sniffs gzip or zstd magic and returns the
 * uncompressed stream, with optional caps against decompression bombs.
 *
 * gzip goes through node:zlib's gunzip rather than the web DecompressionStream: Deno's
 * DecompressionStream("gzip") fails on a second gzip member ("failed to write whole buffer"),
 * and multi-member gzip is legal (pigz, concatenated layers); gunzip reads every member.
 */
import { createGunzip } from "../node_builtins.ts";
import { FormatError, UserError } from "../errors.ts";
import { DEFAULT_MAX_ZSTD_WINDOW_BYTES, zstdDecompressStream } from "./zstd.ts";
import { preadFully } from "../../ffi/files.ts";

export type Compression = "none" | "gzip" | "zstd";

export interface DecompressOptions {
  /** Fail once the uncompressed stream passes this many bytes. Default: no cap. */
  maxOutputBytes?: number;
  /**
   * Fail once output exceeds `maxRatio` × compressed input, checked after the first
   * `ratioGraceBytes` of output (default 64 MiB) so small, very compressible layers pass.
   * Default: no cap. gzip cannot exceed ~1032:1; zstd can reach far higher on runs of zeros.
   */
  maxRatio?: number;
  ratioGraceBytes?: number;
  /** Largest zstd window accepted (default 128 MiB, the zstd CLI's own default limit). */
  maxZstdWindowBytes?: number;
}

const GZIP_MAGIC = [0x1f, 0x8b]; // RFC 1952 §2.3.1
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd]; // RFC 8878 §3.1.1
const XZ_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const BZIP2_MAGIC = [0x42, 0x5a, 0x68];
const SNIFF_BYTES = 6;

const startsWith = (head: Uint8Array, magic: number[]) =>
  head.length >= magic.length && magic.every((b, i) => head[i] === b);

/** Compression of a stream from its first bytes; bzip2 and xz are recognised and refused. */
export function sniffCompression(head: Uint8Array): Compression {
  if (startsWith(head, GZIP_MAGIC)) return "gzip";
  if (startsWith(head, ZSTD_MAGIC)) return "zstd";
  if (startsWith(head, XZ_MAGIC) || startsWith(head, BZIP2_MAGIC)) {
    throw new FormatError(
      "xz/bzip2 compressed tar is not supported",
      "OCI layers are tar, tar+gzip or tar+zstd; decompress it first",
    );
  }
  return "none";
}

/**
 * Returns the uncompressed tar bytes of `input` (a tar, tar.gz or tar.zst stream).
 *
 * @example
 * const { stream } = await decompressTar(file.readable, { maxOutputBytes: 8 << 30 });
 * for await (const entry of readTar(stream)) …
 */
export async function decompressTar(
  input: ReadableStream<Uint8Array>,
  options: DecompressOptions = {},
): Promise<{ stream: ReadableStream<Uint8Array>; compression: Compression }> {
  const { head, rest } = await peek(input, SNIFF_BYTES);
  const compression = sniffCompression(head);
  let inputBytes = 0;
  const counted = observe(rest, (chunk) => {
    inputBytes += chunk.length;
  });
  let stream: ReadableStream<Uint8Array>;
  if (compression === "gzip") stream = gunzip(counted);
  else if (compression === "zstd") {
    stream = zstdDecompressStream(
      counted,
      options.maxZstdWindowBytes ?? DEFAULT_MAX_ZSTD_WINDOW_BYTES,
    );
  } else stream = counted;
  if (options.maxOutputBytes === undefined && options.maxRatio === undefined) {
    return { stream, compression };
  }
  const maxOutput = options.maxOutputBytes ?? Infinity;
  const maxRatio = options.maxRatio ?? Infinity;
  const grace = options.ratioGraceBytes ?? 64 << 20;
  let outputBytes = 0;
  const capped = observe(stream, (chunk) => {
    outputBytes += chunk.length;
    if (outputBytes > maxOutput) {
      throw new FormatError(
        `uncompressed tar exceeds ${maxOutput} bytes`,
        "the layer is larger than allowed (or a decompression bomb)",
      );
    }
    if (outputBytes > grace && outputBytes > maxRatio * inputBytes) {
      throw new FormatError(
        `tar expands more than ${maxRatio}:1 (${outputBytes} bytes from ${inputBytes})`,
        "a decompression bomb, or raise the ratio limit if the input is trusted",
      );
    }
  });
  return { stream: capped, compression };
}

/** What openTar reads a tar file through: a Deno.FsFile, or fdTarFile's descriptor. */
export type TarFile = Pick<Deno.FsFile, "read" | "readSync" | "seek" | "close">;

/**
 * A descriptor the caller opened (with its own checks: no symlink followed, a regular file) as
 * a TarFile read from its start; closing it is left to the caller, who may read it again.
 */
export function fdTarFile(fd: number, what: string): TarFile {
  let position = 0;
  const readSync = (buffer: Uint8Array) => {
    if (buffer.length === 0) return 0;
    const n = preadFully(fd, buffer, position, "pread", what);
    position += n;
    return n === 0 ? null : n;
  };
  return {
    // Read here, not on a pool thread: no read is left in flight when the caller closes `fd`.
    read: (buffer) => Promise.resolve(readSync(buffer)),
    readSync,
    seek(offset) {
      position = Number(offset);
      return Promise.resolve(position);
    },
    close() {},
  };
}

/**
 * Opens a tar file by path (or reads `file`), or standard input for "-", and decompresses it
 * as needed. The returned stream closes the file when it ends or is cancelled.
 */
export async function openTar(
  path: string | TarFile,
  options: OpenTarOptions = {},
): Promise<{ stream: ReadableStream<Uint8Array>; compression: Compression }> {
  if (path === "-") {
    const counted = options.onInputBytes
      ? Deno.stdin.readable.pipeThrough(countingBytes(options.onInputBytes))
      : Deno.stdin.readable;
    return await decompressTar(counted, options);
  }
  const file = typeof path === "string" ? await Deno.open(path) : path;
  const capped = options.maxOutputBytes !== undefined || options.maxRatio !== undefined;
  if (options.reuseChunks && !capped) {
    let compression: Compression;
    try {
      compression = sniffCompression(await readHead(file, SNIFF_BYTES));
      await file.seek(0, Deno.SeekMode.Start);
    } catch (error) {
      file.close();
      throw error;
    }
    if (compression === "none") {
      return { stream: fileChunks(file, true, options.onInputBytes), compression };
    }
  }
  return await decompressTar(fileChunks(file, false, options.onInputBytes), options);
}

/** Passes chunks on unchanged, telling `onBytes` the running total. */
function countingBytes(
  onBytes: (doneBytes: number) => void,
): TransformStream<Uint8Array, Uint8Array> {
  let doneBytes = 0;
  return new TransformStream({
    transform(chunk, controller) {
      doneBytes += chunk.length;
      onBytes(doneBytes);
      controller.enqueue(chunk);
    },
  });
}

export interface OpenTarOptions extends DecompressOptions {
  /**
   * An uncompressed file (without caps) is read into two buffers in turn instead of a fresh
   * one per chunk: a chunk's bytes, and every view of them, are then valid only until the
   * reader has taken the chunk after the next one. For a consumer that copies what it keeps
   * (the build's scan: the tar reader copies header bytes it holds across reads, data is
   * referenced by offset or copied to the spool at once). A fresh 256 KiB chunk per read
   * lived until V8's next full collection, which the external-memory limit lets wait for
   * tens of MB of them. Reads are synchronous then (the build's scan has nothing else to do).
   */
  reuseChunks?: boolean;
  /** Told the bytes read from the file or standard input so far (compressed, if it is). */
  onInputBytes?: (doneBytes: number) => void;
}

/** Up to `n` bytes from the start of `file` (fewer when it is shorter). */
async function readHead(file: TarFile, n: number): Promise<Uint8Array> {
  const head = new Uint8Array(n);
  let have = 0;
  while (have < n) {
    const got = await file.read(head.subarray(have));
    if (got === null) break;
    have += got;
  }
  return head.subarray(0, have);
}

/** fileChunks()' read size; FsFile.readable reads 64 KiB (1 MiB saved no more CPU, held ~8 MB). */
const FILE_CHUNK_BYTES = 256 << 10;

/**
 * A file as a pull stream of fresh 256 KiB chunks (readers keep views of them), or of two
 * buffers in turn (`reuse`, see OpenTarOptions.reuseChunks), closed at its end or on cancel.
 * Every chunk passes several pull streams and the tar reader, and that per-chunk cost was most
 * of reading a plain tar: a 141 MB tar took 2,160 chunks of 64 KiB (build of the benchmark
 * tree's tar: 0.75 -> 0.62 s CPU, median of 5 interleaved runs).
 */
function fileChunks(
  file: TarFile,
  reuse: boolean,
  onBytes?: (doneBytes: number) => void,
): ReadableStream<Uint8Array> {
  const buffers = reuse ? [new Uint8Array(FILE_CHUNK_BYTES), new Uint8Array(FILE_CHUNK_BYTES)] : [];
  let reads = 0;
  let doneBytes = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const chunk = reuse ? buffers[reads++ & 1] : new Uint8Array(FILE_CHUNK_BYTES);
      let n: number | null;
      try {
        // Reused buffers are read synchronously: an async read passes through a blocking-pool
        // thread whose allocations stay in that thread's malloc arena (the same 1,000,000-member
        // scan: 162 MB RSS read synchronously, 188-213 MB asynchronously).
        n = reuse ? file.readSync(chunk) : await file.read(chunk);
      } catch (error) {
        file.close();
        throw error;
      }
      if (n === null) {
        file.close();
        controller.close();
      } else {
        doneBytes += n;
        onBytes?.(doneBytes);
        controller.enqueue(n === chunk.length ? chunk : chunk.subarray(0, n));
      }
    },
    cancel() {
      file.close();
    },
  }, { highWaterMark: 0 });
}

/**
 * gunzip as a pull stream. zlib is driven in paused mode: one input chunk is written only when
 * no output is waiting, so memory holds at most a chunk in and zlib's own buffers out. (Node's
 * Duplex.toWeb adapter keeps pushing after the web side is cancelled and crashes the process.)
 */
function gunzip(input: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const zlib = createGunzip();
  const reader = input.getReader();
  let failure: Error | undefined;
  let ended = false;
  let inputDone = false;
  let writePending = false;
  let wake = () => {};
  zlib.on("readable", () => wake());
  zlib.on("end", () => {
    ended = true;
    wake();
  });
  zlib.on("error", (e: Error) => {
    failure = e;
    wake();
  });
  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        if (failure) throw failure;
        const out: Uint8Array | null = zlib.read();
        if (out !== null) {
          controller.enqueue(new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
          return;
        }
        if (ended) {
          controller.close();
          return;
        }
        const progress = new Promise<void>((resolve) => (wake = resolve));
        if (!inputDone && !writePending) {
          const { value, done } = await reader.read();
          if (done) {
            inputDone = true;
            zlib.end();
          } else {
            writePending = true;
            zlib.write(value, () => {
              writePending = false;
              wake();
            });
          }
        }
        await progress;
      }
    },
    async cancel(reason) {
      zlib.destroy();
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  return asFormatErrors(stream, "gzip");
}

/** Passes `source` through, turning its failures (zlib's "incorrect header check", …) into one-line FormatErrors. */
function asFormatErrors(
  source: ReadableStream<Uint8Array>,
  what: string,
): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await reader.read();
      } catch (e) {
        // Our own errors are not the data's: a download that broke off says so itself.
        if (e instanceof UserError) throw e;
        const message = e instanceof Error ? e.message : String(e);
        throw new FormatError(`${what}: corrupt or truncated data (${message})`, undefined, {
          cause: e,
        });
      }
      if (result.done) controller.close();
      else controller.enqueue(result.value);
    },
    async cancel(reason) {
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/**
 * Passes `source` through one chunk per pull, calling `check` on each (it may throw to fail the
 * stream). A pull stream rather than a TransformStream: Deno's TransformStream with zero
 * high-water marks on both sides never delivers a chunk.
 */
function observe(
  source: ReadableStream<Uint8Array>,
  check: (chunk: Uint8Array) => void,
): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) {
        controller.close();
        return;
      }
      try {
        check(value);
      } catch (e) {
        await reader.cancel(e).catch(() => {});
        throw e;
      }
      controller.enqueue(value);
    },
    async cancel(reason) {
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** Reads at least `n` bytes (fewer only at EOF) and returns them with a stream of everything. */
async function peek(
  input: ReadableStream<Uint8Array>,
  n: number,
): Promise<{ head: Uint8Array; rest: ReadableStream<Uint8Array> }> {
  const reader = input.getReader();
  const chunks: Uint8Array[] = [];
  let have = 0;
  while (have < n) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    have += value.length;
  }
  const head = new Uint8Array(have);
  let at = 0;
  for (const c of chunks) {
    head.set(c, at);
    at += c.length;
  }
  const rest = new ReadableStream<Uint8Array>({
    start(controller) {
      if (head.length > 0) controller.enqueue(head);
    },
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    async cancel(reason) {
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  return { head, rest };
}
