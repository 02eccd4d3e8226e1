import { FormatError, OciError } from "../errors.ts";
import { debug, warn } from "../log.ts";
import { stallMs, StallWatch } from "./stall_watch.ts";
import type { RegistryClient } from "./client.ts";
import { pullScope } from "./scope.ts";
import { redirectTargetOf } from "./document.ts";
import {
  backoff,
  describeFailure,
  isNetworkError,
  policyAfterAttempt,
  type RetryPolicy,
} from "./retry.ts";
import { observeBlobGet } from "../source/fetch_metrics.ts";

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

/** Reads the next body bytes into `scratch` when the stream takes a buffer, else its own. */
async function readBody(
  reader: ReadableStreamBYOBReader | ReadableStreamDefaultReader<Uint8Array>,
  scratch: { buffer?: Uint8Array },
): Promise<Uint8Array | undefined> {
  if (!(reader instanceof ReadableStreamBYOBReader)) {
    const { done, value } = await reader.read();
    return done ? undefined : value;
  }
  const { done, value } = await reader.read(
    scratch.buffer ?? scratchBuffers.pop() ?? new Uint8Array(SCRATCH_BYTES),
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
  const write: BodySink = sink instanceof Uint8Array
    ? (bytes, where) => sink.set(bytes, where)
    : sink;
  const reader = bodyReader(body);
  const scratch: { buffer?: Uint8Array } = {};
  const into = reader instanceof ReadableStreamBYOBReader ? intoOf(sink) : undefined;
  let copied = 0;
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
        let result: ReadableStreamReadResult<Uint8Array>;
        try {
          result = await (reader as ReadableStreamBYOBReader).read(
            target.length > want - copied ? target.subarray(0, want - copied) : target,
          );
        } catch (error) {
          return { copied, error };
        }
        if (result.done) {
          if (result.value) await write(result.value.subarray(0, 0), at + copied);
          return { copied };
        }
        chunk = result.value;
      } else {
        try {
          chunk = await readBody(reader, scratch);
        } catch (error) {
          return { copied, error };
        }
      }
      if (!chunk) return { copied };
      progress?.progressed(chunk.byteLength);
      const kept = skipLeading(chunk, skip);
      skip = kept.skip;
      if (!kept.chunk) continue;
      chunk = kept.chunk;
      const n = Math.min(chunk.byteLength, want - copied);
      await write(n === chunk.byteLength ? chunk : chunk.subarray(0, n), at + copied);
      progress?.progressed(); // a slow sink (a disk) is not the registry's stall
      copied += n;
    }
    return { copied };
  } finally {
    // Stops the transfer of anything beyond what we need (a 200 that ignored the range).
    reader.cancel().catch(() => {});
    // Back for the next body: the stream gave it back whole (no read is pending now).
    if (
      scratch.buffer?.byteLength === SCRATCH_BYTES && scratchBuffers.length < MAX_POOLED_SCRATCH
    ) scratchBuffers.push(scratch.buffer);
  }
}

async function checkDeclaredSize(
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

/**
 * Reads exactly `length` bytes at `offset` of a blob (see RegistryClient.readBlobRange). One
 * ranged GET normally; a 206 is checked against its Content-Range, a 200 that ignored the range
 * is skipped forward and cancelled once enough arrived, and a body that breaks off is resumed
 * from the bytes already received. With `expectedSizeBytes` (the descriptor's size) the real size
 * the registry reports (Content-Range total, or the length of a 200) must equal it: a blob that
 * is not the size its manifest declares is a FormatError before any of its bytes are used.
 */
export async function readBlobRange(
  client: RegistryClient,
  repository: string,
  digest: string,
  offset: number,
  length: number,
  signal?: AbortSignal,
  expectedSizeBytes?: number,
  from: BlobReadFrom = "any host",
): Promise<Uint8Array> {
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new RangeError(`invalid blob range offset=${offset} length=${length}`);
  }
  const out = new Uint8Array(length);
  await readBlobRangeTo(
    client,
    repository,
    digest,
    offset,
    length,
    out,
    signal,
    expectedSizeBytes,
    from,
  );
  return out;
}

/**
 * Who may answer a blob read: any host configured for pulls (mirrors first, a redirect target
 * remembered), or the registry itself only — for bytes a mirror or an object store sent that
 * did not match their digest.
 */
export type BlobReadFrom = "any host" | "registry";

/**
 * readBlobRange handing the bytes to `sink` as they arrive (in order, each byte once, even
 * across resumes) instead of returning one buffer: callers that store the bytes elsewhere
 * (the disk cache) keep no copy of the whole range.
 */
