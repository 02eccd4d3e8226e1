/**
 * A source layer blob as one verified stream: bytes are hashed as they pass, and the stream
 * errors at its end unless the digest and the descriptor's size both match, so nothing built
 * from a wrong blob can be committed (the caller also checks `verified` before using the result).
 * Registry bodies that break off are resumed with a Range request from the bytes already passed.
 */
import { OciError } from "../errors.ts";
import { debug } from "../log.ts";
import { blobStatusError, parseContentRange, skipLeading } from "../oci/blob_range.ts";
import type { RegistryClient } from "../oci/client.ts";
import { pullScope } from "../oci/scope.ts";
import { digestHasher } from "../oci/digest.ts";
import type { OciLayout } from "../oci/oci_layout.ts";
import type { Source } from "../source/source.ts";
import { validateDigest } from "../oci/reference.ts";
import { backoff, describeFailure, isNetworkError, policyAfterAttempt } from "../oci/retry.ts";

/**
 * Where source blobs come from: a registry repository, a local OCI layout, or a random-access
 * source per blob read in order (a disk-cached registry blob keeps the bytes that pass).
 */
export type BlobStore =
  | { kind: "registry"; client: RegistryClient; repository: string }
  | { kind: "layout"; layout: OciLayout }
  | { kind: "source"; open(digest: string, sizeBytes: number): RunSource };

/** A blob's source for the "source" store: read in runs, the next one fetched meanwhile. */
export interface RunSource extends Source {
  /** Starts fetching [offset, offset + length) without waiting. */
  fillAhead?(offset: number, length: number): Promise<void>;
  /** Told when the whole blob did not match its digest: what it kept must not be used. */
  refuseBytes?(reason: string): Promise<void>;
}

export interface VerifiedBlob {
  stream: ReadableStream<Uint8Array>;
  /** True once every byte arrived and matched the digest and size. */
  verified(): boolean;
}

const LAYOUT_CHUNK_BYTES = 1 << 20;
/**
 * A "source" store's run: one ranged GET per run on a cold disk cache (17 for the 136 MB
 * benchmark image), the next run fetched while this one is read.
 */
const SOURCE_RUN_BYTES = 8 << 20;

/** Opens `digest` (of `sizeBytes`) from `store`; `onBytes` reports the bytes passed so far. */
export function openVerifiedBlob(
  store: BlobStore,
  digest: string,
  sizeBytes: number,
  onBytes?: (doneBytes: number) => void,
): VerifiedBlob {
  validateDigest(digest);
  const hasher = digestHasher(digest);
  let passed = 0;
  let ok = false;
  let actual: string | undefined;
  // Once, when every byte passed: the "source" store's end learns it before the stream does.
  const contentDigest = () =>
    actual ??= `${digest.slice(0, digest.indexOf(":"))}:${hasher.digest("hex")}`;
  const chunks = store.kind === "registry"
    ? registryChunks(store.client, store.repository, digest, sizeBytes, () => passed)
    : store.kind === "layout"
    ? layoutChunks(store.layout, digest, sizeBytes)
    : sourceChunks(store.open(digest, sizeBytes), digest, () => passed, contentDigest);
  const iterator = chunks[Symbol.asyncIterator]();
  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await iterator.next();
      if (done) {
        if (passed !== sizeBytes) {
          throw new OciError(`layer ${digest} ended at ${passed} of ${sizeBytes} bytes`);
        }
        const actual = contentDigest();
        if (actual !== digest) {
          throw new OciError(
            `layer ${digest} failed verification: its content hashes to ${actual}`,
            "the source registry or layout serves other bytes than its manifest names",
          );
        }
        ok = true;
        controller.close();
        return;
      }
      if (passed + value.byteLength > sizeBytes) {
        throw new OciError(
          `layer ${digest} is larger than the ${sizeBytes} bytes its manifest says`,
        );
      }
      hasher.update(value);
      passed += value.byteLength;
      onBytes?.(passed);
      controller.enqueue(value);
    },
    async cancel() {
      await iterator.return?.(undefined);
    },
  }, { highWaterMark: 0 });
  return { stream, verified: () => ok };
}

