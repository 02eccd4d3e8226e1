/**
 * Artifacts that refer to an image manifest (OCI distribution spec 1.1, "Listing Referrers"):
 * the referrers API (`GET /v2/NAME/referrers/DIGEST`), and for registries without it the
 * referrers tag schema: an image index tagged `sha256-<hex>` of the subject, listing the
 * referring manifests, which whoever pushes a referrer keeps up to date.
 */
import { OciError } from "../errors.ts";
import { blobExists, refusedWrite, statusError, uploadBlob } from "./blob_upload.ts";
import type { RegistryClient } from "./client.ts";
import { pullScope, pushScope } from "./scope.ts";
import { digestOf } from "./digest.ts";
import { MAX_MANIFEST_BYTES } from "./manifest.ts";
import { MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST } from "./media_types.ts";
import { DIGEST_PATTERN } from "./reference.ts";
import { parseJson } from "../json.ts";
import { warn } from "../log.ts";
import { testHold } from "../test_pause.ts";
import { sleep } from "../timers.ts";

/** A descriptor as a referrers list holds it. */
export interface ReferrerDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

/** At most this many referrers are looked at (a hostile list cannot make us walk millions). */
const MAX_REFERRERS = 4096;
/** Pages of the referrers API followed at most (each up to MAX_MANIFEST_BYTES). */
const MAX_REFERRER_PAGES = 16;

/** When an artifact was made (OCI image-spec's pre-defined annotation, RFC 3339). */
export const CREATED_ANNOTATION = "org.opencontainers.image.created";

/**
 * `referrers` newest first: by their created annotation where they have one (a registry's
 * referrers API lists in an order of its own, e.g. by digest), then those without it, the
 * last listed first (the fallback tag's index, which pushReferrer appends to).
 */
export function newestFirst(referrers: ReferrerDescriptor[]): ReferrerDescriptor[] {
  const createdOf = (d: ReferrerDescriptor) => {
    const value = d.annotations?.[CREATED_ANNOTATION];
    const ms = typeof value === "string" ? Date.parse(value) : NaN;
    return Number.isFinite(ms) ? ms : -Infinity;
  };
  // Array.prototype.sort is stable: equal (or missing) dates keep the reversed list order.
  return [...referrers].reverse().sort((a, b) => createdOf(b) - createdOf(a));
}

/** The fallback tag of `digest` (distribution spec: `<alg>-<ref>`). */
export function referrersTag(digest: string): string {
  return digest.replace(":", "-");
}

/**
 * The manifests referring to `subject`, newest last as the registry lists them, narrowed to
 * `artifactType`: from the referrers API when the registry answers it, else from the fallback
 * tag; none when neither exists.
 */
export async function listReferrers(
  client: RegistryClient,
  repository: string,
  subject: string,
  artifactType: string,
  signal?: AbortSignal,
): Promise<ReferrerDescriptor[]> {
  // A registry with the API answers 200 with an index (possibly empty); 404 (docker-registry
  // 2.8 has no such route) or 405/400 mean "ask the tag". A long list comes in pages, each
  // naming the next in a Link header (distribution spec 1.1): a table behind a page of
  // signatures is still found.
  const first = `/v2/${repository}/referrers/${subject}?artifactType=${
    encodeURIComponent(artifactType)
  }`;
  const found: ReferrerDescriptor[] = [];
  const seen = new Set<string>();
  let api: Response | undefined;
  for (let path: string | undefined = first; path !== undefined;) {
    if (seen.size === MAX_REFERRER_PAGES) {
      throw new OciError(
        `registry ${client.host}: the referrers list of ${subject} goes on past ` +
          `${MAX_REFERRER_PAGES} pages`,
      );
    }
    seen.add(path);
    const page: { response: Response; bytes?: Uint8Array } = await client.getDocument(
      {
        method: "GET",
        path,
        scope: pullScope(repository),
        headers: { accept: OCI_INDEX },
        signal,
      },
      MAX_MANIFEST_BYTES,
      (reply) => reply.status === 200 && isIndexType(reply.headers.get("content-type")),
    );
    if (page.bytes === undefined) {
      // A page after the first that is not one fails the list: half a list could miss a table.
      if (path !== first) {
        await page.response.body?.cancel();
        throw statusError(client, page.response, `listing the referrers of ${subject}`);
      }
      api = page.response;
      break;
    }
    const list = parseReferrerIndex(page.bytes, "referrers list");
    for (const d of list) if (d.artifactType === artifactType) found.push(d);
    if (found.length > MAX_REFERRERS) found.length = MAX_REFERRERS;
    path = nextPage(page.response.headers.get("link"), path, client.host, subject);
    if (path !== undefined && seen.has(path)) break; // a loop: what came is the whole list
  }
  if (api === undefined) return found;
  await api.body?.cancel();
  if (api.status >= 500 || api.status === 401 || api.status === 403) {
    throw statusError(client, api, `listing the referrers of ${subject}`);
  }
  const tagged = await fetchTagIndex(client, repository, subject, signal);
  return (tagged ?? []).filter((d) => d.artifactType === artifactType);
}

