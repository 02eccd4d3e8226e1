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
 * (metadata_ranges.ts), so a mount fetches just those bytes instead of walking whole chunks, and
 * `"subchunks": {"bytes", "chunks"}`: the sha256 of every `bytes`-long piece (64 KiB) too, so a
 * few scattered pages (a trace prefetch's) are checked in 64 KiB pieces instead of 1 MiB chunks.
 */
import { createHash } from "../node_builtins.ts";
import { PieceHasher } from "../source/piece_hasher.ts";
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
import { parseJson } from "../json.ts";

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
/**
 * Subchunks of a table with larger chunks. A python start's trace (134 ranges, 2.8 MB) touched
 * ~34 table chunks of the benchmark image: 38.8 MB fetched and hashed at 1 MiB against ~8 MB
 * at 64 KiB (docs/benchmarks.md, session 42).
 */
export const DEFAULT_SUBCHUNK_BYTES = 64 * 1024;
const MIN_SUBCHUNK_BYTES = 4096;
/** At most this many subchunk digests (4 MiB of hex: a 4 GiB layer at 64 KiB); past it none. */
export const MAX_SUBCHUNKS = 65536;
const MIN_CHUNK_BYTES = 64 * 1024;
const MAX_CHUNK_BYTES = 64 * 1024 * 1024;
const DIGEST_BYTES = SHA256_BYTES;
/** A table of a 256 GiB layer at 1 MiB chunks is 16 MiB of hex; larger ones are refused. */
export const MAX_TABLE_BYTES = 17 * 1024 * 1024;
const LAYER_DIGEST = /^sha256:[0-9a-f]{64}$/;

/** A table's subchunk digests: `hex` as stored, decoded on first use (a mount may never). */
export interface Subchunks {
  bytes: number;
  hex: string;
}

export class ChunkTable {
  readonly chunkCount: number;
  #subchunkDigests?: Uint8Array;

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
    readonly subchunks?: Subchunks,
  ) {
    this.chunkCount = digests.length / DIGEST_BYTES;
  }

  /**
   * This table without its metadata list's pack: the pack is a blob of its own that only the
   * table vouches for, so a table nothing else vouches for (one found by referrer, not named by
   * the digest-pinned manifest) would certify bytes that are not the layer's — anyone who could
   * push one artifact changed the tree a digest-pinned mount showed. Without it the listed
   * ranges are read from the layer itself.
   */
  withoutMetadataPack(): ChunkTable {
    if (this.metadata?.pack === undefined) return this;
    const { pack: _pack, ...metadata } = this.metadata;
    return new ChunkTable(
      this.layerDigest,
      this.sizeBytes,
      this.chunkBytes,
      this.digests,
      metadata,
      undefined,
      this.subchunks,
    );
  }

  static of(
    layerDigest: string,
    sizeBytes: number,
    chunkBytes: number,
    digests: Uint8Array,
    metadata?: MetadataRanges,
    subchunks?: Subchunks,
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
    if (subchunks) checkSubchunks(subchunks, sizeBytes, chunkBytes);
    return new ChunkTable(
      layerDigest,
      sizeBytes,
      chunkBytes,
      digests,
      metadata,
      undefined,
      subchunks,
    );
  }

  /** Bytes per subchunk digest, when the table has them. */
  get subchunkBytes(): number | undefined {
    return this.subchunks?.bytes;
  }

  /** Checks one whole subchunk (`bytes` must be all of subchunk `index`). */
  subchunkMatches(index: number, bytes: Uint8Array): boolean {
    const digests = this.#wholeSubchunk(index, bytes);
    return digests !== undefined && matchesDigestAt(digests, index, bytes);
  }

  /** subchunkMatches() hashed through Web Crypto (see matchesAsync). */
  async subchunkMatchesAsync(index: number, bytes: Uint8Array): Promise<boolean> {
    const digests = this.#wholeSubchunk(index, bytes);
    return digests !== undefined && await matchesDigestAtAsync(digests, index, bytes);
  }

  /** The subchunk digests when `bytes` are as long as subchunk `index` (which the table has). */
  #wholeSubchunk(index: number, bytes: Uint8Array): Uint8Array | undefined {
    const unit = this.subchunks?.bytes;
    if (!unit || index < 0 || index * unit >= this.sizeBytes) return undefined;
    if (bytes.length !== Math.min(unit, this.sizeBytes - index * unit)) return undefined;
    this.#subchunkDigests ??= digestsOfHex(this.subchunks!.hex);
    return this.#subchunkDigests;
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
      this.subchunks,
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
      ...(this.subchunks
        ? { subchunks: { bytes: this.subchunks.bytes, chunks: this.subchunks.hex } }
        : {}),
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

/** Subchunks of a power-of-two size below the chunk's, one digest (64 hex) for each. */
function checkSubchunks(subchunks: Subchunks, sizeBytes: number, chunkBytes: number): void {
  const { bytes, hex } = subchunks;
  if (
    !Number.isSafeInteger(bytes) || bytes < MIN_SUBCHUNK_BYTES || bytes >= chunkBytes ||
    (bytes & (bytes - 1)) !== 0
  ) throw new FormatError(`chunk table: bad subchunk size ${bytes}`);
  const count = Math.ceil(sizeBytes / bytes);
  if (
    count > MAX_SUBCHUNKS || hex.length !== count * DIGEST_BYTES * 2 || !/^[0-9a-f]*$/.test(hex)
  ) {
    throw new FormatError(`chunk table: subchunk digests do not fit ${count} subchunks`);
  }
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
    value = parseJson(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
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
  const sub = value.subchunks as Record<string, unknown> | undefined;
  if (
    sub !== undefined &&
    (typeof sub !== "object" || sub === null || typeof sub.bytes !== "number" ||
      typeof sub.chunks !== "string")
  ) throw new FormatError("chunk table: subchunks are not {bytes, chunks}");
  const subchunks = sub && { bytes: sub.bytes as number, hex: sub.chunks as string };
  const table = ChunkTable.of(l.digest, l.size, value.chunkBytes, digests, metadata, subchunks);
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
  readonly #chunks: PieceHasher;
  readonly #subchunks?: PieceHasher;
  #total = 0;

  /** `subchunkBytes` 0: none (the default has them when chunks are larger than 64 KiB). */
  constructor(
    readonly chunkBytes = DEFAULT_TABLE_CHUNK_BYTES,
    readonly subchunkBytes = chunkBytes > DEFAULT_SUBCHUNK_BYTES ? DEFAULT_SUBCHUNK_BYTES : 0,
  ) {
    checkShape(`sha256:${"0".repeat(64)}`, 0, chunkBytes);
    if (subchunkBytes) checkSubchunks({ bytes: subchunkBytes, hex: "" }, 0, chunkBytes);
    this.#chunks = new PieceHasher(chunkBytes);
    if (subchunkBytes) this.#subchunks = new PieceHasher(subchunkBytes, MAX_SUBCHUNKS);
  }

  update(bytes: Uint8Array): void {
    this.#whole.update(bytes);
    this.#total += bytes.length;
    this.#chunks.update(bytes);
    this.#subchunks?.update(bytes);
  }

  /** The table; refuses when the bytes were not `expectedDigest` (when given). */
  finish(expectedDigest?: string): ChunkTable {
    const layerDigest = `sha256:${this.#whole.digest("hex")}`;
    if (expectedDigest && expectedDigest !== layerDigest) {
      throw new FormatError(
        `layer bytes hash to ${layerDigest}, not ${expectedDigest}`,
        "the registry served other bytes under this digest",
      );
    }
    // finish() first: the last piece may be the one too many.
    const subchunkDigests = this.#subchunks?.finish();
    const subchunks = this.#subchunks?.tooMany ? undefined : subchunkDigests;
    return ChunkTable.of(
      layerDigest,
      this.#total,
      this.chunkBytes,
      this.#chunks.finish(),
      undefined,
      subchunks && { bytes: this.subchunkBytes, hex: hexOfDigests(subchunks) },
    );
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
