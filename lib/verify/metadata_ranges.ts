/**
 * The metadata range list of a chunk-digest table: where an EROFS layer keeps the pages a cold
 * `find` reads (superblock, directory inodes and blocks), as coalesced byte ranges with the
 * sha256 of each, recorded when the table is made (the maker has the whole layer at hand).
 *
 * Why: mkfs.erofs scatters directories over the image (the benchmark image's 2.3 MB of them lie
 * in 74 of its 130 MiB), so a mount that only learns where they are by walking the tree, level by
 * level, fetches and hashes whole 1 MiB table chunks: ~77-106 MB before the mount is ready, which
 * is CPU (registry and server) more than round trips. With the list, the mount fetches just the
 * ranges, in one multi-range GET where the registry answers those (else a few parallel GETs),
 * checks each range against its digest, and pins them: the walk then finds its pages there.
 *
 * The pack: the listed bytes back to back, uploaded as a blob of their own beside the table (its
 * digest in the list), so a mount fetches them with one plain GET of a small contiguous blob
 * instead of multi-range GETs of the layer: those make a registry read ~110 MB of a cold
 * 136 MB blob (readahead after each seek) and object stores behind registries answer no
 * multi-range requests at all. Tables made before the pack, or a registry that lost it, fall
 * back to the ranged GETs.
 *
 * Trust: the list is a field of the table blob, so it is bound like the table (the manifest's
 * layer annotation names the table's digest). Still hostile input: its size is bounded, every
 * field is checked, and a list that lies (ranges that are not metadata, digests that do not
 * match) costs only speed: a range that does not hash to its digest is dropped, and the walk
 *
 * This file is the list's format (limits, parse, encode, per-range check); the list is made
 * from an image in make_metadata_ranges.ts and fetched and checked at mount in
 * load_metadata_ranges.ts.
 */
import { FormatError } from "../errors.ts";
import { digestsOfHex, hexOfDigests, matchesDigestAtAsync, SHA256_BYTES } from "./sha256_list.ts";

/** Media type of a metadata pack blob (in the tables artifact, beside its table). */
export const METADATA_PACK_MEDIA_TYPE = "application/vnd.io.github.erofs-oci.metadata-pack.v1";
const PACK_DIGEST = /^sha256:[0-9a-f]{64}$/;

/** Ranges one list holds at most (the benchmark image needs 171). */
export const MAX_METADATA_RANGES = 4096;
/** Bytes all ranges cover at most (the mount pins them; its pin budget bounds them again). */
export const MAX_METADATA_BYTES = 32 << 20;
/** Largest single range. */
export const MAX_METADATA_RANGE_BYTES = 4 << 20;
/**
 * The image head a list made by this tool also holds: what a new NBD device's partition scan
 * reads at its first open (4 KiB pages 0, 1 and 3; /work/shared/docs/kernel-notes.md). Only
 * page 0 is EROFS metadata; pinned with the rest, the scan needs no GET of the layer's first
 * chunk (under TCG that GET and its check took 0.9 s of the mount's attach).
 */
export const LISTED_HEAD_BYTES = 16 << 10;
const DIGEST_BYTES = SHA256_BYTES;

/** Ranges sorted by offset, not overlapping, each with its sha256 (`digests`, 32 bytes each). */
export interface MetadataRanges {
  readonly offsets: readonly number[];
  readonly lengths: readonly number[];
  readonly digests: Uint8Array;
  /** `sha256:<hex>` of the pack: every range's bytes back to back, in order (a blob). */
  readonly pack?: string;
}

/** Whether the ranges (sorted, as parsed) cover every byte of [0, `bytes`). */
export function rangesCoverStart(ranges: MetadataRanges, bytes: number): boolean {
  let covered = 0;
  for (let i = 0; i < ranges.offsets.length && covered < bytes; i++) {
    if (ranges.offsets[i] > covered) return false;
    covered = Math.max(covered, ranges.offsets[i] + ranges.lengths[i]);
  }
  return covered >= bytes;
}

export function metadataRangeCount(ranges: MetadataRanges): number {
  return ranges.offsets.length;
}

export function metadataBytes(ranges: Pick<MetadataRanges, "lengths">): number {
  return ranges.lengths.reduce((sum, n) => sum + n, 0);
}

/** True when `bytes` are range `index`'s whole bytes (Web Crypto: no Node layer on the way). */
export async function matchesRange(
  ranges: MetadataRanges,
  index: number,
  bytes: Uint8Array,
): Promise<boolean> {
  if (index < 0 || index >= ranges.offsets.length || bytes.length !== ranges.lengths[index]) {
    return false;
  }
  return await matchesDigestAtAsync(ranges.digests, index, bytes);
}

/**
 * The table's JSON field: `{"ranges":[offset,length,…],"digests":"<hex, 64 per range>"}`, and
 * `"pack":"sha256:<hex>"` when the list's pack was uploaded.
 */
export function encodeMetadataRanges(ranges: MetadataRanges): Record<string, unknown> {
  const flat: number[] = [];
  ranges.offsets.forEach((offset, i) => flat.push(offset, ranges.lengths[i]));
  return {
    ranges: flat,
    digests: hexOfDigests(ranges.digests),
    ...(ranges.pack ? { pack: ranges.pack } : {}),
  };
}

/**
 * Checks the field of a table of a `sizeBytes` layer (hostile input): at most
 * MAX_METADATA_RANGES ranges, each inside the layer, ascending and apart, none over
 * MAX_METADATA_RANGE_BYTES, all together at most MAX_METADATA_BYTES, one digest each.
 */
export function parseMetadataRanges(value: unknown, sizeBytes: number): MetadataRanges {
  const bad = (why: string) => new FormatError(`chunk table: metadata ranges: ${why}`);
  const v = value as Record<string, unknown> | null;
  if (typeof v !== "object" || v === null || !Array.isArray(v.ranges)) throw bad("not a list");
  const flat = v.ranges as unknown[];
  const digestsHex = v.digests;
  if (flat.length % 2 !== 0 || flat.length / 2 > MAX_METADATA_RANGES) {
    throw bad(`${flat.length} numbers (pairs, at most ${MAX_METADATA_RANGES})`);
  }
  const count = flat.length / 2;
  if (
    typeof digestsHex !== "string" || digestsHex.length !== count * DIGEST_BYTES * 2 ||
    !/^[0-9a-f]*$/.test(digestsHex)
  ) throw bad("digests are not one sha256 per range");
  const offsets: number[] = [];
  const lengths: number[] = [];
  let end = 0;
  let total = 0;
  for (let i = 0; i < count; i++) {
    const offset = flat[2 * i], length = flat[2 * i + 1];
    if (
      typeof offset !== "number" || typeof length !== "number" || !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) || length <= 0 || length > MAX_METADATA_RANGE_BYTES ||
      offset < end || offset + length > sizeBytes
    ) throw bad(`range ${i} (${offset}, ${length}) is out of order or outside the layer`);
    total += length;
    if (total > MAX_METADATA_BYTES) throw bad(`more than ${MAX_METADATA_BYTES} bytes`);
    offsets.push(offset);
    lengths.push(length);
    end = offset + length;
  }
  if (v.pack !== undefined && (typeof v.pack !== "string" || !PACK_DIGEST.test(v.pack))) {
    throw bad("pack is not a sha256 digest");
  }
  return {
    offsets,
    lengths,
    digests: digestsOfHex(digestsHex),
    ...(v.pack !== undefined ? { pack: v.pack as string } : {}),
  };
}