/**
 * Stores `manifest` (an OCI image manifest whose `subject` is `subject`) by its digest and
 * makes it findable: a registry that processes the subject says so with `OCI-Subject`;
 * otherwise the fallback tag's index gets the descriptor (replacing an entry with the same
 * `replaceAnnotation` value, so re-indexing does not pile up). Returns how it was recorded.
 */
export async function pushReferrer(
  client: RegistryClient,
  repository: string,
  manifest: Uint8Array<ArrayBuffer>,
  descriptor: ReferrerDescriptor,
  subject: string,
  replace?: (old: ReferrerDescriptor) => boolean,
  signal?: AbortSignal,
): Promise<"referrers-api" | "fallback-tag"> {
  const put = await client.request({
    method: "PUT",
    path: `/v2/${repository}/manifests/${descriptor.digest}`,
    scope: pushScope(repository),
    body: manifest,
    headers: { "content-type": OCI_MANIFEST },
    signal,
  });
  if (put.status !== 201) {
    throw await refusedWrite(client, put, `storing the referrer manifest ${descriptor.digest}`);
  }
  await put.body?.cancel();
  if (put.headers.get("oci-subject") === subject) return "referrers-api";
  const tag = referrersTag(subject);
  const read = () => readTagIndex(client, repository, subject, signal, "update");
  // The tag's index is read, changed and written back: another pusher doing the same at once
  // (a trace and a table for one image) wrote its list over ours, and one entry was lost with
  // both saying "pushed". If-Match is honoured by registries that support it (docker-registry
  // ignores it), so the tag is also looked at again just before the write, and afterwards.
  /** A registry answered 412 to a tag that had not changed (a weak ETag from a front end). */
  let ifMatchRefused = false;
  let before = await read();
  for (let attempt = 1;; attempt++) {
    const kept = (before?.descriptors ?? []).filter((d) =>
      d.digest !== descriptor.digest && !(replace?.(d) ?? false)
    );
    const index = { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [...kept, descriptor] };
    const body = new TextEncoder().encode(JSON.stringify(index));
    await testHold("referrers-tag-write");
    const last = attempt === MAX_TAG_WRITES;
    if (!last) {
      const now = await read();
      if (now?.text !== before?.text) {
        before = now; // changed meanwhile: merged again
        continue;
      }
    }
    const putIndex = await client.request({
      method: "PUT",
      path: `/v2/${repository}/manifests/${tag}`,
      scope: pushScope(repository),
      body,
      headers: {
        "content-type": OCI_INDEX,
        // A weak ETag (`W/"…"`) never matches If-Match (RFC 9110 strong comparison).
        ...(before?.etag && !before.etag.startsWith("W/") && !ifMatchRefused
          ? { "if-match": before.etag }
          : {}),
      },
      signal,
    });
    if (putIndex.status === 412 && !last) {
      await putIndex.body?.cancel();
      // Changed meanwhile: merged again. Unchanged: the registry's If-Match is not to be had.
      const now = await read();
      if (now?.text === before?.text) ifMatchRefused = true;
      before = now;
      continue;
    }
    if (putIndex.status !== 201) {
      throw await refusedWrite(client, putIndex, `storing the tag ${tag}`);
    }
    await putIndex.body?.cancel();
    await sleep(TAG_RECHECK_MS, signal);
    const after = await read();
    if (after?.descriptors.some((d) => d.digest === descriptor.digest)) return "fallback-tag";
    // Gone, and an entry of the kind it replaces is there: another push of the same kind
    // replaced it since (a newer trace, not one this push read and replaced, which a write
    // from a list read before ours brings back): theirs stands, as ours would have.
    const newer = after?.descriptors.find((d) =>
      (replace?.(d) ?? false) && !before?.descriptors.some((b) => b.digest === d.digest)
    );
    if (newer !== undefined) {
      warn(`another push for ${subject} replaced this one (${newer.digest}) in the tag ${tag}`);
      return "fallback-tag";
    }
    if (last) {
      throw new OciError(
        `the referrers tag ${tag} of ${repository} kept being rewritten by other pushes: ` +
          `${descriptor.digest} is not listed there after ${MAX_TAG_WRITES} tries`,
        "push again once the others are done",
      );
    }
    before = after;
  }
}

