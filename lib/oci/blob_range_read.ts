/**
 * Ranged reads of a blob (RegistryClient.readBlobRange, readBlobRangeTo): one ranged GET per
 * read, its reply checked, resumed where a body broke off; a host that ignores Range is said
 * once and its whole-blob bodies are read on by the next read (open_bodies.ts).
 */
import { OciError } from "../errors.ts";
import { debug, warn } from "../log.ts";
import { stallMs, StallWatch } from "./stall_watch.ts";
import type { RegistryClient } from "./client.ts";
import { pullScope } from "./scope.ts";
import { redirectTargetOf } from "./document.ts";
import { backoff, describeFailure, isNetworkError, policyAfterAttempt } from "./retry.ts";
import { observeBlobGet } from "../source/fetch_metrics.ts";
import { follow, type OpenBody } from "./open_bodies.ts";
import {
  blobStatusError,
  bodyReader,
  type BodySink,
  checkDeclaredSize,
  checkReplyLength,
  copyFrom,
  intoOf,
  parseContentRange,
  refuseContentEncoding,
  retryHolderOf,
} from "./blob_range.ts";

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
  /** Ends the link of the body being read to this attempt's watch (open_bodies.ts follow). */
  let unfollow = () => {};
  try {
    while (filled < length) {
      const start = offset + filled;
      // Per attempt: one that gets no byte for the stall time is given up and asked again.
      watch?.done();
      unfollow();
      // A body the host sent whole for an earlier read, not yet past `start`: read on from it
      // (waiting for a read of it that stops before `start`, with no watch of our own yet).
      const kept = from === "any host"
        ? await client.openBodies.take(digest, start, end + 1, signal)
        : undefined;
      watch = new StallWatch(signal);
      watch.endBy(policy.deadlineAtMs);
      let reader: ReadableStreamBYOBReader | ReadableStreamDefaultReader<Uint8Array>;
      let skip: number;
      let available: number;
      /** The body of a 200 (the whole blob): kept open for the next read when it can be. */
      let whole: OpenBody | undefined;
      if (kept) {
        reader = kept.reader;
        skip = start - kept.position;
        available = length - filled;
        whole = kept;
        unfollow = follow(kept.abort, watch.signal, kept.reader);
        watch.startBody(length - filled);
      } else {
        const location = from === "registry" ? undefined : client.blobLocation(digest);
        const abort = new AbortController();
        unfollow = follow(abort, watch.signal);
        let wholeBytes: number | undefined;
        let response: Response | undefined;
        try {
          response = await client.request({
            method: "GET",
            path: location ?? path,
            scope,
            headers: { range: `bytes=${start}-${end}` },
            signal: abort.signal,
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
        if (response.status === 200 || response.status === 206) {
          await refuseContentEncoding(response, client.host, digest);
        }
        if (response.status === 206) {
          const type = response.headers.get("content-type") ?? "";
          if (/^\s*multipart\/byteranges/i.test(type)) {
            await response.body?.cancel();
            throw new OciError(
              `registry ${client.host} answered bytes ${start}-${end} of ${digest} with ` +
                `multipart/byteranges, which is not supported for one range`,
              "the registry, or a proxy on the way, rewrites range replies: turn that off for " +
                "the registry",
            );
          }
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
            await checkReplyLength(response, client.host, digest, total, expectedSizeBytes);
            await checkDeclaredSize(response, digest, total, expectedSizeBytes);
          }
          if (total <= end) {
            await response.body?.cancel();
            throw new OciError(
              `bytes ${start}-${end} are beyond the end of blob ${digest} (${total} bytes)`,
            );
          }
          if (start > 0 || end < total - 1) noteRangeIgnored(client, response);
          wholeBytes = expectedSizeBytes ?? total;
        } else if (response.status === 416) {
          await response.body?.cancel();
          throw new OciError(`bytes ${start}-${end} are beyond the end of blob ${digest} (416)`);
        } else {
          return await blobStatusError(client, response, repository, digest);
        }
        if (!response.body) {
          throw new OciError(`registry ${client.host} sent no body for ${digest}`);
        }
        reader = bodyReader(response.body);
        unfollow();
        unfollow = follow(abort, watch.signal, reader);
        if (wholeBytes !== undefined) {
          whole = { reader, position: 0, size: wholeBytes, abort };
          client.openBodies.lend(digest, whole, end + 1);
        }
      }
      const lent = whole;
      const result = await copyFrom(reader, sink, filled, skip, available, watch).catch(
        (error) => {
          // The sink failed: nothing more is wanted of the body.
          if (lent) client.openBodies.end(digest, lent, false);
          else reader.cancel().catch(() => {});
          throw error;
        },
      );
      const { copied, error } = result;
      watch.done();
      unfollow();
      unfollow = () => {};
      if (whole) {
        // Kept for the next read when it is whole and not at its end; else cancelled.
        whole.position += result.consumed;
        client.openBodies.end(
          digest,
          whole,
          error === undefined && !result.ended && !result.overran && copied === available &&
            whole.position < whole.size,
        );
      } else reader.cancel().catch(() => {}); // the rest of a 206 is not wanted
      // A kept body that broke before its first byte (the host dropped it): a new GET.
      if (kept && error !== undefined && copied === 0 && !signal?.aborted) {
        intoOf(sink)?.();
        continue;
      }
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
    unfollow();
  }
}

/** Hosts already said to ignore Range (once per host and process). */
const rangeIgnoredBy = new Set<string>();

/**
 * A ranged GET of part of a blob came back 200 (the whole blob): said once per host, as every
 * read of it now downloads from byte 0 (a body kept open for the next read, open_bodies.ts,
 * spares a pass in order the rest).
 */
function noteRangeIgnored(client: RegistryClient, response: Response): void {
  const host = redirectTargetOf(client, response) ?? client.host;
  if (rangeIgnoredBy.has(host)) return;
  rangeIgnoredBy.add(host);
  warn(`${host} ignores Range requests: reads download from the start of the layer`);
}
