import { OciError } from "../errors.ts";
import { debug } from "../log.ts";
import {
  blobStatusError,
  checkReplyLength,
  parseContentRange,
  refuseContentEncoding,
  skipLeading,
} from "./blob_range.ts";
import type { RegistryClient } from "./client.ts";
import { pullScope } from "./scope.ts";
import { digestHasher } from "./digest.ts";
import { validateDigest } from "./reference.ts";
import { NewFileInDir, removeAbandonedTemps, splitPath } from "../../ffi/new_file_in_dir.ts";
import { backoff, describeFailure, isNetworkError, policyAfterAttempt } from "./retry.ts";

/** Options of RegistryClient.downloadBlob. */
export interface DownloadOptions {
  /** Size from the descriptor; a blob of another size is refused. */
  expectedSizeBytes?: number;
  /** Called as bytes arrive (total is the expected or announced size, if known). */
  onProgress?: (receivedBytes: number, totalBytes: number | undefined) => void;
  signal?: AbortSignal;
}

/**
 * Streams a blob to `path`, hashing as it goes, resuming with a Range request after a broken
 * connection. The data goes to a new file in `path`'s directory (unnamed where the file system
 * allows, else `path.RANDOM.partial`; never opened through what is there: two pulls to one path,
 * or a symlink planted at the name, cannot mix or redirect the bytes) and gets the name `path`
 * only when the digest (and expected size) match, through one descriptor of the directory
 * (ffi/new_file_in_dir.ts); on any failure it is removed, so a wrong file never stays.
 */
export async function downloadBlob(
  client: RegistryClient,
  repository: string,
  digest: string,
  path: string,
  options: DownloadOptions = {},
): Promise<{ sizeBytes: number }> {
  validateDigest(digest);
  const out = NewFileInDir.create(path, { tempName: partialNameFor });
  try {
    removeAbandonedPartials(path, out.dirFd);
    const sizeBytes = await streamVerified(client, repository, digest, out, options);
    out.commit();
    return { sizeBytes };
  } finally {
    out.discard();
  }
}

async function streamVerified(
  client: RegistryClient,
  repository: string,
  digest: string,
  out: NewFileInDir,
  options: DownloadOptions,
): Promise<number> {
  const hasher = digestHasher(digest);
  let policy = client.newPolicy();
  let received = 0;
  let total = options.expectedSizeBytes;
  let attempt = 0;
  for (;;) {
    const response = await client.request({
      method: "GET",
      path: `/v2/${repository}/blobs/${digest}`,
      scope: pullScope(repository),
      // fetch offers gzip and br otherwise, and decodes a reply so encoded behind our back.
      headers: received > 0
        ? { range: `bytes=${received}-`, "accept-encoding": "identity" }
        : { "accept-encoding": "identity" },
      signal: options.signal,
      policy,
      route: "pull",
      streamedBody: true, // resumed after a break, a fresh deadline per MiB
    });
    let skip = 0;
    let announced: number | undefined;
    if (response.status === 200 || response.status === 206) {
      await refuseContentEncoding(response, client.host, digest);
    }
    if (response.status === 206) {
      const range = parseContentRange(response.headers.get("content-range"));
      if (!range || range.first > received) {
        await response.body?.cancel();
        throw new OciError(`registry ${client.host} sent a bad Content-Range resuming ${digest}`);
      }
      skip = received - range.first;
      announced = range.total;
    } else if (response.status === 200) {
      skip = received; // the server ignored our Range (or this is the first request)
      const length = Number(response.headers.get("content-length") ?? NaN);
      if (Number.isSafeInteger(length)) announced = length;
      if (announced !== undefined && total !== undefined) {
        await checkReplyLength(response, client.host, digest, announced, total);
      }
    } else {
      await blobStatusError(client, response, repository, digest);
    }
    if (announced !== undefined && total !== undefined && announced !== total) {
      await response.body?.cancel();
      throw new OciError(`blob ${digest} is ${announced} bytes but the manifest says ${total}`);
    }
    total ??= announced;
    const before = received;
    let failure: unknown;
    try {
      for await (let chunk of response.body ?? []) {
        const kept = skipLeading(chunk, skip);
        skip = kept.skip;
        if (!kept.chunk) continue;
        chunk = kept.chunk;
        if (total !== undefined && received + chunk.byteLength > total) {
          throw new OciError(`blob ${digest} is larger than ${total} bytes`);
        }
        hasher.update(chunk);
        out.write(chunk);
        received += chunk.byteLength;
        options.onProgress?.(received, total);
      }
    } catch (error) {
      if (!isNetworkError(error)) throw error;
      failure = error;
    }
    if (failure === undefined && (total === undefined || received === total)) break;
    policy = policyAfterAttempt(policy, received - before, () => client.newPolicy());
    attempt = received > before ? 1 : attempt + 1;
    const why = failure ? describeFailure(failure) : "body ended early";
    debug(`download ${digest}: ${received}/${total ?? "?"} bytes (${why}); resuming`);
    if (!(await backoff(attempt, policy, options.signal))) {
      throw new OciError(
        `download of ${digest} from ${client.host} broke off at ${received} of ${
          total ?? "?"
        } bytes (${why})`,
      );
    }
  }
  const actual = `${digest.slice(0, digest.indexOf(":"))}:${hasher.digest("hex")}`;
  if (actual !== digest) {
    throw new OciError(`blob ${digest} failed verification: its content hashes to ${actual}`);
  }
  return received;
}

/** A name beside `base` for its download in progress, new for each download. */
export function partialNameFor(base: string): string {
  return `${base}.${crypto.randomUUID().slice(0, 8)}.partial`;
}

/**
 * Removes the partial files of earlier downloads to `path` that a crash left where the file
 * system has no unnamed files (removeAbandonedTemps: those untouched for an hour).
 */
export function removeAbandonedPartials(path: string, dirFd: number): void {
  const { dir, base } = splitPath(path);
  removeAbandonedTemps(dir, dirFd, `${base}.`, ".partial");
}
