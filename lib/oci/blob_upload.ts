/** Blob upload protocol (OCI distribution spec, "Pushing blobs"): HEAD, POST, PATCH, PUT. */
import { OciError } from "../errors.ts";
import { parseJson } from "../json.ts";
import { readAtMost } from "../bytes.ts";
import { printable } from "../text.ts";
import { debug } from "../log.ts";
import type { RegistryClient } from "./client.ts";
import { quoted } from "./registry_transport.ts";
import { pushScope } from "./scope.ts";

/** How long the DELETE of an abandoned upload session may take (one try, best effort). */
export const CANCEL_UPLOAD_MS = 2_000;

/** An upload session under way: where its next bytes go. */
interface UploadSession {
  client: RegistryClient;
  repository: string;
  location: string;
  scope: string;
}

/** The sessions of uploadBlob calls under way, for cancelOpenUploads. */
const openSessions = new Set<UploadSession>();

/**
 * DELETE of an upload session (distribution spec: cancels it; the registry drops what it
 * stored of it): otherwise a failed or interrupted upload leaves its bytes in the registry's
 * upload area until the registry's own purge, days later. One try within CANCEL_UPLOAD_MS;
 * a failure is only logged (--debug): it never hides the error that ended the upload.
 */
async function cancelSession(session: UploadSession): Promise<void> {
  try {
    const response = await session.client.request({
      method: "DELETE",
      path: session.location,
      scope: session.scope,
      signal: AbortSignal.timeout(CANCEL_UPLOAD_MS),
      policy: { deadlineAtMs: Date.now() + CANCEL_UPLOAD_MS, maxAttempts: 1 },
    });
    await response.body?.cancel();
    debug(`upload session ${session.location} cancelled: ${response.status}`);
  } catch (error) {
    debug(`could not cancel upload session ${session.location}: ${(error as Error).message}`);
  }
}

/**
 * Cancels every upload session under way (for a signal handler that ends the process next);
 * settles within about CANCEL_UPLOAD_MS and never rejects.
 */
export async function cancelOpenUploads(): Promise<void> {
  const sessions = [...openSessions];
  openSessions.clear();
  await Promise.all(sessions.map(cancelSession));
}

/** Default upload split: up to 8 MiB in one PUT, above that 8 MiB PATCH chunks. */
export const DEFAULT_UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024;

/** A progress report of uploadBlob: bytes uploaded so far of `totalBytes`. */
export interface BlobUploadProgress {
  phase: "upload";
  path: string;
  doneBytes: number;
  totalBytes: number;
}

/** Options of uploadBlob. */
export interface BlobUploadOptions {
  signal?: AbortSignal;
  /** Files up to this size go up in one PUT; larger ones in PATCH chunks. */
  monolithicMaxBytes?: number;
  /** PATCH chunk size for chunked uploads. */
  chunkSizeBytes?: number;
  onProgress?: (event: BlobUploadProgress) => void;
}

/** A blob to upload: a file (hashed already) or bytes in memory. */
export interface LocalBlob {
  path?: string;
  digest: string;
  sizeBytes: number;
  mediaType: string;
  bytes?: Uint8Array<ArrayBuffer>;
}

/** HEAD: does the registry have this blob already? */
export async function blobExists(
  client: RegistryClient,
  repository: string,
  digest: string,
  signal?: AbortSignal,
): Promise<boolean> {
  const response = await client.request({
    method: "HEAD",
    path: `/v2/${repository}/blobs/${digest}`,
    scope: pushScope(repository),
    signal,
  });
  await response.body?.cancel();
  if (response.status === 200) return true;
  if (response.status === 404) return false;
  throw statusError(client, response, `checking blob ${digest}`);
}

/**
 * Whether the blob a closing PUT failed for is in the repository after all (an earlier send of
 * that PUT committed it); false when even that cannot be asked (the PUT's own error stands).
 */
async function committedMeanwhile(
  session: UploadSession,
  digest: string,
  signal?: AbortSignal,
): Promise<boolean> {
  try {
    return await blobExists(session.client, session.repository, digest, signal);
  } catch {
    return false;
  }
}

