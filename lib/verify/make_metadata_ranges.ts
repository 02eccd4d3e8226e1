/**
 * Making the metadata range list (metadata_ranges.ts) of a layer: the pages the mount's
 * directory walk pins, merged into ranges, each hashed, with the pack (the ranges' bytes back to
 * back) to upload beside the table. Apart from the format because only the table's maker (push,
 * convert, index) walks a whole image; a mount only parses and loads the list.
 */
import { createHash } from "../node_builtins.ts";
import { FormatError } from "../errors.ts";
import { walkErofsMetadata } from "../erofs/metadata_walk.ts";
import type { ReadRange } from "../erofs/metadata_pages.ts";
import type { ChunkTable } from "./chunk_table.ts";
import { VerifiedSource } from "./verified_source.ts";
import { SHA256_BYTES } from "./sha256_list.ts";
import {
  LISTED_HEAD_BYTES,
  MAX_METADATA_BYTES,
  MAX_METADATA_RANGE_BYTES,
  MAX_METADATA_RANGES,
  metadataBytes,
  type MetadataRanges,
} from "./metadata_ranges.ts";

const DIGEST_BYTES = SHA256_BYTES;

/** A list just made from a layer, with its pack's bytes (to upload beside the table). */
export interface MadeMetadataRanges {
  ranges: MetadataRanges;
  pack: Uint8Array<ArrayBuffer>;
}

/**
 * Adds the pages of the image's first LISTED_HEAD_BYTES the walk did not pin. Not when they
 * cannot be read (a chunk the table does not vouch for): the list is then the walk's alone.
 */
async function addHead(
  pages: Map<number, Uint8Array>,
  pageBytes: number,
  read: ReadRange,
  sizeBytes: number,
): Promise<void> {
  const headBytes = Math.min(LISTED_HEAD_BYTES, sizeBytes);
  let head: Uint8Array;
  try {
    head = await read(0, headBytes);
  } catch {
    return;
  }
  if (head.length !== headBytes) return;
  for (let at = 0; at < headBytes; at += pageBytes) {
    if (!pages.has(at / pageBytes)) pages.set(at / pageBytes, head.slice(at, at + pageBytes));
  }
}

/**
 * The list of an EROFS image readable through `read`: the pages the mount's directory walk
 * pins (same walk) and the image head (LISTED_HEAD_BYTES), adjacent ones (or across gaps of up
 * to `gapBytes`) merged, each range hashed.
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
  await addHead(pages, pageBytes, read, sizeBytes);
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
