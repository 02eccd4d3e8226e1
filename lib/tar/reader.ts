/**
 * Streaming tar reader: ustar, POSIX pax (x/g), GNU (L/K long names, base-256 numbers, sparse
 * in all GNU encodings) and v7. Memory stays bounded for any input: file data is streamed to the
 * consumer, and metadata (pax and GNU long-name headers, sparse maps) is capped by
 * `maxMetaBytes`.
 *
 * @example
 * for await (const entry of readTar(stream)) {
 *   if (entry.kind === "file") await entry.body.pipeTo(sinkFor(entry.path));
 * }
 */
import { FormatError } from "../errors.ts";
import { ByteReader, truncated } from "./byte_reader.ts";
import type { TarEntry, TarEntryKind } from "./entry.ts";
import { type EntryData, readPadded, skipPadded } from "./entry_data.ts";
import { BLOCK_BYTES, cString, type HeaderBlock, isZeroBlock, parseHeaderBlock } from "./header.ts";
import { buildEntry, KINDS } from "./member.ts";
import { parsePaxRecords, type PaxRecord } from "./pax.ts";
import { isXattrKey } from "./xattrs.ts";

export interface TarReaderOptions {
  /**
   * Cap on metadata held in memory for one member (pax headers, GNU long names, sparse maps;
   * each such header counts a block besides its body) and on the global pax records kept for
   * every member (keys and values). Default 1 MiB.
   */
  maxMetaBytes?: number;
  /**
   * "same-archive" (default): a hard link must name an earlier non-directory member of this
   * archive, else FormatError. "any": no check (e.g. to let a caller resolve links into lower
   * layers itself; the target is still normalized).
   */
  hardlinkTargets?: "same-archive" | "any";
  /**
   * Called once the archive has ended well, with how many zero blocks of the end-of-archive
   * marker the input had (2, 1 for a lone zero block at its end, 0 for an input that simply
   * ends after a member): an image indexing the tar in place must not reach past its end.
   */
  onEnd?: (markerBlocks: 0 | 1 | 2) => void;
  /**
   * An input of no bytes at all: "refuse" (default: FormatError, a file given as a tar is
   * probably the wrong one), or "archive" — an empty archive, as Go's archive/tar reads it (what
   * container runtimes unpack an image's layers with: a 0-byte tar layer adds nothing).
   */
  emptyInput?: "refuse" | "archive";
}

export const DEFAULT_MAX_META_BYTES = 1 << 20;

/** A member's pax records when it has none; never written (a member's own list replaces it). */
const NO_RECORDS: PaxRecord[] = [];

// The pax keys a global ('g') header sets for every following member: its owner, time, device
// numbers and xattrs. Others describe one member only (a global path, size or sparse map would
// make every member the same file) or nothing buildEntry reads (comment, charset): not kept, so
// a member's work does not grow with them.
const GLOBAL_KEYS = new Set([
  "uid",
  "gid",
  "uname",
  "gname",
  "mtime",
  "SCHILY.devmajor",
  "SCHILY.devminor",
]);
/** Global records kept at once: real archives set a few (GNU tar, git archive: one comment). */
const MAX_GLOBAL_RECORDS = 256;
/**
 * Bytes a metadata header (pax, GNU long name) counts against maxMetaBytes besides its body:
 * a chain of empty headers costs a block each to read, and must not be free.
 */
const META_HEADER_COST = BLOCK_BYTES;

