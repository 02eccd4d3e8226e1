/**
 * Several ranges of a blob in one GET: `Range: bytes=a-b,c-d,…` answered as
 * `multipart/byteranges` (RFC 9110 §14.6), which docker-registry's filesystem driver does (Go's
 * http.ServeContent). A cold mount wants ~170 small metadata ranges; one request for them all
 * costs the registry one request, where 170 GETs cost 170 (about 2-5 ms each on this host).
 * Registries that ignore the extra ranges (200 with the whole blob, as S3 does) or answer
 * otherwise get their body cancelled: the caller falls back to one GET per range. Hostile
 * input: the body is bounded by what was asked for plus a small allowance per part, every part's
 * Content-Range must be one asked for, and the caller still checks each range's digest.
 */
import { readAtMost } from "../bytes.ts";
import { parseContentRange, replyCodingOf } from "./blob_range.ts";
import type { RegistryClient } from "./client.ts";
import { pullScope } from "./scope.ts";

/** Ranges per request: keeps the Range header under ~4 KB (proxies limit header sizes). */
export const MAX_RANGES_PER_REQUEST = 160;
/** Allowance per part for its boundary line and headers. */
const PART_OVERHEAD_BYTES = 512;

export interface ByteRange {
  offset: number;
  length: number;
}

/**
 * The bytes of each range (in order), undefined for a range the reply did not hold; undefined
 * altogether when the registry does not answer multi-range requests. Ranges must be ascending
 * and apart (a server may merge overlapping ones). Never throws for the reply's content.
 */
export async function readBlobRanges(
  client: RegistryClient,
  repository: string,
  digest: string,
  ranges: readonly ByteRange[],
  expectedSizeBytes?: number,
  signal?: AbortSignal,
): Promise<(Uint8Array | undefined)[] | undefined> {
  if (ranges.length === 0) return [];
  const wanted = ranges.reduce((sum, r) => sum + r.length, 0);
  const response = await client.request({
    method: "GET",
    path: `/v2/${repository}/blobs/${digest}`,
    scope: pullScope(repository),
    headers: {
      range: "bytes=" + ranges.map((r) => `${r.offset}-${r.offset + r.length - 1}`).join(","),
    },
    signal,
    route: "pull",
  });
  const type = response.headers.get("content-type") ?? "";
  const boundary = /^multipart\/byteranges;\s*boundary="?([^";]{1,70})"?/i.exec(type)?.[1];
  // Not a usable answer (the single-range reads then say what is wrong with it).
  if (response.status !== 206 || !response.body || replyCodingOf(response) !== undefined) {
    await response.body?.cancel();
    return undefined;
  }
  const limit = wanted + PART_OVERHEAD_BYTES * ranges.length + 1024;
  const body = await readBounded(response.body, limit);
  if (!body) return undefined;
  const out: (Uint8Array | undefined)[] = new Array(ranges.length).fill(undefined);
  const index = new Map(ranges.map((r, i) => [`${r.offset}-${r.offset + r.length - 1}`, i]));
  const place = (first: number, last: number, total: number | undefined, bytes: Uint8Array) => {
    if (expectedSizeBytes !== undefined && total !== undefined && total !== expectedSizeBytes) {
      return;
    }
    const i = index.get(`${first}-${last}`);
    if (i !== undefined && bytes.length === last - first + 1) out[i] = bytes;
  };
  if (!boundary) {
    // One range asked for (or merged by the server): a plain 206.
    const range = parseContentRange(response.headers.get("content-range"));
    if (range) place(range.first, range.last, range.total, body);
    return out;
  }
  parseParts(body, boundary, place);
  return out;
}

async function readBounded(
  body: ReadableStream<Uint8Array>,
  limit: number,
): Promise<Uint8Array | undefined> {
  try {
    return await readAtMost(body, limit);
  } catch {
    return undefined;
  }
}

const CRLF_CRLF = [13, 10, 13, 10];

function indexOfSeq(bytes: Uint8Array, seq: number[], from: number, to: number): number {
  outer: for (let i = from; i + seq.length <= Math.min(to, bytes.length); i++) {
    for (let j = 0; j < seq.length; j++) if (bytes[i + j] !== seq[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * Walks `--boundary` parts; each part's length is its Content-Range's (no scanning of data). A
 * part counts only when the next delimiter (CRLF `--boundary`, RFC 2046 §5.1.1) or the end of
 * the body follows exactly where its length says it ends: a part whose data is shorter or
 * longer than its header claims would otherwise hand over bytes of what follows it. The walk
 * stops at the first part out of frame (the caller reads the rest range by range).
 */
function parseParts(
  body: Uint8Array,
  boundary: string,
  place: (first: number, last: number, total: number | undefined, bytes: Uint8Array) => void,
): void {
  const marker = [...new TextEncoder().encode(`--${boundary}`)];
  const decoder = new TextDecoder();
  let at = indexOfSeq(body, marker, 0, Math.min(body.length, 1024));
  while (at >= 0) {
    at += marker.length;
    if (body[at] === 45 && body[at + 1] === 45) return; // closing `--boundary--`
    const headersEnd = indexOfSeq(body, CRLF_CRLF, at, at + PART_OVERHEAD_BYTES);
    if (headersEnd < 0) return;
    const headers = decoder.decode(body.subarray(at, headersEnd));
    const line = /(?:^|\r\n)content-range:\s*([^\r\n]*)/i.exec(headers)?.[1] ?? null;
    const range = parseContentRange(line);
    if (!range) return;
    const start = headersEnd + 4;
    const end = start + (range.last - range.first + 1);
    if (end > body.length) return;
    const crlf = body[end] === 13 && body[end + 1] === 10;
    const next = crlf ? end + 2 : end;
    const atDelimiter = indexOfSeq(body, marker, next, next + marker.length) === next;
    // An unclosed body may end right after the last part (with or without its CRLF).
    if (!atDelimiter && next !== body.length) return;
    place(range.first, range.last, range.total, body.subarray(start, end));
    at = atDelimiter ? next : -1;
  }
}
