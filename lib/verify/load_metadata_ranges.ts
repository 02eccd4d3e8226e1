/**
 * Loading a layer's metadata range list (metadata_ranges.ts) at mount: the listed ranges' bytes
 * from the disk cache's sidecar, the handed bytes, the list's pack, multi-range GETs split side by
 * side, or single GETs, each range checked against its digest (or the pack against its own), and
 * kept in the sidecar for the next mount. Apart from the format because this is the mount's
 * fetch policy (gaps, request splits, reads in flight), measured against registries.
 */
import { SHA256_BYTES } from "./sha256_list.ts";
import { digestOfAsync } from "../oci/digest.ts";
import {
  encodeMetadataRanges,
  matchesRange,
  MAX_METADATA_RANGE_BYTES,
  metadataBytes,
  type MetadataRanges,
} from "./metadata_ranges.ts";

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

/** A range's bytes, checked against its digest. */
export interface MetadataPiece {
  offset: number;
  bytes: Uint8Array;
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
  read(maxBytes: number): Uint8Array | undefined | Promise<Uint8Array | undefined>;
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

/**
 * The digest of a sidecar's pack part (what loadMetadataRanges compares with the list's pack),
 * started as soon as its bytes are there: a mount's server starts it when the CLI's hand-over
 * arrives, while it still opens the layer (under TCG the 2.2 MB hash took 0.2-0.46 s after).
 */
export function sidecarPackDigest(sidecar: Uint8Array): Promise<string> {
  return digestOfAsync(sidecar.subarray(DIGEST_BYTES));
}

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
 * it), and kept as the sidecar when they were all good; `handedPackDigest`, its
 * sidecarPackDigest if already started. `onHead`: told the kept ranges starting in the
 * first `bytes` of the image once each is checked alone and all match, before the rest (whose
 * one pack digest takes longer): a new NBD device's partition scan reads only those.
 */
export async function loadMetadataRanges(
  ranges: MetadataRanges,
  blob: MetadataRangeReader,
  options: {
    sidecar?: MetadataSidecar;
    signal?: AbortSignal;
    checkedLater?: boolean;
    handed?: Uint8Array;
    handedPackDigest?: Promise<string>;
    onHead?: { bytes: number; take(pieces: MetadataPiece[]): void };
  } = {},
): Promise<
  {
    pieces: MetadataPiece[];
    fromSidecar: number;
    fromHanded: number;
    /** Bytes of the ranges taken from the sidecar or the handed bytes (not fetched here). */
    keptBytes: number;
    fetched: number;
    bad: number;
  }
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
  const takePacked = async (
    packed: Uint8Array,
    fromNetwork: boolean,
    packDigest?: Promise<string>,
  ): Promise<number> => {
    const unchecked = fromNetwork && options.checkedLater;
    const whole = unchecked ||
      (ranges.pack !== undefined && await (packDigest ?? digestOfAsync(packed)) === ranges.pack);
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
  /** The head's ranges of `packed`, each checked alone, taken and told to `onHead`. */
  const takeHead = async (
    packed: Uint8Array,
    onHead: { bytes: number; take(pieces: MetadataPiece[]): void },
  ) => {
    const pieces: MetadataPiece[] = [];
    let inHead = 0;
    for (let i = 0, at = 0; i < count; at += ranges.lengths[i], i++) {
      if (ranges.offsets[i] >= onHead.bytes) continue;
      inHead++;
      const bytes = packed.subarray(at, at + ranges.lengths[i]);
      if (await matchesRange(ranges, i, bytes)) {
        got[i] = bytes;
        pieces.push({ offset: ranges.offsets[i], bytes });
      }
    }
    // Only a whole head is worth telling: a bad range is fetched again with the rest.
    if (pieces.length && pieces.length === inHead) onHead.take(pieces);
    return pieces.length;
  };
  // The sidecar's key names the list it was written for; with a pack the one digest of the
  // bytes says it all (a stale sidecar fails it, then each range is checked).
  let key: Promise<Uint8Array> | undefined;
  const keyOfList = () => key ??= listKey(ranges);
  const kept = options.handed ?? await options.sidecar?.read(DIGEST_BYTES + total);
  let fromKept = 0;
  if (
    kept?.length === DIGEST_BYTES + total &&
    (ranges.pack !== undefined || (await keyOfList()).every((b, i) => kept[i] === b))
  ) {
    if (options.onHead) fromKept += await takeHead(kept.subarray(DIGEST_BYTES), options.onHead);
    // Re-checked like the network's bytes: a bad one only costs the fetch.
    fromKept += await takePacked(
      kept.subarray(DIGEST_BYTES),
      false,
      options.handed ? options.handedPackDigest : undefined,
    );
  }
  const keptBytes = got.reduce((total, bytes) => total + (bytes?.length ?? 0), 0);
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
  return { pieces, fromSidecar, fromHanded: fromKept - fromSidecar, keptBytes, fetched, bad };
}
