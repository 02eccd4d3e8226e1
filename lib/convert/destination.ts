/**
 * Where a converted image goes: a registry repository or an OCI layout directory. Blobs and
 * per-platform manifests go up first; the tag is written last, so a failure part-way leaves
 * at most untagged blobs, never a tag naming a half-pushed image.
 */
import { OciError } from "../errors.ts";
import { blobExists, refusedWrite, uploadBlob } from "../oci/blob_upload.ts";
import type { RegistryClient } from "../oci/client.ts";
import { pushScope } from "../oci/scope.ts";
import { digestOf } from "../oci/digest.ts";
import { type Descriptor, parseManifestDocument } from "../oci/manifest.ts";
import { formatReference, type ImageReference } from "../oci/reference.ts";
import { fetchManifest } from "../oci/resolve.ts";
import { OCI_MANIFEST } from "../oci/media_types.ts";
import { fetchTable, pushTablesArtifact, type TableRef } from "../verify/table_artifact.ts";
import type { ChunkTable } from "../verify/chunk_table.ts";

/** A blob to store: a file on disk or bytes in memory, with its digest already known. */
export interface OutputBlob {
  digest: string;
  sizeBytes: number;
  mediaType: string;
  path?: string;
  bytes?: Uint8Array<ArrayBuffer>;
}

export interface ImageDestination {
  /** The destination as named, with its tag. */
  readonly name: string;
  /** Layer descriptors of the image now at the tag (every platform), for reuse. */
  previousLayers(): Promise<Descriptor[]>;
  hasBlob(digest: string): Promise<boolean>;
  /**
   * The chunk-digest table blob `digest` already at the destination (a reused layer's), checked
   * against its digest and refused unless it describes `layer`; its byte size. A blob the
   * destination does not have (as hasBlob judges) rejects with an OciError of status 404.
   */
  readTable(
    digest: string,
    layer: { digest: string; sizeBytes: number },
  ): Promise<{ table: ChunkTable; sizeBytes: number }>;
  /** Stores a blob unless present; `onProgress` reports uploaded bytes. */
  putBlob(blob: OutputBlob, onProgress?: (doneBytes: number) => void): Promise<void>;
  /** Stores a manifest by digest only (an index entry), untagged. */
  putManifest(bytes: Uint8Array<ArrayBuffer>, mediaType: string): Promise<string>;
  /** Stores the top manifest or index under the tag; returns `name@digest`. */
  tag(bytes: Uint8Array<ArrayBuffer>, mediaType: string): Promise<string>;
  /** Lists the manifest's chunk-digest tables in an artifact referring to it (registries). */
  referTables?(manifestDigest: string, manifestSize: number, tables: TableRef[]): Promise<void>;
  /**
   * After a failed or interrupted conversion (synchronous: signal handlers call it): removes
   * what this run created that nothing names, such as a new layout directory with no tag.
   */
  abandon?(): void;
}

/** Most manifests of an index looked at for reusable layers (a hostile index stays cheap). */
export const MAX_PREVIOUS_MANIFESTS = 64;

export class RegistryDestination implements ImageDestination {
  readonly name: string;
  readonly #client: RegistryClient;
  readonly #ref: ImageReference;
  readonly #tag: string;

  constructor(client: RegistryClient, ref: ImageReference) {
    if (ref.digest) {
      throw new OciError(
        `cannot convert to a digest reference (${formatReference(ref)})`,
        "name a tag; the manifest digest is printed afterwards",
        { exitCode: 2 },
      );
    }
    this.#client = client;
    this.#tag = ref.tag ?? "latest";
    this.#ref = { ...ref, tag: this.#tag };
    this.name = formatReference(this.#ref);
  }

  async previousLayers(): Promise<Descriptor[]> {
    const repository = this.#ref.repository;
    let top;
    try {
      top = await fetchManifest(this.#client, repository, this.#tag);
    } catch (error) {
      if (error instanceof OciError && error.status === 404) return [];
      throw error;
    }
    if (top.document.kind === "manifest") return top.document.layers;
    const layers: Descriptor[] = [];
    for (const entry of top.document.manifests.slice(0, MAX_PREVIOUS_MANIFESTS)) {
      try {
        const child = await fetchManifest(this.#client, repository, entry.digest);
        if (child.document.kind === "manifest") layers.push(...child.document.layers);
      } catch (error) {
        if (!(error instanceof OciError)) throw error;
      }
    }
    return layers;
  }

  hasBlob(digest: string): Promise<boolean> {
    return blobExists(this.#client, this.#ref.repository, digest);
  }

  async readTable(
    digest: string,
    layer: { digest: string; sizeBytes: number },
  ): Promise<{ table: ChunkTable; sizeBytes: number }> {
    const { table, bytes } = await fetchTable(this.#client, this.#ref.repository, digest, layer);
    return { table, sizeBytes: bytes.byteLength };
  }

  async putBlob(blob: OutputBlob, onProgress?: (doneBytes: number) => void): Promise<void> {
    if (await this.hasBlob(blob.digest)) return;
    await uploadBlob(this.#client, this.#ref.repository, blob, {
      onProgress: (event) => onProgress?.(event.doneBytes),
    });
  }

  async putManifest(bytes: Uint8Array<ArrayBuffer>, mediaType: string): Promise<string> {
    const digest = digestOf(bytes);
    await this.#put(digest, bytes, mediaType);
    return digest;
  }

  async tag(bytes: Uint8Array<ArrayBuffer>, mediaType: string): Promise<string> {
    const digest = digestOf(bytes);
    await this.#put(this.#tag, bytes, mediaType);
    return `${this.name}@${digest}`;
  }

  async referTables(manifestDigest: string, manifestSize: number, tables: TableRef[]) {
    if (tables.length === 0) return;
    await pushTablesArtifact(this.#client, this.#ref.repository, {
      digest: manifestDigest,
      size: manifestSize,
      mediaType: OCI_MANIFEST,
    }, tables);
  }

  async #put(reference: string, bytes: Uint8Array<ArrayBuffer>, mediaType: string) {
    const put = await this.#client.request({
      method: "PUT",
      path: `/v2/${this.#ref.repository}/manifests/${reference}`,
      scope: pushScope(this.#ref.repository),
      body: bytes,
      headers: { "content-type": mediaType },
    });
    if (put.status !== 201) {
      throw await refusedWrite(this.#client, put, `storing manifest ${reference}`);
    }
    await put.body?.cancel();
    const stored = put.headers.get("docker-content-digest");
    const digest = digestOf(bytes);
    if (stored && stored !== digest) {
      throw new OciError(`registry stored the manifest as ${stored}, expected ${digest}`);
    }
  }
}

/** Parses a stored manifest body for previousLayers; anything odd counts as "no layers". */
export function layersOfManifest(bytes: Uint8Array): Descriptor[] {
  try {
    const doc = parseManifestDocument(bytes, undefined);
    return doc.kind === "manifest" ? doc.layers : [];
  } catch {
    return [];
  }
}