/** The OciError for an unexpected status during `action`. */
export function statusError(client: RegistryClient, response: Response, action: string): OciError {
  const error = new OciError(`registry ${client.host} answered ${response.status} ${action}`);
  error.status = response.status;
  return error;
}

/** How much of a refusal's body is read for its reason, and for how long. */
const REASON_MAX_BYTES = 8192;
const REASON_WAIT_MS = 2000;

/**
 * statusError for a write the registry refused (an upload, a manifest PUT), with the reason its
 * body gives (`errors[0]`: "DENIED: requested access to the resource is denied"), and for 401
 * and 403 what to check. The body is read (at most REASON_MAX_BYTES, REASON_WAIT_MS) and ends.
 */
export async function refusedWrite(
  client: RegistryClient,
  response: Response,
  action: string,
): Promise<OciError> {
  const reason = await registryReason(response);
  const error = new OciError(
    `registry ${client.host} answered ${response.status} ${action}${reason ? `: ${reason}` : ""}`,
    response.status === 401 || response.status === 403
      ? "no rights to write there: check the credentials (--username/--password-stdin, docker " +
        "login) and the repository name"
      : undefined,
  );
  error.status = response.status;
  return error;
}

async function registryReason(response: Response): Promise<string | undefined> {
  if (!response.body) return undefined;
  try {
    // Bounded in time too: a refusal whose body stalls held the command until the stall watch.
    const bytes = await readAtMost(
      response.body,
      REASON_MAX_BYTES,
      AbortSignal.timeout(REASON_WAIT_MS),
    );
    if (bytes === undefined) return undefined;
    const first = (parseJson(new TextDecoder().decode(bytes)) as {
      errors?: { code?: unknown; message?: unknown }[];
    })?.errors?.[0];
    const words = [first?.code, first?.message].filter((w) => typeof w === "string" && w);
    return words.length ? printable(words.join(": ")).slice(0, 300) : undefined;
  } catch {
    return undefined;
  }
}