async function* layoutChunks(
  layout: OciLayout,
  digest: string,
  sizeBytes: number,
): AsyncGenerator<Uint8Array> {
  const file = layout.openBlob(digest);
  try {
    if (file.size !== sizeBytes) {
      throw new OciError(`blob ${digest} is ${file.size} bytes but the manifest says ${sizeBytes}`);
    }
    for (let offset = 0; offset < file.size; offset += LAYOUT_CHUNK_BYTES) {
      yield await file.read(offset, Math.min(LAYOUT_CHUNK_BYTES, file.size - offset));
    }
  } finally {
    file.close();
  }
}

/**
 * The bytes of `source` in runs, the next one fetched while the current one is read. When all
 * passed and do not hash to `digest`, the source is told before it is closed.
 */
async function* sourceChunks(
  source: RunSource,
  digest: string,
  passed: () => number,
  contentDigest: () => string,
): AsyncGenerator<Uint8Array> {
  try {
    for (let offset = 0; offset < source.size; offset += SOURCE_RUN_BYTES) {
      const length = Math.min(SOURCE_RUN_BYTES, source.size - offset);
      const next = offset + length;
      if (next < source.size) {
        source.fillAhead?.(next, Math.min(SOURCE_RUN_BYTES, source.size - next));
      }
      yield await source.read(offset, length);
    }
    if (passed() === source.size && contentDigest() !== digest) {
      await source.refuseBytes?.(`layer ${digest} does not match its digest`);
    }
  } finally {
    await source.close?.();
  }
}

/** The blob's bytes in order; a broken body is resumed at `passed()` with a Range request. */
async function* registryChunks(
  client: RegistryClient,
  repository: string,
  digest: string,
  sizeBytes: number,
  passed: () => number,
): AsyncGenerator<Uint8Array> {
  let policy = client.newPolicy();
  let attempt = 0;
  for (;;) {
    const start = passed();
    const response = await client.request({
      method: "GET",
      path: `/v2/${repository}/blobs/${digest}`,
      scope: pullScope(repository),
      headers: start > 0 ? { range: `bytes=${start}-` } : {},
      policy,
      route: "pull",
      streamedBody: true, // resumed after a break, a fresh deadline per MiB
    });
    let skip = 0;
    if (response.status === 206) {
      const range = parseContentRange(response.headers.get("content-range"));
      if (!range || range.first > start || range.total !== sizeBytes) {
        await response.body?.cancel();
        throw new OciError(`registry ${client.host} sent a bad Content-Range resuming ${digest}`);
      }
      skip = start - range.first;
    } else if (response.status === 200) {
      skip = start; // a server that ignores Range starts again from byte 0
      const length = Number(response.headers.get("content-length") ?? NaN);
      if (Number.isSafeInteger(length) && length !== sizeBytes) {
        await response.body?.cancel();
        throw new OciError(`blob ${digest} is ${length} bytes but the manifest says ${sizeBytes}`);
      }
    } else {
      await blobStatusError(client, response, repository, digest);
    }
    const before = start;
    let failure: unknown;
    const reader = response.body!.getReader();
    try {
      for (;;) {
        let chunk: Uint8Array;
        try {
          const next = await reader.read();
          if (next.done) break;
          chunk = next.value;
        } catch (error) {
          if (!isNetworkError(error)) throw error;
          failure = error;
          break;
        }
        const kept = skipLeading(chunk, skip);
        skip = kept.skip;
        if (!kept.chunk) continue;
        chunk = kept.chunk;
        yield chunk;
      }
    } finally {
      await reader.cancel().catch(() => {});
    }
    if (failure === undefined && passed() >= sizeBytes) return;
    policy = policyAfterAttempt(policy, passed() - before, () => client.newPolicy());
    attempt = passed() > before ? 1 : attempt + 1;
    const why = failure ? describeFailure(failure) : "body ended early";
    debug(`layer ${digest}: ${passed()}/${sizeBytes} bytes (${why}); resuming`);
    if (!(await backoff(attempt, policy))) {
      throw new OciError(
        `download of ${digest} from ${client.host} broke off at ${passed()} of ${sizeBytes} ` +
          `bytes (${why})`,
      );
    }
  }
}
