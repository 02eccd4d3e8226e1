/**
 * Small documents a registry sends whole (manifests, configs, chunk tables, referrers lists,
 * artifacts): the request and the reading of its body under one retry policy. The body was read
 * after `request` had returned, outside its retries, so one connection reset in the middle of a
 * manifest ended `inspect`, `pull` or `mount` with "internal error: error reading a body from
 * connection"; now a reply that breaks off (or ends before its Content-Length) is asked again,
 * and what is still broken at the end is one line naming who broke off.
 */
import { OciError } from "../errors.ts";
import { debug } from "../log.ts";
import { readLimited } from "./auth.ts";
import type { RegistryClient, RegistryRequest } from "./client.ts";
import { backoff, describeFailure, isNetworkError } from "./retry.ts";

/** A document's reply: `bytes` read when `wanted` took the reply, else the body is unread. */
export interface FetchedDocument {
  response: Response;
  /** The whole body; undefined when the reply was not wanted (the caller consumes the body). */
  bytes: Uint8Array | undefined;
}

/**
 * Sends `req` and reads its body (at most `maxBytes`) when `wanted` (default: a 200) takes the
 * reply, retrying both under the request's policy. A reply not wanted is returned unread: the
 * caller reports its status and cancels its body.
 */
export async function getDocument(
  client: RegistryClient,
  req: RegistryRequest,
  maxBytes: number,
  wanted: (response: Response) => boolean = (response) => response.status === 200,
): Promise<FetchedDocument> {
  // The request's retries and ours spend one budget: a registry that alternates 5xx and broken
  // bodies got maxAttempts² requests.
  const policy = { ...(req.policy ?? client.newPolicy()), attempts: { made: 0 } };
  for (;;) {
    const response = await client.request({ ...req, policy });
    if (!wanted(response)) return { response, bytes: undefined };
    const transfer = undecodedTransfer(response);
    if (transfer !== undefined) {
      await response.body?.cancel();
      const redirectHost = redirectTargetOf(client, response);
      throw new OciError(
        `${redirectHost ?? `registry ${client.host}`} sent its reply to ${req.method} ` +
          `${req.path} with ${transfer}, which is not decoded here`,
        "a proxy on the way compresses replies: turn that off for the registry",
      );
    }
    let failure: unknown;
    try {
      const bytes = await readLimited(response, maxBytes);
      const declared = declaredLength(response);
      if (declared === undefined || bytes.byteLength === declared) return { response, bytes };
      failure = `the body ended after ${bytes.byteLength} of ${declared} bytes`;
    } catch (error) {
      if (!isNetworkError(error)) throw error;
      refuseUndecodable(client, req, response, error);
      failure = error;
    }
    const why = typeof failure === "string" ? failure : describeFailure(failure);
    const attempt = policy.attempts.made;
    debug(`${req.method} ${req.path}: ${why} (attempt ${attempt}); asking again`);
    if (await backoff(attempt, policy, req.signal)) continue;
    const redirectHost = redirectTargetOf(client, response);
    throw new OciError(
      redirectHost === undefined
        ? `registry ${client.host} broke off its reply to ${req.method} ${req.path}: ${why}`
        : `${redirectHost}, where registry ${client.host} redirected ${req.method} ${req.path}, ` +
          `broke off its reply: ${why}`,
      undefined,
      { cause: failure },
    );
  }
}

/** The Content-Encoding of a reply when it is one (not absent, not identity). */
export function contentEncodingOf(response: Response): string | undefined {
  const encoding = response.headers.get("content-encoding")?.trim().toLowerCase();
  return !encoding || encoding === "identity" ? undefined : encoding;
}

/**
 * A reply's coding its bytes come in, as its header says ("Content-Encoding: gzip",
 * "Transfer-Encoding: gzip, chunked"); undefined when they come as they are. fetch takes a
 * chunked transfer apart but leaves any other transfer coding in the body: a proxy's
 * `Transfer-Encoding: gzip, chunked` reached readers of an unverified layer as gzip bytes.
 */
export function replyCodingOf(response: Response): string | undefined {
  const content = contentEncodingOf(response);
  if (content !== undefined) return `Content-Encoding: ${content}`;
  const transfer = response.headers.get("transfer-encoding")?.toLowerCase() ?? "";
  const codings = transfer.split(",").map((c) => c.trim()).filter((c) => c !== "");
  return codings.some((c) => c !== "chunked" && c !== "identity")
    ? `Transfer-Encoding: ${codings.join(", ")}`
    : undefined;
}

/** A reply whose body fetch does not decode (replyCodingOf): refused, never read as bytes. */
function undecodedTransfer(response: Response): string | undefined {
  const coding = replyCodingOf(response);
  return coding?.startsWith("Transfer-Encoding") ? coding : undefined;
}

/** Words of fetch's decoders (gzip, deflate, brotli, zstd) for a body they cannot decode. */
const UNDECODABLE = /gzip|deflate|brotli|zstd|decod|corrupt|invalid/i;

/**
 * Throws at once when a reply with a Content-Encoding failed to decode: its bytes are what they
 * are, and asking again brings the same (a mislabelled config was asked for ten times and ended
 * in "broke off its reply … Invalid gzip header").
 */
function refuseUndecodable(
  client: RegistryClient,
  req: RegistryRequest,
  response: Response,
  error: unknown,
): void {
  const encoding = contentEncodingOf(response);
  const why = describeFailure(error);
  if (encoding === undefined || !(error instanceof TypeError) || !UNDECODABLE.test(why)) return;
  const redirectHost = redirectTargetOf(client, response);
  throw new OciError(
    `${redirectHost ?? `registry ${client.host}`} sent its reply to ${req.method} ${req.path} ` +
      `with Content-Encoding: ${encoding}, and it does not decode (${why})`,
    "the registry, or a proxy on the way, compresses replies (or labels them so wrongly): " +
      "turn that off for the registry",
    { cause: error },
  );
}

/**
 * The host that sent `response` when a redirect led away from the registry and its mirrors
 * (object storage); undefined for the registry's own replies.
 */
export function redirectTargetOf(client: RegistryClient, response: Response): string | undefined {
  if (!response.url || client.isRegistryUrl(response.url)) return undefined;
  return new URL(response.url).host;
}

/** The body's length as sent, when the headers say it (fetch decodes a Content-Encoding). */
function declaredLength(response: Response): number | undefined {
  if (response.headers.has("content-encoding")) return undefined;
  const length = Number(response.headers.get("content-length") ?? NaN);
  return Number.isSafeInteger(length) && length >= 0 ? length : undefined;
}
