/**
 * A chunk-digest table: the sha256 of every fixed-size chunk of one layer blob, with the
 * layer's digest and size. A ranged read cannot be checked against the whole-blob digest; a
 * read widened to whole chunks can be checked against this table, so a lazily fetched byte is
 * verified before anything uses it.
 *
 * Stored as a small JSON blob (media type CHUNK_TABLE_MEDIA_TYPE):
 * `{"schemaVersion":1,"algorithm":"sha256","layer":{"digest","size"},"chunkBytes",
 * "chunks":"<hex digests back to back>"}`. The last chunk may be shorter. An EROFS layer's table
 * may also carry `"metadata"`: where its directory metadata lies, with a digest per range
 * (metadata_ranges.ts), so a mount fetches just those bytes instead of walking whole chunks.
 */
import { createHash, type Hash } from "../node_builtins.ts";
import { FormatError } from "../errors.ts";
import { digestOf } from "../oci/digest.ts";
import {
  digestsOfHex,
  hexOfDigests,
  matchesDigestAt,
  matchesDigestAtAsync,
  SHA256_BYTES,
} from "./sha256_list.ts";
import {
  encodeMetadataRanges,
  metadataBytes,
  type MetadataRanges,
  parseMetadataRanges,
} from "./metadata_ranges.ts";
import { type MadeMetadataRanges, metadataRangesOfFile } from "./make_metadata_ranges.ts";

export const CHUNK_TABLE_MEDIA_TYPE = "application/vnd.io.github.erofs-oci.chunk-digests.v1+json";
/** artifactType of the manifest that carries the tables of an image (referrers API). */
export const CHUNK_TABLES_ARTIFACT_TYPE = "application/vnd.io.github.erofs-oci.chunk-digests.v1";
/**
 * On a layer descriptor of an image manifest: the digest of that layer's table blob. The
 * manifest (pinned by digest) then pins the table, so a registry cannot swap data and table.
 */
export const CHUNK_TABLE_ANNOTATION = "io.github.erofs-oci.chunk-digests";
/** On a table blob's descriptor in the tables artifact: the layer it describes. */
export const TABLE_LAYER_ANNOTATION = "io.github.erofs-oci.layer.digest";

export const DEFAULT_TABLE_CHUNK_BYTES = 1024 * 1024;
const MIN_CHUNK_BYTES = 64 * 1024;
const MAX_CHUNK_BYTES = 64 * 1024 * 1024;
const DIGEST_BYTES = SHA256_BYTES;
/** A table of a 256 GiB layer at 1 MiB chunks is 16 MiB of hex; larger ones are refused. */
export const MAX_TABLE_BYTES = 17 * 1024 * 1024;
const LAYER_DIGEST = /^sha256:[0-9a-f]{64}$/;

export class ChunkTable {
  readonly chunkCount: number;

  private constructor(
    readonly layerDigest: string,
    readonly sizeBytes: number,
    readonly chunkBytes: number,
    /** The chunk digests, 32 bytes each, back to back. */
    readonly digests: Uint8Array,
    /** Where the layer's directory metadata lies (EROFS layers whose maker recorded it). */
    readonly metadata?: MetadataRanges,
    /** The list's pack, on a table just made (to upload beside it; not part of the table). */
    readonly metadataPack?: Uint8Array<ArrayBuffer>,
  ) {
    this.chunkCount = digests.length / DIGEST_BYTES;
  }

  static of(
    layerDigest: string,
    sizeBytes: number,
    chunkBytes: number,
    digests: Uint8Array,
    metadata?: MetadataRanges,
  ) {
    checkShape(layerDigest, sizeBytes, chunkBytes);
    const want = Math.ceil(sizeBytes / chunkBytes) * DIGEST_BYTES;
    if (digests.length !== want) {
      throw new FormatError(
        `chunk table: ${digests.length / DIGEST_BYTES} digests for a layer of ${
          want / DIGEST_BYTES
        } chunks`,
      );
    }
    return new ChunkTable(layerDigest, sizeBytes, chunkBytes, digests, metadata);
  }

