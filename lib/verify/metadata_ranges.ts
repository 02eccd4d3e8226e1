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
 * that follows reads (verified, through the chunk table) whatever the list did not provide.
 */
import { createHash } from "../node_builtins.ts";
import { FormatError } from "../errors.ts";
import { walkErofsMetadata } from "../erofs/metadata_walk.ts";
import type { ReadRange } from "../erofs/metadata_pages.ts";
import type { ChunkTable } from "./chunk_table.ts";
import { VerifiedSource } from "./verified_source.ts";
import { digestsOfHex, hexOfDigests, matchesDigestAtAsync, SHA256_BYTES } from "./sha256_list.ts";
import { digestOfAsync } from "../oci/digest.ts";

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
 * Listed ranges closer than this are fetched as one range of the request (the gap is read and
 * dropped); the list itself holds just the metadata pages (adjacent ones merged), so only they
 * are pinned. Measured on the benchmark image, one multi-range GET from docker-registry: 0 B
 * gaps 437 ranges 2.3 MB 165 ms, 16 KiB 295 ranges 3.6 MB 112 ms, 64 KiB 171 ranges 8.1 MB
 * 85 ms (loaded host). docker-registry's CPU grows with the number of parts more than with
 * the bytes (its blob reader seems to refill a large buffer after each seek): at 128 KiB
 * (123 ranges, 12.7 MB, one GET) its CPU per fetch went 70-100 -> 50-60 ms and the GET
 * 93-192 -> 69-129 ms (5 interleaved rounds, load 2.5); 256-512 KiB saved little more
 * registry CPU for 20-36 MB fetched.
 */
export const METADATA_FETCH_GAP_BYTES = 128 << 10;
const DIGEST_BYTES = SHA256_BYTES;

/** Ranges sorted by offset, not overlapping, each with its sha256 (`digests`, 32 bytes each). */
export interface MetadataRanges {
  readonly offsets: readonly number[];
  readonly lengths: readonly number[];
  readonly digests: Uint8Array;
  /** `sha256:<hex>` of the pack: every range's bytes back to back, in order (a blob). */
  readonly pack?: string;
}

/** A list just made from a layer, with its pack's bytes (to upload beside the table). */
export interface MadeMetadataRanges {
  ranges: MetadataRanges;
  pack: Uint8Array<ArrayBuffer>;
}

