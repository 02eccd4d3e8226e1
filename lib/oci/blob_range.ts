/**
 * The parts of a blob read (blob_range_read.ts has the reads): Content-Range, the body sinks,
 * copying a body into one, and the checks of a reply.
 */
import { FormatError, OciError } from "../errors.ts";
import type { RegistryClient } from "./client.ts";
import { redirectTargetOf, replyCodingOf } from "./document.ts";
import type { RetryPolicy } from "./retry.ts";

/** `Content-Range: bytes FIRST-LAST/TOTAL` (RFC 9110 §14.4); TOTAL may be `*`. */
export interface ContentRange {
  first: number;
  last: number;
  total?: number;
}

const CONTENT_RANGE = /^bytes ([0-9]{1,16})-([0-9]{1,16})\/([0-9]{1,16}|\*)$/;

/** Parses a byte Content-Range; undefined when malformed or inconsistent. */
export function parseContentRange(header: string | null): ContentRange | undefined {
  const match = header === null ? null : CONTENT_RANGE.exec(header.trim());
  if (!match) return undefined;
  const first = Number(match[1]);
  const last = Number(match[2]);
  const total = match[3] === "*" ? undefined : Number(match[3]);
  if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || last < first) return undefined;
  if (total !== undefined && (!Number.isSafeInteger(total) || last >= total)) return undefined;
  return total === undefined ? { first, last } : { first, last, total };
}

/**
 * Takes consecutive body bytes: `bytes` (a view valid only until the returned promise
 * settles: it is a reused buffer) belong at `at` in the requested range.
 */
export type BodySink = (bytes: Uint8Array, at: number) => void | Promise<void>;

/**
 * A BodySink that says where the next body bytes belong: `into()` is a view (at least one
 * byte) of the caller's own buffer, the body is read straight into it (BYOB) and the sink is
 * then called with the filled start of that memory, without the copy from a scratch buffer
 * (a disk-cache fill of a verified layer: the 1 MiB table chunk being assembled). The read
 * transfers the view's ArrayBuffer: `bytes` is the same memory under a new ArrayBuffer, which
 * the caller uses from then on; a body that ends hands it back with an empty `bytes`. A body
 * that breaks off keeps it: into() then finds its buffer gone and throws, which
 * readBlobRangeTo asks before it would resume (no GET for bytes the sink cannot take; the
 * caller starts again where that memory began). Bytes dropped before the range (a 200 that
 * ignored Range) and bodies that are no byte stream still come through the scratch buffer, as
 * for any sink.
 */
export type PlacedBodySink = BodySink & { into(): Uint8Array };

/**
 * What a sink may carry when its caller restarts the read on a failure (a PlacedBodySink whose
 * buffer a broken body took): the retry policy of the first read is kept here, and a restart
 * with the same holder goes on under its deadline and attempt count instead of a fresh one —
 * with a fresh one, a registry that sent a few bytes and went silent held a read for three
 * stall times instead of two.
 */
export interface RetryHolder {
  policy?: RetryPolicy;
}

/** The RetryHolder a sink carries (`sink.retry`), if any. */
export function retryHolderOf(sink: BodySink | Uint8Array): RetryHolder | undefined {
  return (sink as { retry?: RetryHolder }).retry;
}

/** A PlacedBodySink's into(), or undefined for any other sink. */
export function intoOf(sink: BodySink | Uint8Array): (() => Uint8Array) | undefined {
  const into = (sink as Partial<PlacedBodySink>).into;
  return typeof into === "function" ? into : undefined;
}

/**
 * Body bytes are read into this many bytes of one reused buffer per body (BYOB), not into a
 * fresh buffer per network read that V8 frees only when it gets to it: a cold read of a
 * 136 MB layer left tens of MB of those behind in the server's RSS.
 */
const SCRATCH_BYTES = 256 << 10;
const MAX_POOLED_SCRATCH = 8;
const scratchBuffers: Uint8Array[] = [];

/**
 * Reads the next body bytes into `scratch` when the stream takes a buffer (at most `limit` of
 * them: a body kept open for the next read must not have given bytes nobody took), else its own.
 */