  /** The same table with a list just made (checked like a parsed one) and its pack. */
  withMetadata(made: MadeMetadataRanges | undefined): ChunkTable {
    if (!made) return this;
    const checked = parseMetadataRanges(encodeMetadataRanges(made.ranges), this.sizeBytes);
    if (made.pack.length !== metadataBytes(checked)) {
      throw new FormatError("chunk table: the metadata pack is not the listed bytes");
    }
    return new ChunkTable(
      this.layerDigest,
      this.sizeBytes,
      this.chunkBytes,
      this.digests,
      checked,
      made.pack,
    );
  }

  /** Whether `bytes` are as long as chunk `index` of this table (which it has). */
  #isWholeChunk(index: number, bytes: Uint8Array): boolean {
    if (index < 0 || index >= this.chunkCount) return false;
    return bytes.length === Math.min(this.chunkBytes, this.sizeBytes - index * this.chunkBytes);
  }

  /** Checks one whole chunk (`bytes` must be all of chunk `index`). */
  matches(index: number, bytes: Uint8Array): boolean {
    return this.#isWholeChunk(index, bytes) && matchesDigestAt(this.digests, index, bytes);
  }

  /**
   * matches() hashed through Web Crypto: only the copy of `bytes` (taken before this returns)
   * runs on the JS thread, the hash on Deno's blocking pool. A fill's checks then leave the
   * event loop to the reads being served: in the TCG guest node:crypto held it ~24 ms per 1 MiB
   * chunk, and a cold tar over NBD read almost nothing while the windows were fetched.
   */
  async matchesAsync(index: number, bytes: Uint8Array): Promise<boolean> {
    return this.#isWholeChunk(index, bytes) &&
      await matchesDigestAtAsync(this.digests, index, bytes);
  }

  encode(): Uint8Array<ArrayBuffer> {
    return new TextEncoder().encode(JSON.stringify({
      schemaVersion: 1,
      algorithm: "sha256",
      layer: { digest: this.layerDigest, size: this.sizeBytes },
      chunkBytes: this.chunkBytes,
      chunks: hexOfDigests(this.digests),
      ...(this.metadata ? { metadata: encodeMetadataRanges(this.metadata) } : {}),
    }));
  }
}

function checkShape(layerDigest: string, sizeBytes: number, chunkBytes: number): void {
  if (!LAYER_DIGEST.test(layerDigest)) {
    throw new FormatError(`chunk table: layer digest '${layerDigest}' is not sha256:<hex>`);
  }
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
    throw new FormatError(`chunk table: bad layer size ${sizeBytes}`);
  }
  if (
    !Number.isSafeInteger(chunkBytes) || chunkBytes < MIN_CHUNK_BYTES ||
    chunkBytes > MAX_CHUNK_BYTES || (chunkBytes & (chunkBytes - 1)) !== 0
  ) throw new FormatError(`chunk table: bad chunk size ${chunkBytes}`);
}

/**
 * Parses a table blob (hostile input: bounded, every field checked) and, when `layer` is
 * given, refuses a table of another layer.
 */
export function parseChunkTable(
  bytes: Uint8Array,
  layer?: { digest: string; sizeBytes: number },
): ChunkTable {
  if (bytes.length > MAX_TABLE_BYTES) throw new FormatError("chunk table: too large");
  let value: Record<string, unknown>;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new FormatError("chunk table: not JSON");
  }
  const l = value?.layer as Record<string, unknown> | undefined;
  if (
    value?.schemaVersion !== 1 || value.algorithm !== "sha256" || typeof l !== "object" ||
    l === null || typeof l.digest !== "string" || typeof l.size !== "number" ||
    typeof value.chunkBytes !== "number" || typeof value.chunks !== "string" ||
    !/^[0-9a-f]*$/.test(value.chunks) || value.chunks.length % 2 !== 0
  ) throw new FormatError("chunk table: not a sha256 chunk-digest table of schema 1");
  const digests = digestsOfHex(value.chunks);
  const metadata = value.metadata === undefined
    ? undefined
    : parseMetadataRanges(value.metadata, l.size);
  const table = ChunkTable.of(l.digest, l.size, value.chunkBytes, digests, metadata);
  if (layer && (table.layerDigest !== layer.digest || table.sizeBytes !== layer.sizeBytes)) {
    throw new FormatError(
      `chunk table is of layer ${table.layerDigest} (${table.sizeBytes} bytes), not of ${layer.digest} (${layer.sizeBytes} bytes)`,
      "the table was made for another layer; make one again: `erofs-oci checksums IMAGE --push`",
    );
  }
  return table;
}

