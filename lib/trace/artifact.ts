/**
 * Traces in a registry: the trace blob, listed by an artifact manifest (artifactType
 * TRACE_ARTIFACT_TYPE) whose `subject` is the image manifest, so it is found through the
 * referrers API or the `sha256-<hex>` fallback tag, like the chunk tables. A newer trace of the
 * same image replaces the older one in the fallback tag's list.
 */
import { OciError } from "../errors.ts";
import { statusError } from "../oci/blob_upload.ts";
import type { RegistryClient } from "../oci/client.ts";
import { pullScope } from "../oci/scope.ts";
import { digestOf, digestOfAsync } from "../oci/digest.ts";
import { MAX_MANIFEST_BYTES } from "../oci/manifest.ts";
import { OCI_MANIFEST } from "../oci/media_types.ts";
import { DIGEST_PATTERN } from "../oci/reference.ts";
import {
  CREATED_ANNOTATION,
  listReferrers,
  newestFirst,
  pushArtifact,
  uploadBlobIfMissing,
} from "../oci/referrers.ts";
import { MAX_TRACE_BYTES, TRACE_ARTIFACT_TYPE, TRACE_MEDIA_TYPE } from "./format.ts";
import { parseJson } from "../json.ts";

/** Uploads the trace and the artifact referring to `subject`; returns the artifact digest. */
export async function pushTraceArtifact(
  client: RegistryClient,
  repository: string,
  subject: { digest: string; size: number; mediaType: string },
  trace: Uint8Array<ArrayBuffer>,
): Promise<{ digest: string; via: "referrers-api" | "fallback-tag" }> {
  await uploadBlobIfMissing(client, repository, trace, TRACE_MEDIA_TYPE);
  // Dated, so a mount takes the newest of several (findTrace).
  return await pushArtifact(
    client,
    repository,
    subject,
    TRACE_ARTIFACT_TYPE,
    [{ mediaType: TRACE_MEDIA_TYPE, digest: digestOf(trace), size: trace.byteLength }],
    undefined,
    { [CREATED_ANNOTATION]: new Date().toISOString() },
  );
}

async function getChecked(
  client: RegistryClient,
  repository: string,
  kind: "manifests" | "blobs",
  digest: string,
  limit: number,
  signal?: AbortSignal,
): Promise<Uint8Array | undefined> {
  const declaredOf = (response: Response) => Number(response.headers.get("content-length") ?? "0");
  const { response, bytes } = await client.getDocument(
    {
      method: "GET",
      path: `/v2/${repository}/${kind}/${digest}`,
      scope: pullScope(repository),
      headers: kind === "manifests" ? { accept: OCI_MANIFEST } : undefined,
      signal,
    },
    limit,
    (reply) => reply.status === 200 && declaredOf(reply) <= limit,
  );
  if (response.status !== 200) {
    await response.body?.cancel();
    if (response.status === 404) return undefined;
    throw statusError(client, response, `for the trace ${digest}`);
  }
  if (bytes === undefined) {
    await response.body?.cancel();
    throw new OciError(
      `the trace ${digest} is ${declaredOf(response)} bytes, more than the ${limit} allowed`,
      "mount with --no-prefetch, or record a new trace",
    );
  }
  if (await digestOfAsync(bytes) !== digest) {
    throw new OciError(
      `the trace ${digest} does not match its digest`,
      "the registry serves a damaged trace; mount with --no-prefetch",
    );
  }
  return bytes;
}

/** The newest trace blob referring to `subject` (undefined: none). Bounded, digest-checked. */
export async function findTrace(
  client: RegistryClient,
  repository: string,
  subject: string,
  signal?: AbortSignal,
): Promise<{ digest: string; bytes: Uint8Array } | undefined> {
  const referrers = await listReferrers(client, repository, subject, TRACE_ARTIFACT_TYPE, signal);
  for (const referrer of newestFirst(referrers).slice(0, 4)) {
    if (!DIGEST_PATTERN.test(referrer.digest)) continue;
    const manifest = await getChecked(
      client,
      repository,
      "manifests",
      referrer.digest,
      MAX_MANIFEST_BYTES,
      signal,
    );
    if (!manifest) continue;
    let layers: unknown;
    try {
      layers = parseJson(new TextDecoder().decode(manifest))?.layers;
    } catch {
      continue;
    }
    const entry = Array.isArray(layers) ? layers[0] as Record<string, unknown> | null : null;
    if (
      entry?.mediaType !== TRACE_MEDIA_TYPE || typeof entry.digest !== "string" ||
      !DIGEST_PATTERN.test(entry.digest)
    ) continue;
    if (typeof entry.size === "number" && entry.size > MAX_TRACE_BYTES) {
      throw new OciError(
        `the trace of this image is ${entry.size} bytes, more than the ${MAX_TRACE_BYTES} allowed`,
        "mount with --no-prefetch, or record a new trace",
      );
    }
    const bytes = await getChecked(
      client,
      repository,
      "blobs",
      entry.digest,
      MAX_TRACE_BYTES,
      signal,
    );
    if (bytes) return { digest: entry.digest, bytes };
  }
  return undefined;
}
