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
import {
  BLOCK_BYTES,
  cString,
  type HeaderBlock,
  isZeroBlock,
  parseHeaderBlock,
  type SparseSegment,
} from "./header.ts";
import { normalizeTarPath } from "./path.ts";
import { parsePaxRecords, paxInteger, type PaxRecord, paxTime } from "./pax.ts";
import { checkSparseMap, paxSparse, readGnuSparseExtensions, readSparse1Map } from "./sparse.ts";
import { applyXattrRecord } from "./xattrs.ts";

export interface TarReaderOptions {
  /**
   * Cap on metadata held in memory for one member (pax headers, GNU long names, sparse maps)
   * and on accumulated global pax records. Default 1 MiB.
   */
  maxMetaBytes?: number;
  /**
   * "same-archive" (default): a hard link must name an earlier non-directory member of this
   * archive, else FormatError. "any": no check (e.g. to let a caller resolve links into lower
   * layers itself; the target is still normalized).
   */
  hardlinkTargets?: "same-archive" | "any";
}

export const DEFAULT_MAX_META_BYTES = 1 << 20;
/** Data handed out per body chunk at most; bounds a single enqueue, not the whole file. */
const BODY_CHUNK_BYTES = 256 * 1024;

const KINDS: Record<string, TarEntryKind> = {
  "0": "file",
  "\0": "file",
  "7": "file", // contiguous file: a plain file everywhere but on a few old systems
  "S": "file",
  "1": "hardlink",
  "2": "symlink",
  "3": "char",
  "4": "block",
  "5": "dir",
  "D": "dir", // GNU dumpdir: a directory whose data lists its contents (skipped)
  "6": "fifo",
};

// Pax keys that describe one member only; a global ('g') header setting them is ignored, as a
// global path or size would make every following member the same file.
const MEMBER_ONLY_KEYS = new Set(["path", "linkpath", "size"]);