/** Reads members from an uncompressed tar stream; see TarEntry for each field. */
export async function* readTar(
  stream: ReadableStream<Uint8Array>,
  options: TarReaderOptions = {},
): AsyncGenerator<TarEntry, void, undefined> {
  const maxMetaBytes = options.maxMetaBytes ?? DEFAULT_MAX_META_BYTES;
  const checkLinks = (options.hardlinkTargets ?? "same-archive") === "same-archive";
  const src = new ByteReader(stream);
  const global = new Map<string, PaxRecord>();
  let globalBytes = 0;
  /** `global`'s records, made again when a global header changes them. */
  let globalRecords: PaxRecord[] = [];
  /** Kind of each member seen so far, for hard-link checks (later members replace earlier). */
  const seen = new Map<string, TarEntryKind>();
  let data: EntryData | undefined;
  try {
    for (;;) {
      if (data && !data.finishBuffered()) await data.finish();
      data = undefined;
      const metaOffset = src.position;
      let local: PaxRecord[] = NO_RECORDS;
      let localBytes = 0;
      let longName: Uint8Array | undefined;
      let longLink: Uint8Array | undefined;
      let header: HeaderBlock;
      let headerOffset: number;
      for (;;) {
        headerOffset = src.position;
        const block = src.readBuffered(BLOCK_BYTES) ?? await src.readExact(BLOCK_BYTES, "header");
        if (block === null) {
          if (headerOffset === 0) {
            if (options.emptyInput === "archive") {
              options.onEnd?.(0);
              return;
            }
            throw new FormatError("empty input: not a tar archive");
          }
          if (headerOffset !== metaOffset) {
            throw truncated("the member after a pax/GNU header", headerOffset);
          }
          // Ending after a whole member without the marker is accepted, as Go's archive/tar
          // (what container runtimes unpack layers with) and GNU tar do.
          options.onEnd?.(0);
          return;
        }
        if (isZeroBlock(block)) {
          if (headerOffset !== metaOffset) {
            throw new FormatError(
              `tar archive: pax/GNU header at byte ${metaOffset} has no member`,
            );
          }
          // Two zero blocks end the archive. A lone zero block at EOF is accepted (GNU tar
          // warns and accepts it); a zero block followed by a header is not.
          const second = await src.readExact(BLOCK_BYTES, "end-of-archive marker");
          if (second !== null && !isZeroBlock(second)) {
            throw new FormatError(`tar archive: zero block at byte ${headerOffset} inside archive`);
          }
          const markerBlocks = second === null ? 1 : 2;
          // Read to the end so a compressed source checks its trailer (gzip CRC, zstd frame
          // end) and a truncated or corrupt tail is reported; the bytes themselves are ignored,
          // unless nothing came before the marker: a file that merely starts with zeros (an
          // EROFS image: its superblock is at byte 1024) is no empty archive.
          let first = true;
          for (let chunk; (chunk = await src.readUpTo(1 << 20)) !== null; first = false) {
            if (headerOffset === 0 && chunk.some((byte) => byte !== 0)) {
              throw new FormatError(
                first && hasErofsMagicFirst(chunk)
                  ? "not a tar archive: this is an EROFS image (magic at byte 1024)"
                  : "not a tar archive: zero blocks, then data",
                "an EROFS image is mounted, pushed or inspected as it is",
              );
            }
          }
          options.onEnd?.(markerBlocks);
          return;
        }
        header = parseHeaderBlock(block, headerOffset);
        const t = header.typeflag;
        if (t === "x" || t === "g" || t === "L" || t === "K") {
          localBytes += META_HEADER_COST + header.size;
          if (localBytes > maxMetaBytes) throw metaTooLarge(headerOffset, maxMetaBytes);
          const body = await readPadded(src, header.size, "pax/GNU long-name header");
          if (t === "x") {
            const records = parsePaxRecords(body, headerOffset);
            if (records.length > 0 && local === NO_RECORDS) local = [];
            for (const record of records) local.push(record);
          } else if (t === "L") longName = cString(body);
          else if (t === "K") longLink = cString(body);
          else {
            for (const r of parsePaxRecords(body, headerOffset)) {
              if (!GLOBAL_KEYS.has(r.key) && !isXattrKey(r.key)) continue;
              const old = global.get(r.key);
              globalBytes += r.key.length + r.value.length -
                (old ? old.key.length + old.value.length : 0);
              global.set(r.key, { key: r.key, value: r.value.slice() });
            }
            if (globalBytes > maxMetaBytes) throw metaTooLarge(headerOffset, maxMetaBytes);
            if (global.size > MAX_GLOBAL_RECORDS) {
              throw new FormatError(
                `tar global pax header at byte ${headerOffset}: more than ${MAX_GLOBAL_RECORDS} ` +
                  "records for every member",
                "real archives set a few (owner, time); this one is refused as hostile or broken",
              );
            }
            globalRecords = [...global.values()];
          }
          continue;
        }
        if (t === "V") { // GNU volume label: not a member
          await skipPadded(src, header.size, "volume label");
          continue;
        }
        if (!(t in KINDS)) {
          throw new FormatError(
            `tar member at byte ${headerOffset}: unsupported type '${printable(t)}'`,
            t === "M" ? "multi-volume archives are not supported" : undefined,
          );
        }
        break;
      }
      const built = await buildEntry({
        src,
        header,
        records: globalRecords.length === 0 ? local : globalRecords.concat(local),
        longName,
        longLink,
        metaOffset,
        headerOffset,
        maxMetaBytes,
      });
      const entry = built.entry;
      if (entry.kind === "hardlink" && checkLinks) {
        const target = seen.get(entry.linkname);
        if (target === undefined || target === "dir") {
          throw new FormatError(
            `tar member "${entry.path}": hard link to ${
              target === "dir" ? "a directory" : "a path not earlier in the archive"
            } ("${entry.linkname}")`,
            "a layer's hard links must point at files earlier in the same layer",
          );
        }
      }
      // Only when checking: a path string per member is most of a big layer's memory.
      if (checkLinks) seen.set(entry.path, entry.kind);
      data = built.data;
      yield entry;
    }
  } finally {
    data?.abandon();
    await src.cancel();
  }
}

function metaTooLarge(offset: number, max: number): FormatError {
  return new FormatError(
    `tar header at byte ${offset}: pax/GNU metadata exceeds ${max} bytes`,
    "real archives need a few KiB per member (long names, xattrs); this one is refused as " +
      "hostile or broken",
  );
}

const printable = (t: string) =>
  /^[\x20-\x7e]$/.test(t) ? t : `\\x${t.charCodeAt(0).toString(16).padStart(2, "0")}`;

/** The EROFS superblock magic (0xe0f5e1e2, little-endian) at the start of `bytes`. */
function hasErofsMagicFirst(bytes: Uint8Array): boolean {
  return bytes[0] === 0xe2 && bytes[1] === 0xe1 && bytes[2] === 0xf5 && bytes[3] === 0xe0;
}