/**
 * Builds a table while a layer's bytes stream past (push, build, convert, checksums), and
 * hashes the whole layer too, so a table is only ever made from bytes of its layer digest.
 */
export class ChunkTableBuilder {
  readonly #whole = createHash("sha256");
  #chunk: Hash | undefined;
  #filled = 0;
  #total = 0;
  readonly #digests: Uint8Array[] = [];

  constructor(readonly chunkBytes = DEFAULT_TABLE_CHUNK_BYTES) {
    checkShape(`sha256:${"0".repeat(64)}`, 0, chunkBytes);
  }

  update(bytes: Uint8Array): void {
    this.#whole.update(bytes);
    this.#total += bytes.length;
    let at = 0;
    while (at < bytes.length) {
      this.#chunk ??= createHash("sha256");
      const n = Math.min(bytes.length - at, this.chunkBytes - this.#filled);
      this.#chunk.update(bytes.subarray(at, at + n));
      this.#filled += n;
      at += n;
      if (this.#filled === this.chunkBytes) this.#close();
    }
  }

  /** The table; refuses when the bytes were not `expectedDigest` (when given). */
  finish(expectedDigest?: string): ChunkTable {
    this.#close();
    const layerDigest = `sha256:${this.#whole.digest("hex")}`;
    if (expectedDigest && expectedDigest !== layerDigest) {
      throw new FormatError(
        `layer bytes hash to ${layerDigest}, not ${expectedDigest}`,
        "the registry served other bytes under this digest",
      );
    }
    const digests = new Uint8Array(this.#digests.length * DIGEST_BYTES);
    this.#digests.forEach((d, i) => digests.set(d, i * DIGEST_BYTES));
    return ChunkTable.of(layerDigest, this.#total, this.chunkBytes, digests);
  }

  #close(): void {
    if (!this.#chunk || this.#filled === 0) return;
    this.#digests.push(new Uint8Array(this.#chunk.digest()));
    this.#chunk = undefined;
    this.#filled = 0;
  }
}

/** A table blob ready to upload, and its metadata pack blob when it has one. */
export interface EncodedTable {
  table: ChunkTable;
  bytes: Uint8Array<ArrayBuffer>;
  digest: string;
  pack?: { bytes: Uint8Array<ArrayBuffer>; digest: string };
}

export function encodeTable(table: ChunkTable): EncodedTable {
  const bytes = table.encode();
  const packDigest = table.metadata?.pack;
  return {
    table,
    bytes,
    digest: digestOf(bytes),
    ...(table.metadataPack && packDigest
      ? { pack: { bytes: table.metadataPack, digest: packDigest } }
      : {}),
  };
}

/**
 * The table of a local file (a layer about to be pushed), with its metadata range list when the
 * file is an EROFS image.
 */
export async function chunkTableOfFile(
  path: string,
  chunkBytes = DEFAULT_TABLE_CHUNK_BYTES,
): Promise<ChunkTable> {
  return await withFileMetadata(await chunkTableOfBytesOnly(path, chunkBytes), path);
}

/**
 * `table` with the metadata range list of the EROFS image at `path` (read again, checked
 * against `table`); unchanged for anything else.
 */
export async function withFileMetadata(table: ChunkTable, path: string): Promise<ChunkTable> {
  return table.withMetadata(await metadataRangesOfFile(path, table));
}

async function chunkTableOfBytesOnly(path: string, chunkBytes: number): Promise<ChunkTable> {
  const builder = new ChunkTableBuilder(chunkBytes);
  using file = await Deno.open(path);
  const buffer = new Uint8Array(1 << 20);
  for (;;) {
    const n = await file.read(buffer);
    if (n === null) break;
    builder.update(buffer.subarray(0, n));
  }
  return builder.finish();
}