const utf8 = new TextDecoder("utf-8", { fatal: true });

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
  /** Kind of each member seen so far, for hard-link checks (later members replace earlier). */
  const seen = new Map<string, TarEntryKind>();
  let data: EntryData | undefined;
  try {
    for (;;) {
      if (data) await data.finish();
      data = undefined;
      const metaOffset = src.position;
      let local: PaxRecord[] = [];
      let localBytes = 0;
      let longName: Uint8Array | undefined;
      let longLink: Uint8Array | undefined;
      let header: HeaderBlock;
      let headerOffset: number;
      for (;;) {
        headerOffset = src.position;
        const block = await src.readExact(BLOCK_BYTES, "header");
        if (block === null) {
          if (headerOffset === 0) {
            throw new FormatError("empty input: not a tar archive");
          }
          throw truncated("archive (no end-of-archive marker)", headerOffset);
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
          // Read to the end so a compressed source checks its trailer (gzip CRC, zstd frame
          // end) and a truncated or corrupt tail is reported; the bytes themselves are ignored.
          while (await src.readUpTo(1 << 20) !== null) { /* padding after the end marker */ }
          return;
        }
        header = parseHeaderBlock(block, headerOffset);
        const t = header.typeflag;
        if (t === "x" || t === "g" || t === "L" || t === "K") {
          localBytes += header.size;
          if (localBytes > maxMetaBytes) throw metaTooLarge(headerOffset, maxMetaBytes);
          const body = await readPadded(src, header.size, "pax/GNU long-name header");
          if (t === "x") local = local.concat(parsePaxRecords(body, headerOffset));
          else if (t === "L") longName = cString(body);
          else if (t === "K") longLink = cString(body);
          else {
            for (const r of parsePaxRecords(body, headerOffset)) {
              if (MEMBER_ONLY_KEYS.has(r.key)) continue;
              const old = global.get(r.key);
              globalBytes += r.value.length - (old?.value.length ?? 0);
              global.set(r.key, { key: r.key, value: r.value.slice() });
            }
            if (globalBytes > maxMetaBytes) throw metaTooLarge(headerOffset, maxMetaBytes);
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
        records: [...global.values(), ...local],
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
      seen.set(entry.path, entry.kind);
      data = built.data;
      yield entry;
    }
  } finally {
    data?.abandon();
    await src.cancel();
  }
}

interface BuildInput {
  src: ByteReader;
  header: HeaderBlock;
  records: PaxRecord[];
  longName?: Uint8Array;
  longLink?: Uint8Array;
  metaOffset: number;
  headerOffset: number;
  maxMetaBytes: number;
}

async function buildEntry(input: BuildInput): Promise<{ entry: TarEntry; data: EntryData }> {
  const { src, header, records, headerOffset } = input;
  let pathBytes = input.longName ?? header.name;
  let linkBytes = input.longLink ?? header.linkname;
  let storedArea = header.size;
  let uid = header.uid;
  let gid = header.gid;
  let uname: Uint8Array = header.uname;
  let gname: Uint8Array = header.gname;
  let mtimeSec = header.mtimeSec;
  let mtimeNsec = 0;
  let devMajor = header.devMajor;
  let devMinor = header.devMinor;
  const xattrs = new Map<string, Uint8Array>();
  for (const r of records) {
    switch (r.key) {
      case "path":
        pathBytes = r.value;
        break;
      case "linkpath":
        linkBytes = r.value;
        break;
      case "size":
        storedArea = paxInteger(r, headerOffset);
        break;
      case "uid":
        uid = paxInteger(r, headerOffset);
        break;
      case "gid":
        gid = paxInteger(r, headerOffset);
        break;
      case "uname":
        uname = r.value;
        break;
      case "gname":
        gname = r.value;
        break;
      case "mtime": {
        const t = paxTime(r, headerOffset);
        mtimeSec = t.sec;
        mtimeNsec = t.nsec;
        break;
      }
      case "SCHILY.devmajor":
        devMajor = paxInteger(r, headerOffset);
        break;
      case "SCHILY.devminor":
        devMinor = paxInteger(r, headerOffset);
        break;
      default:
        applyXattrRecord(xattrs, r, headerOffset);
    }
  }

  let kind = KINDS[header.typeflag];
  // Before ustar, a directory was a regular-file member whose name ends in "/".
  if (header.typeflag === "\0" && pathBytes[pathBytes.length - 1] === 0x2f) kind = "dir";

  let size = kind === "file" ? storedArea : 0;
  let storedSize = kind === "file" ? storedArea : 0;
  let sparse: SparseSegment[] | undefined;
  const maxSegments = Math.floor(input.maxMetaBytes / 24);
  if (header.gnuSparse) {
    sparse = [...header.gnuSparse.segments];
    if (header.gnuSparse.isExtended) await readGnuSparseExtensions(src, sparse, maxSegments);
    size = header.gnuSparse.realSize;
  }
  const pax = kind === "file" ? paxSparse(records, headerOffset) : undefined;
  if (pax) {
    if (pax.name) pathBytes = pax.name;
    size = pax.realSize;
    if (pax.version === "1.0") {
      const map = await readSparse1Map(src, input.maxMetaBytes, headerOffset);
      if (map.mapBytes > storedArea) {
        throw new FormatError(`tar member at byte ${headerOffset}: sparse map larger than member`);
      }
      sparse = map.segments;
      storedArea -= map.mapBytes;
      storedSize = storedArea;
    } else {
      sparse = pax.segments;
    }
    if (sparse!.length > maxSegments) {
      throw new FormatError(`tar member at byte ${headerOffset}: GNU sparse map too large`);
    }
  }
  if (sparse) checkSparseMap(sparse, size, storedSize, headerOffset);

  const rawPath = decodeName(pathBytes, "path", headerOffset);
  const path = normalizeTarPath(rawPath);
  if (path === "" && kind !== "dir") {
    throw new FormatError(`tar member "${rawPath}" (${kind}) would replace the root directory`);
  }
  let linkname = "";
  if (kind === "symlink") {
    linkname = decodeName(linkBytes, "symlink target", headerOffset);
    if (linkname === "") throw new FormatError(`tar symlink "${rawPath}" has an empty target`);
  } else if (kind === "hardlink") {
    linkname = normalizeTarPath(decodeName(linkBytes, "hard link target", headerOffset));
    if (linkname === "" || linkname === path) {
      throw new FormatError(`tar hard link "${rawPath}" has no usable target`);
    }
  }
  const dataOffset = src.position;
  const data = new EntryData(src, storedArea, kind === "file" ? storedSize : 0);
  const entry: TarEntry = {
    path,
    rawPath,
    kind,
    mode: header.mode & 0o7777,
    uid,
    gid,
    uname: decodeName(uname, "uname", headerOffset, true),
    gname: decodeName(gname, "gname", headerOffset, true),
    mtimeSec,
    mtimeNsec,
    size,
    linkname,
    devMajor: kind === "char" || kind === "block" ? devMajor : 0,
    devMinor: kind === "char" || kind === "block" ? devMinor : 0,
    xattrs,
    metaOffset: input.metaOffset,
    headerOffset,
    dataOffset,
    storedSize: kind === "file" ? storedSize : 0,
    sparse,
    body: data.stream,
  };
  return { entry, data };
}

/**
 * The data area of one member: `visible` bytes handed to the consumer through `stream`, then
 * the rest of `areaBytes` and the padding to a block skipped when the reader moves on.
 */
class EntryData {
  readonly stream: ReadableStream<Uint8Array>;
  #src: ByteReader;
  #visibleLeft: number;
  #areaLeft: number;
  #pull?: Promise<void>;
  #done = false;

  constructor(src: ByteReader, areaBytes: number, visibleBytes: number) {
    this.#src = src;
    this.#areaLeft = areaBytes + padding(areaBytes);
    this.#visibleLeft = visibleBytes;
    this.stream = new ReadableStream<Uint8Array>({
      pull: (controller) => {
        this.#pull = this.#pullInto(controller);
        return this.#pull;
      },
    }, { highWaterMark: 0 });
  }

  async #pullInto(controller: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    if (this.#done) {
      controller.error(new Error("tar entry data read after the reader moved to the next entry"));
      return;
    }
    if (this.#visibleLeft === 0) {
      controller.close();
      return;
    }
    const view = await this.#src.readUpTo(Math.min(this.#visibleLeft, BODY_CHUNK_BYTES));
    if (view === null) {
      controller.error(truncated("file data", this.#src.position));
      return;
    }
    this.#visibleLeft -= view.length;
    this.#areaLeft -= view.length;
    controller.enqueue(view);
    if (this.#visibleLeft === 0) controller.close();
  }

  /** Skips what the consumer did not read; the stream is unusable afterwards. */
  async finish(): Promise<void> {
    await this.#pull?.catch(() => {});
    this.#done = true;
    await this.#src.skip(this.#areaLeft, "file data");
    this.#areaLeft = 0;
  }

  abandon(): void {
    this.#done = true;
  }
}

const padding = (n: number) => (BLOCK_BYTES - (n % BLOCK_BYTES)) % BLOCK_BYTES;

async function readPadded(src: ByteReader, n: number, what: string): Promise<Uint8Array> {
  const body = n === 0 ? new Uint8Array() : await src.readExact(n, what);
  if (body === null) throw truncated(what, src.position);
  const copy = body.slice(); // the view may alias the source chunk; headers are kept around
  await src.skip(padding(n), what);
  return copy;
}

async function skipPadded(src: ByteReader, n: number, what: string): Promise<void> {
  await src.skip(n + padding(n), what);
}

function decodeName(bytes: Uint8Array, what: string, offset: number, lenient = false): string {
  if (!lenient && bytes.includes(0)) {
    throw new FormatError(`tar member at byte ${offset}: NUL byte in ${what}`);
  }
  try {
    return utf8.decode(bytes);
  } catch {
    // User and group names are informational; a path must be exact or not at all.
    if (lenient) return new TextDecoder().decode(bytes);
    throw new FormatError(
      `tar member at byte ${offset}: ${what} is not valid UTF-8`,
      "non-UTF-8 file names are not supported",
    );
  }
}

function metaTooLarge(offset: number, max: number): FormatError {
  return new FormatError(
    `tar header at byte ${offset}: pax/GNU metadata exceeds ${max} bytes`,
    "raise maxMetaBytes if this archive is trusted",
  );
}

const printable = (t: string) =>
  /^[\x20-\x7e]$/.test(t) ? t : `\\x${t.charCodeAt(0).toString(16).padStart(2, "0")}`;