/** Writes of a referrers tag that others keep changing before one is given up. */
const MAX_TAG_WRITES = 5;
/** How long after writing a referrers tag it is read again (another writer's round trip). */
const TAG_RECHECK_MS = 200;

/** OCI 1.1 empty descriptor (`{}`), the config of an artifact without one. */
const EMPTY_CONFIG = new TextEncoder().encode("{}");
const EMPTY_MEDIA = "application/vnd.oci.empty.v1+json";

/** Uploads `bytes` unless the repository already has a blob with its digest. */
export async function uploadBlobIfMissing(
  client: RegistryClient,
  repository: string,
  bytes: Uint8Array<ArrayBuffer>,
  mediaType: string,
  signal?: AbortSignal,
): Promise<void> {
  const digest = digestOf(bytes);
  if (await blobExists(client, repository, digest, signal)) return;
  await uploadBlob(client, repository, {
    digest,
    sizeBytes: bytes.byteLength,
    mediaType,
    bytes,
  }, { signal });
}

/**
 * Pushes an artifact manifest of `artifactType` listing `layers` (already uploaded) whose
 * `subject` is the image manifest, replacing in the fallback tag's list the earlier artifacts
 * `replace` picks (by default every one of the same type). Returns its digest and how it was
 * recorded.
 */
export async function pushArtifact(
  client: RegistryClient,
  repository: string,
  subject: { digest: string; size: number; mediaType: string },
  artifactType: string,
  layers: Record<string, unknown>[],
  signal?: AbortSignal,
  annotations?: Record<string, string>,
  replace: (old: ReferrerDescriptor) => boolean = (old) => old.artifactType === artifactType,
): Promise<{ digest: string; via: "referrers-api" | "fallback-tag" }> {
  // A registry refuses a manifest naming blobs it does not have, the config included.
  await uploadBlobIfMissing(client, repository, new Uint8Array(EMPTY_CONFIG), EMPTY_MEDIA, signal);
  const manifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType,
    config: { mediaType: EMPTY_MEDIA, digest: digestOf(EMPTY_CONFIG), size: EMPTY_CONFIG.length },
    layers,
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
    annotations,
  };
  const bytes = new TextEncoder().encode(JSON.stringify(manifest));
  const digest = digestOf(bytes);
  const via = await pushReferrer(
    client,
    repository,
    bytes,
    { mediaType: OCI_MANIFEST, digest, size: bytes.byteLength, artifactType, annotations },
    subject.digest,
    replace,
    signal,
  );
  return { digest, via };
}

/**
 * The referrers index at the fallback tag. To look referrers up ("lookup"), a tag holding
 * something else is no referrers; to add one ("update"), it is refused rather than replaced:
 * it is someone else's, and every media type is asked for so that a registry answers with
 * what the tag holds instead of a 404 (docker-registry's answer when only an index is asked).
 */
async function fetchTagIndex(
  client: RegistryClient,
  repository: string,
  subject: string,
  signal?: AbortSignal,
): Promise<ReferrerDescriptor[] | undefined> {
  return (await readTagIndex(client, repository, subject, signal, "lookup"))?.descriptors;
}