/** A range's bytes, checked against its digest. */
export interface MetadataPiece {
  offset: number;
  bytes: Uint8Array;
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

/**
 * The list of an EROFS image readable through `read`: the pages the mount's directory walk
 * pins (same walk), adjacent ones (or across gaps of up to `gapBytes`) merged, each range hashed.
 * With the list's pack (the ranges' bytes back to back; its digest in the list).
 * Undefined when the image is not EROFS or has no metadata the walk could reach.
 */
export async function metadataRangesOf(
  read: ReadRange,
  sizeBytes: number,
  gapBytes = 0,
): Promise<MadeMetadataRanges | undefined> {
  let pages: Map<number, Uint8Array>;
  let pageBytes: number;
  try {
    const walk = await walkErofsMetadata(read, sizeBytes, {
      fileInodes: false,
      maxBytes: MAX_METADATA_BYTES,
    });
    pages = walk.pages;
    pageBytes = walk.pageBytes;
  } catch (error) {
    if (error instanceof FormatError) return undefined; // not EROFS: no list
    throw error;
  }
  const offsets: number[] = [];
  const lengths: number[] = [];
  let total = 0;
  for (const page of [...pages.keys()].sort((a, b) => a - b)) {
    const offset = page * pageBytes;
    const length = Math.min(pageBytes, sizeBytes - offset);
    const last = offsets.length - 1;
    const lastEnd = last >= 0 ? offsets[last] + lengths[last] : -Infinity;
    const grown = offset + length - (last >= 0 ? offsets[last] : 0);
    if (last >= 0 && offset - lastEnd <= gapBytes && grown <= MAX_METADATA_RANGE_BYTES) {
      total += offset + length - lastEnd;
      lengths[last] = grown;
    } else {
      if (offsets.length === MAX_METADATA_RANGES) break;
      total += length;
      offsets.push(offset);
      lengths.push(length);
    }
    if (total > MAX_METADATA_BYTES) {
      // Bounded like a parsed list: drop the range that went over.
      offsets.pop();
      lengths.pop();
      break;
    }
  }
  if (!offsets.length) return undefined;
  const digests = new Uint8Array(offsets.length * DIGEST_BYTES);
  const pack = new Uint8Array(metadataBytes({ lengths }));
  let packed = 0;
  for (let i = 0; i < offsets.length; i++) {
    // From the walk's pages when the range is all pages (no gaps): no second read of it.
    const end = offsets[i] + lengths[i];
    let whole = true;
    for (let at = offsets[i]; at < end && whole; at += pageBytes) {
      const page = pages.get(at / pageBytes);
      if (!page || page.length !== Math.min(pageBytes, end - at)) whole = false;
    }
    if (whole) {
      for (let at = offsets[i]; at < end; at += pageBytes) {
        pack.set(pages.get(at / pageBytes)!, packed + at - offsets[i]);
      }
    } else pack.set(await read(offsets[i], lengths[i]), packed);
    const bytes = pack.subarray(packed, packed + lengths[i]);
    digests.set(createHash("sha256").update(bytes).digest(), i * DIGEST_BYTES);
    packed += lengths[i];
  }
  const packDigest = `sha256:${createHash("sha256").update(pack).digest("hex")}`;
  return { ranges: { offsets, lengths, digests, pack: packDigest }, pack };
}

/**
 * The list of the layer `table` describes, read through `read` checked against the table: the
 * ranges' digests are then of the bytes the table (bound to the layer digest) vouches for, even
 * when `read` is a registry that serves other bytes the second time (a chunk that does not
 * match ends the walk's branch: a shorter list).
 */
export async function verifiedMetadataRangesOf(
  table: ChunkTable,
  read: ReadRange,
): Promise<MadeMetadataRanges | undefined> {
  const verified = new VerifiedSource({ size: table.sizeBytes, read }, table, {
    origin: "the layer read for its table",
    onMismatch: () => {},
  });
  return await metadataRangesOf((offset, length) => verified.read(offset, length), table.sizeBytes);
}

/**
 * The list of an EROFS image file (push, convert), checked against `table` when given;
 * undefined for anything else.
 */
export async function metadataRangesOfFile(
  path: string,
  table?: ChunkTable,
): Promise<MadeMetadataRanges | undefined> {
  using file = await Deno.open(path);
  const { size } = await file.stat();
  const read = async (offset: number, length: number) => {
    const out = new Uint8Array(length);
    let got = 0;
    while (got < length) {
      await file.seek(offset + got, Deno.SeekMode.Start);
      const n = await file.read(out.subarray(got));
      if (n === null) throw new Error(`${path}: short read at ${offset + got}`);
      got += n;
    }
    return out;
  };
  // One read at a time: the walk's parallel reads would race on the file position.
  let queue: Promise<unknown> = Promise.resolve();
  const serial = (offset: number, length: number) => {
    const next = queue.then(() => read(offset, length));
    queue = next.catch(() => {});
    return next;
  };
  if (table && table.sizeBytes !== size) return undefined; // the file changed meanwhile
  return table
    ? await verifiedMetadataRangesOf(table, serial)
    : await metadataRangesOf(serial, size);
}

/** Where the listed ranges can be read: the layer's blob, below any cache (unverified bytes). */
export interface MetadataRangeReader {
  read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array>;
  /**
   * The whole blob `digest` of `sizeBytes` beside the layer (a list's pack, same repository):
   * unchecked bytes, like read()'s.
   */
  readPack?(digest: string, sizeBytes: number, signal?: AbortSignal): Promise<Uint8Array>;
  /** Several ranges per request (RegistryBlob.readRanges); undefined entries are read alone. */
  readRanges?(
    ranges: readonly { offset: number; length: number }[],
    signal?: AbortSignal,
  ): Promise<(Uint8Array | undefined)[]>;
}

/** A file of the disk cache keeping the list's bytes for the next mount (DiskCachedSource). */
export interface MetadataSidecar {
  read(maxBytes: number): Uint8Array | undefined;
  write(bytes: Uint8Array): void;
}

/**
 * Multi-range GETs the listed ranges are split into, side by side, when there are enough of
 * them (MIN_PARTS_PER_REQUEST each). docker-registry answers one request on one thread, and its
 * cost grows with the parts, not the bytes: after every seek it reads a fresh 4 MiB buffer, so
 * the benchmark image's 123 parts make it read ~500 MB of page cache (60-90 ms of its CPU), or
 * ~110 MB of disk when the cache is cold (the benchmark drops it before the mount). Two
 * requests read that in two threads. Cold page cache, curl, same 123 parts, load 5-6:
 * one request 255-484 ms, two 213-298 ms, four 290-422 ms (5 interleaved rounds).
 */
export const METADATA_FETCH_REQUESTS = 2;
/** Parts a request of a split holds at least (a request costs the registry ~3 ms of CPU). */
export const MIN_PARTS_PER_REQUEST = 32;

/**
 * `requests` in at most `count` consecutive groups (order kept) of about equal cost to the
 * registry (a part counts like 64 KiB of bytes), each of at least `minPerGroup` requests.
 */
export function splitRequests<T extends { length: number }>(
  requests: readonly T[],
  count: number,
  minPerGroup = 1,
): T[][] {
  const groups: T[][] = [];
  const n = Math.max(1, Math.min(count, Math.floor(requests.length / Math.max(1, minPerGroup))));
  const PART_COST_BYTES = 64 << 10;
  const cost = (r: T) => PART_COST_BYTES + r.length;
  const total = requests.reduce((sum, r) => sum + cost(r), 0);
  let group: T[] = [];
  let spent = 0;
  requests.forEach((r, i) => {
    group.push(r);
    spent += cost(r);
    const left = requests.length - i - 1;
    const full = spent >= (total * (groups.length + 1)) / n && group.length >= minPerGroup;
    if (groups.length < n - 1 && full && left >= minPerGroup) {
      groups.push(group);
      group = [];
    }
  });
  if (group.length) groups.push(group);
  return groups;
}

/** Single-range reads in flight when the registry does not answer multi-range requests. */
const SINGLE_READS_IN_FLIGHT = 8;

/** The sidecar's key. Web Crypto: the CLI's metadata fetch then loads no node:crypto. */
async function listKey(ranges: MetadataRanges): Promise<Uint8Array> {
  const list = new TextEncoder().encode(JSON.stringify(encodeMetadataRanges(ranges)));
  return new Uint8Array(await crypto.subtle.digest("SHA-256", list));
}

/**
 * The listed ranges' bytes, each checked against its digest (a range that does not match is
 * left out: the walk then reads those pages through the chunk table; with a pack, all of them
 * at once against the pack's digest). From the sidecar when it holds them (a remount: no GET),
 * else from `blob` — the list's pack in one GET when the list names one, else multi-range GETs
 * side by side (splitRequests) where the registry answers those, the rest one range per GET —
 * and then kept in the sidecar. Never rejects (an optimisation), except when aborted.
 *
 * `checkedLater`: the fetched bytes are taken as they came, unchecked (right length only), for
 * a caller that hands the whole sidecar to one that checks every range when it reads it back
 * (`mount` → its server, handed_metadata.ts: one check of 2.3 MB on the critical path, not
 * two). The pieces returned are then unchecked too: not to be pinned or served.
 * `handed`: such bytes, in the sidecar's format, taken instead of the sidecar (checked like
 * it), and kept as the sidecar when they were all good.
 */
export async function loadMetadataRanges(
  ranges: MetadataRanges,
  blob: MetadataRangeReader,
  options: {
    sidecar?: MetadataSidecar;
    signal?: AbortSignal;
    checkedLater?: boolean;
    handed?: Uint8Array;
  } = {},
): Promise<
  { pieces: MetadataPiece[]; fromSidecar: number; fromHanded: number; fetched: number; bad: number }
> {
  const count = ranges.offsets.length;
  const got: (Uint8Array | undefined)[] = new Array(count).fill(undefined);
  let bad = 0;
  const accept = async (i: number, bytes: Uint8Array | undefined) => {
    if (!bytes) return false;
    if (
      options.checkedLater
        ? bytes.length === ranges.lengths[i]
        : await matchesRange(ranges, i, bytes)
    ) {
      got[i] = bytes;
      return true;
    }
    bad++;
    return false;
  };
  const total = metadataBytes(ranges);
  /**
   * Takes `packed` (every range's bytes back to back) for the ranges still missing: all of
   * them on one digest of the whole when the list names its pack and that matches (or
   * unchecked, `checkedLater`), else range by range (a bad range only costs its fetch).
   */
  const takePacked = async (packed: Uint8Array, fromNetwork: boolean): Promise<number> => {
    const unchecked = fromNetwork && options.checkedLater;
    const whole = unchecked ||
      (ranges.pack !== undefined && await digestOfAsync(packed) === ranges.pack);
    let taken = 0;
    let at = 0;
    const checks: Promise<void>[] = [];
    for (let i = 0; i < count; i++) {
      const bytes = packed.subarray(at, at + ranges.lengths[i]);
      at += ranges.lengths[i];
      if (got[i]) continue;
      if (whole) {
        got[i] = bytes;
        taken++;
        continue;
      }
      checks.push(
        matchesRange(ranges, i, bytes).then((matches) => {
          if (matches) {
            got[i] = bytes;
            taken++;
          } else if (fromNetwork) bad++;
        }),
      );
    }
    await Promise.all(checks);
    return taken;
  };
  // The sidecar's key names the list it was written for; with a pack the one digest of the
  // bytes says it all (a stale sidecar fails it, then each range is checked).
  let key: Promise<Uint8Array> | undefined;
  const keyOfList = () => key ??= listKey(ranges);
  const kept = options.handed ?? options.sidecar?.read(DIGEST_BYTES + total);
  let fromKept = 0;
  if (
    kept?.length === DIGEST_BYTES + total &&
    (ranges.pack !== undefined || (await keyOfList()).every((b, i) => kept[i] === b))
  ) {
    // Re-checked like the network's bytes: a bad one only costs the fetch.
    fromKept = await takePacked(kept.subarray(DIGEST_BYTES), false);
  }
  let missing = got.flatMap((bytes, i) => bytes ? [] : [i]);
  let fetched = 0;
  if (missing.length && ranges.pack && blob.readPack) {
    const packed = await blob.readPack(ranges.pack, total, options.signal).catch(() => undefined);
    if (packed?.length === total) fetched += await takePacked(packed, true);
    missing = got.flatMap((bytes, i) => bytes ? [] : [i]);
  }
  if (missing.length && blob.readRanges) {
    // Requested ranges: listed ones closer than the gap merged (each listed range in one).
    const requests: { offset: number; length: number; members: number[] }[] = [];
    for (const i of missing) {
      const offset = ranges.offsets[i], end = offset + ranges.lengths[i];
      const last = requests.at(-1);
      if (
        last && offset - (last.offset + last.length) <= METADATA_FETCH_GAP_BYTES &&
        end - last.offset <= MAX_METADATA_RANGE_BYTES
      ) {
        last.length = end - last.offset;
        last.members.push(i);
      } else requests.push({ offset, length: end - offset, members: [i] });
    }
    const answers = (await Promise.all(
      splitRequests(requests, METADATA_FETCH_REQUESTS, MIN_PARTS_PER_REQUEST).map((group) =>
        blob.readRanges!(group.map(({ offset, length }) => ({ offset, length })), options.signal)
          .catch(() => new Array<undefined>(group.length).fill(undefined))
      ),
    )).flat();
    await Promise.all(requests.flatMap((request, k) => {
      const bytes = answers[k];
      if (!bytes || bytes.length !== request.length) return [];
      return request.members.map(async (i) => {
        const from = ranges.offsets[i] - request.offset;
        // A copy: the request's gaps are not kept alive by the pinned pages.
        if (await accept(i, bytes.slice(from, from + ranges.lengths[i]))) fetched++;
      });
    }));
    missing = got.flatMap((bytes, i) => bytes ? [] : [i]);
  }
  let next = 0;
  const worker = async () => {
    while (next < missing.length && !options.signal?.aborted) {
      const i = missing[next++];
      const bytes = await blob.read(ranges.offsets[i], ranges.lengths[i], options.signal).catch(
        () => undefined,
      );
      if (await accept(i, bytes)) fetched++;
    }
  };
  await Promise.all(
    Array.from({ length: Math.min(SINGLE_READS_IN_FLIGHT, missing.length) }, worker),
  );
  options.signal?.throwIfAborted();
  const newBytes = fetched > 0 || (options.handed !== undefined && fromKept > 0);
  if (newBytes && options.sidecar && got.every(Boolean)) {
    let out: Uint8Array;
    if (kept && fromKept === count) {
      out = kept; // all of it as it came (the pieces are views of it)
      out.set(await keyOfList(), 0);
    } else {
      out = new Uint8Array(DIGEST_BYTES + total);
      out.set(await keyOfList(), 0);
      let at = DIGEST_BYTES;
      for (const bytes of got) {
        out.set(bytes!, at);
        at += bytes!.length;
      }
    }
    try {
      options.sidecar.write(out);
    } catch { /* best effort: the next mount fetches them again */ }
  }
  const pieces = got.flatMap((bytes, i) => bytes ? [{ offset: ranges.offsets[i], bytes }] : []);
  const fromSidecar = options.handed ? 0 : fromKept;
  return { pieces, fromSidecar, fromHanded: fromKept - fromSidecar, fetched, bad };
}