async function uploadLocation(
  client: RegistryClient,
  response: Response,
  action: string,
): Promise<string> {
  await response.body?.cancel();
  const location = response.headers.get("location");
  if (!location) throw new OciError(`registry ${client.host} sent no upload location ${action}`);
  // Where the blob's bytes go next: a registry cannot point them at a file: or data: URL.
  let url: URL;
  try {
    url = new URL(location, client.origin + "/");
  } catch {
    throw new OciError(
      `registry ${client.host} sent an invalid upload location ${action}: ${quoted(location)}`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new OciError(
      `registry ${client.host} sent an upload location that is not http(s) ${action}: ${
        quoted(url.protocol)
      }`,
    );
  }
  return url.href;
}

async function readChunk(
  file: Deno.FsFile,
  buffer: Uint8Array<ArrayBuffer>,
): Promise<Uint8Array<ArrayBuffer>> {
  let got = 0;
  while (got < buffer.byteLength) {
    const n = await file.read(buffer.subarray(got));
    if (n === null) break;
    got += n;
  }
  return buffer.subarray(0, got);
}

/**
 * Uploads one blob: POST a session, then one PUT, or PATCH chunks and a closing PUT. A session
 * the registry no longer knows (404), or whose offset it no longer agrees on (416), is started
 * again once, from the first byte: a chunk sent again after its reply was lost (the registry
 * had taken it, and the location it answered with is gone with the reply), a session the
 * registry purged meanwhile.
 */
export async function uploadBlob(
  client: RegistryClient,
  repository: string,
  blob: LocalBlob,
  options: BlobUploadOptions,
): Promise<void> {
  const label = blob.path ?? blob.digest;
  for (let again = false;; again = true) {
    try {
      return await uploadInSession(client, repository, blob, label, options);
    } catch (error) {
      const lost = error instanceof OciError && (error.status === 404 || error.status === 416);
      if (again || !lost || options.signal?.aborted) throw error;
      debug(`${label}: ${error.message}; starting its upload again`);
    }
  }
}

/** One upload session of `blob`, cancelled (DELETE) when anything in it fails. */
async function uploadInSession(
  client: RegistryClient,
  repository: string,
  blob: LocalBlob,
  label: string,
  options: BlobUploadOptions,
): Promise<void> {
  const scope = pushScope(repository);
  const signal = options.signal;
  const start = await client.request({
    method: "POST",
    path: `/v2/${repository}/blobs/uploads/`,
    scope,
    signal,
  });
  if (start.status !== 202) {
    throw await refusedWrite(client, start, `starting the upload of ${label}`);
  }
  const session: UploadSession = {
    client,
    repository,
    location: await uploadLocation(client, start, `for ${label}`),
    scope,
  };
  openSessions.add(session);
  try {
    await sendBlob(session, blob, label, options);
  } catch (error) {
    // Not twice: cancelOpenUploads may have taken it already.
    if (openSessions.delete(session)) await cancelSession(session);
    throw error;
  }
  openSessions.delete(session);
}

/** The bytes of an upload session: one PUT, or PATCH chunks and a closing PUT. */
async function sendBlob(
  session: UploadSession,
  blob: LocalBlob,
  label: string,
  options: BlobUploadOptions,
): Promise<void> {
  const { client, scope } = session;
  const signal = options.signal;
  const monolithicMax = options.monolithicMaxBytes ?? DEFAULT_UPLOAD_CHUNK_BYTES;
  const chunkSize = options.chunkSizeBytes ?? DEFAULT_UPLOAD_CHUNK_BYTES;
  const progress = (doneBytes: number) =>
    options.onProgress?.({ phase: "upload", path: label, doneBytes, totalBytes: blob.sizeBytes });
  let finalBody: Uint8Array<ArrayBuffer> = new Uint8Array(0);
  if (blob.bytes) {
    finalBody = blob.bytes;
  } else if (blob.sizeBytes <= monolithicMax) {
    finalBody = await Deno.readFile(blob.path!);
  } else {
    const file = await Deno.open(blob.path!, { read: true });
    try {
      const buffer = new Uint8Array(chunkSize);
      let offset = 0;
      while (offset < blob.sizeBytes) {
        const chunk = await readChunk(file, buffer);
        if (chunk.byteLength === 0) throw new OciError(`${label} shrank while uploading`);
        const response = await client.request({
          method: "PATCH",
          path: session.location,
          scope,
          signal,
          body: chunk,
          headers: {
            "content-type": "application/octet-stream",
            // distribution spec: Content-Range is `start-end` inclusive, without a unit.
            "content-range": `${offset}-${offset + chunk.byteLength - 1}`,
          },
        });
        if (response.status !== 202) {
          await response.body?.cancel();
          throw statusError(client, response, `uploading bytes at ${offset} of ${label}`);
        }
        session.location = await uploadLocation(client, response, `after a chunk of ${label}`);
        offset += chunk.byteLength;
        progress(offset);
      }
    } finally {
      file.close();
    }
  }
  const url = new URL(session.location);
  url.searchParams.set("digest", blob.digest);
  let put: Response;
  try {
    put = await client.request({
      method: "PUT",
      path: url.href,
      scope,
      signal,
      body: finalBody,
      headers: { "content-type": "application/octet-stream" },
      commitBytes: blob.sizeBytes,
    });
  } catch (error) {
    // A PUT sent again after its reply was lost finds the session gone; so may this one.
    if (!signal?.aborted && await committedMeanwhile(session, blob.digest, signal)) {
      return progress(blob.sizeBytes);
    }
    throw error;
  }
  // A refusal's body says why (refusedWrite reads it).
  if ([201, 400, 404].includes(put.status)) await put.body?.cancel();
  if (put.status === 404 && await committedMeanwhile(session, blob.digest, signal)) {
    // The PUT was sent again (a reply that did not come in time, a broken connection) after the
    // registry had committed the blob at the first: the session is gone, the blob is there.
    return progress(blob.sizeBytes);
  }
  if (put.status !== 201) {
    if (put.status === 400) {
      throw new OciError(`registry ${client.host} refused ${label}: digest or size mismatch (400)`);
    }
    throw await refusedWrite(client, put, `completing the upload of ${label}`);
  }
  if (finalBody.byteLength > 0) progress(blob.sizeBytes);
}