async function readBody(
  reader: ReadableStreamBYOBReader | ReadableStreamDefaultReader<Uint8Array>,
  scratch: { buffer?: Uint8Array },
  limit: number,
): Promise<Uint8Array | undefined> {
  if (!(reader instanceof ReadableStreamBYOBReader)) {
    const { done, value } = await reader.read();
    return done ? undefined : value;
  }
  const buffer = scratch.buffer ?? scratchBuffers.pop() ?? new Uint8Array(SCRATCH_BYTES);
  const { done, value } = await reader.read(
    limit < buffer.length ? buffer.subarray(0, Math.max(1, limit)) : buffer,
  );
  // The stream transferred the buffer: the same memory comes back under a new object.
  scratch.buffer = value ? new Uint8Array(value.buffer) : undefined;
  return done || !value ? undefined : value;
}

/** A BYOB reader of `body` when it is a byte stream (HTTP bodies, stdin), else a plain one. */
export function bodyReader(
  body: ReadableStream<Uint8Array>,
): ReadableStreamBYOBReader | ReadableStreamDefaultReader<Uint8Array> {
  try {
    return body.getReader({ mode: "byob" });
  } catch {
    return body.getReader(); // not a byte stream (a test double): chunks as they come
  }
}

/**
 * `chunk` without the first `skip` bytes of the body still to drop (a 200 that ignored Range
 * starts at byte 0): `chunk` undefined when all of it is dropped, and what remains to drop.
 */
export function skipLeading<T extends Uint8Array>(
  chunk: T,
  skip: number,
): { chunk?: T; skip: number } {
  if (skip <= 0) return { chunk, skip };
  if (chunk.byteLength <= skip) return { skip: skip - chunk.byteLength };
  return { chunk: chunk.subarray(skip) as T, skip: 0 };
}

/**
 * Hands body bytes to `sink` at `at…`, first discarding `skip` bytes, until `want` bytes are
 * in; then cancels the rest of the body. Returns how many bytes were passed on and the stream
 * error, if the body broke off, so the caller can resume from there (a sink error is thrown).
 */
export async function copyBody(
  body: ReadableStream<Uint8Array>,
  sink: BodySink | Uint8Array,
  at: number,
  skip: number,
  want: number,
  progress?: { progressed(bytes?: number): void },
): Promise<{ copied: number; error?: unknown }> {
  const reader = bodyReader(body);
  try {
    const { copied, error } = await copyFrom(reader, sink, at, skip, want, progress);
    return { copied, error };
  } finally {
    // Stops the transfer of anything beyond what we need (a 200 that ignored the range).
    reader.cancel().catch(() => {});
  }
}

/** What copyFrom did with a body. */
export interface Copied {
  copied: number;
  /** The stream's error, when the body broke off. */
  error?: unknown;
  /** Body bytes read: dropped before the range, passed on, and dropped after it. */
  consumed: number;
  /** The body ended (done) before `want` bytes were in. */
  ended: boolean;
  /** The last read brought bytes past the range (dropped): the body is not where it seems. */
  overran: boolean;
}

/**
 * copyBody on a reader it leaves open: the caller cancels it, or keeps it for a later read
 * (open_bodies.ts) when it neither ended nor overran.
 */
export async function copyFrom(
  reader: ReadableStreamBYOBReader | ReadableStreamDefaultReader<Uint8Array>,
  sink: BodySink | Uint8Array,
  at: number,
  skip: number,
  want: number,
  progress?: { progressed(bytes?: number): void },
): Promise<Copied> {
  const write: BodySink = sink instanceof Uint8Array
    ? (bytes, where) => sink.set(bytes, where)
    : sink;
  const scratch: { buffer?: Uint8Array } = {};
  const into = reader instanceof ReadableStreamBYOBReader ? intoOf(sink) : undefined;
  let copied = 0;
  let consumed = 0;
  const result = (ended: boolean, error?: unknown, overran = false): Copied =>
    error === undefined
      ? { copied, consumed, ended, overran }
      : { copied, error, consumed, ended, overran };
  try {
    // A sink whose buffer an earlier body took (it broke off mid-read) says so now (into()
    // throws), before bytes come through the scratch: their scratch memory, at the offset the
    // sink's buffer was filled to, would pass for that buffer handed back.
    into?.();
    while (copied < want) {
      let chunk: Uint8Array | undefined;
      if (into && skip <= 0) {
        // Straight into the sink's buffer (PlacedBodySink).
        const target = into();
        let read: ReadableStreamReadResult<Uint8Array>;
        try {
          read = await (reader as ReadableStreamBYOBReader).read(
            target.length > want - copied ? target.subarray(0, want - copied) : target,
          );
        } catch (error) {
          return result(false, error);
        }
        if (read.done) {
          if (read.value) await write(read.value.subarray(0, 0), at + copied);
          return result(true);
        }
        chunk = read.value;
      } else {
        try {
          chunk = await readBody(reader, scratch, Math.max(0, skip) + want - copied);
        } catch (error) {
          return result(false, error);
        }
      }
      if (!chunk) return result(true);
      consumed += chunk.byteLength;
      progress?.progressed(chunk.byteLength);
      const kept = skipLeading(chunk, skip);
      skip = kept.skip;
      if (!kept.chunk) continue;
      chunk = kept.chunk;
      const n = Math.min(chunk.byteLength, want - copied);
      await write(n === chunk.byteLength ? chunk : chunk.subarray(0, n), at + copied);
      progress?.progressed(); // a slow sink (a disk) is not the registry's stall
      copied += n;
      if (n < chunk.byteLength) return result(false, undefined, true);
    }
    return result(false);
  } finally {
    // Back for the next body: the stream gave it back whole (no read is pending now).
    if (
      scratch.buffer?.byteLength === SCRATCH_BYTES && scratchBuffers.length < MAX_POOLED_SCRATCH
    ) scratchBuffers.push(scratch.buffer);
  }
}