/** The fallback tag's list, with its text and ETag (to tell whether it changed). */
async function readTagIndex(
  client: RegistryClient,
  repository: string,
  subject: string,
  signal: AbortSignal | undefined,
  use: "lookup" | "update",
): Promise<{ descriptors: ReferrerDescriptor[]; text: string; etag?: string } | undefined> {
  const tag = referrersTag(subject);
  const { response, bytes } = await client.getDocument({
    method: "GET",
    path: `/v2/${repository}/manifests/${tag}`,
    scope: pullScope(repository),
    headers: { accept: use === "update" ? MANIFEST_ACCEPT : OCI_INDEX },
    signal,
  }, MAX_MANIFEST_BYTES);
  if (response.status === 404) {
    await response.body?.cancel();
    return undefined;
  }
  if (bytes === undefined) {
    await response.body?.cancel();
    throw statusError(client, response, `for the referrers tag ${tag}`);
  }
  try {
    return {
      descriptors: parseReferrerIndex(bytes, `tag ${tag}`),
      // As read (bounded by MAX_MANIFEST_BYTES): to tell whether it changed before a write.
      text: new TextDecoder().decode(bytes),
      etag: response.headers.get("etag") ?? undefined,
    };
  } catch (error) {
    if (!(error instanceof OciError)) throw error;
    if (use === "update") {
      throw new OciError(
        `the referrers tag ${tag} of ${repository} holds something else (${error.message}): ` +
          "not replaced",
        "another tool uses that tag: move what it holds elsewhere, then push again",
      );
    }
    // Someone else's use of the tag (or a broken one): no referrers of ours are listed there,
    // which is no reason to fail a mount (--require-verified still refuses unverified layers).
    warn(`the referrers tag ${tag} of ${repository}: ${error.message}; taken as no referrers`);
    return undefined;
  }
}

/**
 * The path of the page a referrers reply's Link header names as `rel="next"` (RFC 8288; the
 * distribution spec's pagination), resolved against `path`; undefined without one. A link to
 * another host or scheme is refused: the list is the registry's own.
 */
export function nextPage(
  link: string | null,
  path: string,
  host: string,
  subject: string,
): string | undefined {
  if (!link) return undefined;
  for (const part of link.split(",")) {
    const match = /^\s*<([^>]*)>(.*)$/.exec(part);
    if (!match || !/;\s*rel\s*=\s*"?next"?\s*(;|$)/i.test(match[2])) continue;
    const base = new URL(path, `http://${host}`);
    let next: URL;
    try {
      next = new URL(match[1], base);
    } catch {
      throw new OciError(`registry ${host}: a malformed next page of the referrers of ${subject}`);
    }
    // Only its path and query are used: the next page is asked of this registry whatever the
    // link says, so a link elsewhere (another host, file:) is no page of this list.
    if (next.host !== base.host) {
      throw new OciError(
        `registry ${host}: the next page of the referrers of ${subject} is on another host`,
      );
    }
    return next.pathname + next.search;
  }
  return undefined;
}

function isIndexType(contentType: string | null): boolean {
  return (contentType ?? "").split(";")[0].trim() === OCI_INDEX;
}

/** Descriptors of an image index; entries that are not well-formed manifests are skipped. */
export function parseReferrerIndex(bytes: Uint8Array, what: string): ReferrerDescriptor[] {
  let value: unknown;
  try {
    value = parseJson(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new OciError(`${what} is not JSON`);
  }
  const manifests = (value as { manifests?: unknown })?.manifests;
  if (!Array.isArray(manifests)) throw new OciError(`${what} is not an image index`);
  const out: ReferrerDescriptor[] = [];
  for (const entry of manifests.slice(0, MAX_REFERRERS)) {
    if (typeof entry !== "object" || entry === null) continue;
    const d = entry as Record<string, unknown>;
    if (
      typeof d.mediaType !== "string" || typeof d.digest !== "string" ||
      !DIGEST_PATTERN.test(d.digest) || typeof d.size !== "number" ||
      !Number.isSafeInteger(d.size) || d.size < 0 || d.size > MAX_MANIFEST_BYTES
    ) continue;
    const descriptor: ReferrerDescriptor = {
      mediaType: d.mediaType,
      digest: d.digest,
      size: d.size,
    };
    if (typeof d.artifactType === "string") descriptor.artifactType = d.artifactType;
    if (typeof d.annotations === "object" && d.annotations !== null) {
      const annotations: Record<string, string> = {};
      for (const [key, val] of Object.entries(d.annotations)) {
        if (typeof val === "string") annotations[key] = val;
      }
      descriptor.annotations = annotations;
    }
    out.push(descriptor);
  }
  return out;
}