export async function readBlobRangeTo(
  client: RegistryClient,
  repository: string,
  digest: string,
  offset: number,
  length: number,
  sink: BodySink | Uint8Array,
  signal?: AbortSignal,
  expectedSizeBytes?: number,
  from: BlobReadFrom = "any host",
): Promise<void> {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new RangeError(`invalid blob range offset=${offset} length=${length}`);
  }
  if (length === 0) return;
  const path = `/v2/${repository}/blobs/${digest}`;
  const scope = pullScope(repository);
  const holder = retryHolderOf(sink);
  let policy = holder?.policy ?? client.newPolicy();
  if (holder) holder.policy = policy;
  const end = offset + length - 1;
  const startedMs = performance.now();
  let filled = 0;
  let attempt = 0;
  let watch: StallWatch | undefined;
  try {
    while (filled < length) {
      const start = offset + filled;
      const location = from === "registry" ? undefined : client.blobLocation(digest);
      // Per attempt: one that gets no byte for the stall time is given up and asked again.
      watch?.done();
      watch = new StallWatch(signal);
      watch.endBy(policy.deadlineAtMs);
      let response: Response | undefined;
      try {
        response = await client.request({
          method: "GET",
          path: location ?? path,
          scope,
          headers: { range: `bytes=${start}-${end}` },
          signal: watch.signal,
          stall: watch,
          policy,
          ...(from === "registry" ? {} : { route: "pull" as const }),
        }).catch((error) => {
          if (location === undefined || watch!.stalled) throw error;
          return undefined; // the cached location is unreachable: ask the registry again
        });
      } catch (error) {
        // A stalled watch is done already; anything else ends here (the finally below).
        if (!watch.stalled || signal?.aborted) throw error;
        attempt++;
        warn(
          `registry ${client.host} sent no reply to a GET of ${digest} for ${
            stallMs() / 1000
          } s; asking again`,
        );
        if (!(await backoff(attempt, policy, signal))) {
          throw new OciError(`registry ${client.host} stopped answering GETs of ${digest}`);
        }
        continue;
      }
      // The body's stall windows need at most what this attempt still asks for.
      watch.startBody(length - filled);
      if (
        location !== undefined && (response === undefined || (response.status !== 206 &&
          response.status !== 200))
      ) {
        await response?.body?.cancel();
        client.setBlobLocation(digest, undefined);
        continue;
      }
      if (response === undefined) continue;
      if (
        location === undefined && response.url && !client.isRegistryUrl(response.url) &&
        (response.status === 206 || response.status === 200)
      ) {
        client.setBlobLocation(digest, response.url);
      }
      let skip: number;
      let available: number;
      if (response.status === 200 || response.status === 206) {
        await refuseContentEncoding(response, client.host, digest);
      }
      if (response.status === 206) {
        const range = parseContentRange(response.headers.get("content-range"));
        if (!range || range.first > start || range.last < start) {
          await response.body?.cancel();
          throw new OciError(
            `registry ${client.host} sent Content-Range '${
              response.headers.get("content-range") ?? ""
            }' for bytes ${start}-${end} of ${digest}`,
          );
        }
        if (expectedSizeBytes !== undefined && range.total !== undefined) {
          await checkDeclaredSize(response, digest, range.total, expectedSizeBytes);
        }
        skip = start - range.first;
        available = Math.min(range.last, end) - start + 1;
      } else if (response.status === 200) {
        skip = start;
        available = length - filled;
        const total = Number(response.headers.get("content-length") ?? NaN);
        if (expectedSizeBytes !== undefined && Number.isSafeInteger(total)) {
          await checkDeclaredSize(response, digest, total, expectedSizeBytes);
        }
        if (total <= end) {
          await response.body?.cancel();
          throw new OciError(
            `bytes ${start}-${end} are beyond the end of blob ${digest} (${total} bytes)`,
          );
        }
      } else if (response.status === 416) {
        await response.body?.cancel();
        throw new OciError(`bytes ${start}-${end} are beyond the end of blob ${digest} (416)`);
      } else {
        return await blobStatusError(client, response, repository, digest);
      }
      if (!response.body) throw new OciError(`registry ${client.host} sent no body for ${digest}`);
      const { copied, error } = await copyBody(response.body, sink, filled, skip, available, watch);
      watch.done();
      if (watch.stalled && !signal?.aborted) {
        warn(
          `registry ${client.host} ${watch.why} (GET of ${digest}, ` +
            `${filled + copied} of ${length} bytes in); asking again`,
        );
      }
      filled += copied;
      if (filled === length) {
        observeBlobGet(digest, (performance.now() - startedMs) / 1000);
        break;
      }
      if (error === undefined && copied === available) continue; // a short 206: ask for the rest
      if (error !== undefined && !isNetworkError(error)) throw error;
      // A sink whose buffer the broken read took (PlacedBodySink) has lost the bytes it held
      // before the break, so it cannot take the bytes after it: its into() throws now, before a
      // resume GET whose body would only be refused (the caller starts again where it began).
      if (error !== undefined) intoOf(sink)?.();
      // Truncated body or a short 206: resume from what we have.
      policy = policyAfterAttempt(policy, copied, () => client.newPolicy());
      if (holder) holder.policy = policy;
      attempt = copied > 0 ? 1 : attempt + 1;
      debug(
        `blob ${digest}: got ${filled}/${length} bytes (${
          error === undefined ? "body ended early" : describeFailure(error)
        }); resuming`,
      );
      if (!(await backoff(attempt, policy, signal))) {
        throw new OciError(
          `reading blob ${digest} from ${client.host} failed after retries: only ${filled} of ${length} bytes at offset ${offset} arrived`,
        );
      }
    }
  } finally {
    watch?.done();
  }
}

/** The Content-Encoding of a reply when it is one (not absent, not identity). */
export function contentEncodingOf(response: Response): string | undefined {
  const encoding = response.headers.get("content-encoding")?.trim().toLowerCase();
  return !encoding || encoding === "identity" ? undefined : encoding;
}

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
  const encoding = contentEncodingOf(response);
  if (encoding === undefined) return;
  await response.body?.cancel();
  throw new OciError(
    `registry ${host} sent ${digest} with Content-Encoding: ${encoding}: a blob's bytes must come as they are`,
    "a proxy on the way compresses replies: turn that off for the registry",
  );
}