export async function checkDeclaredSize(
  response: Response,
  digest: string,
  realBytes: number,
  declaredBytes: number,
): Promise<void> {
  if (realBytes === declaredBytes) return;
  await response.body?.cancel();
  throw new FormatError(
    `blob ${digest} is ${realBytes} bytes but its descriptor declares ${declaredBytes}`,
    "the manifest does not describe this blob; push the image again",
  );
}

/**
 * A 200 whose Content-Length is short of the blob's declared size: the reply was cut (a proxy on
 * the way), far likelier than a manifest declaring the wrong size (checkDeclaredSize's hint,
 * "push the image again", sent users after the wrong cause).
 */
export async function checkReplyLength(
  response: Response,
  host: string,
  digest: string,
  replyBytes: number,
  declaredBytes: number,
): Promise<void> {
  if (replyBytes >= declaredBytes) return;
  await response.body?.cancel();
  throw new OciError(
    `registry ${host} sent blob ${digest} whole (200), but its reply ended at ${replyBytes} of ` +
      `the blob's ${declaredBytes} bytes (Content-Length: ${replyBytes})`,
    "a proxy on the way cuts replies short (let the registry's replies through whole), or the " +
      "manifest declares the wrong size for this blob",
  );
}

/** Throws the OciError for a blob GET that failed with `response`'s status. */
export async function blobStatusError(
  client: RegistryClient,
  response: Response,
  repository: string,
  digest: string,
): Promise<never> {
  await response.body?.cancel();
  const where = `${client.registry}/${repository}@${digest}`;
  // A reply from where the registry redirected the GET (object storage) names that host.
  const redirectHost = redirectTargetOf(client, response);
  const by = redirectHost === undefined
    ? ""
    : ` by ${redirectHost}, where registry ${client.host} redirected the GET`;
  const error = response.status === 404
    ? new OciError(
      `blob not found: ${where} (404)${by}`,
      "check the digest with `erofs-oci inspect`",
    )
    : response.status === 403
    ? new OciError(`access to blob ${where} denied (403)${by}`)
    : new OciError(
      `${
        redirectHost === undefined
          ? `registry ${client.host}`
          : `${redirectHost}, where registry ${client.host} redirected the GET,`
      } answered ${response.status} for blob ${where}`,
    );
  error.status = response.status;
  throw error;
}

export { replyCodingOf } from "./document.ts";

/**
 * A blob's bytes come as they are: a ranged GET makes fetch ask for `identity` (and a download
 * asks for it itself), and a reply compressed anyway (a proxy's gzip) would be taken for the
 * blob's own bytes. For a 200 or 206: an error reply's encoding is no concern of the blob's.
 */
export async function refuseContentEncoding(
  response: Response,
  host: string,
  digest: string,
): Promise<void> {
  const coding = replyCodingOf(response);
  if (coding === undefined) return;
  await response.body?.cancel();
  throw new OciError(
    `registry ${host} sent ${digest} with ${coding}: a blob's bytes must come as they are`,
    "a proxy on the way compresses replies: turn that off for the registry",
  );
}
