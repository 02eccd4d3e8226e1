/**
 * Turns one member's headers (ustar block, pax records, GNU long names, sparse maps) into a
 * TarEntry: which value wins where several formats say the same thing, and the checks that keep
 * a hostile member from meaning something else.
 */
import { FormatError } from "../errors.ts";
import type { ByteReader } from "./byte_reader.ts";
import type { TarEntry, TarEntryKind } from "./entry.ts";
import { EntryData } from "./entry_data.ts";
import type { HeaderBlock, SparseSegment } from "./header.ts";
import { normalizeTarPath, utf8Length } from "./path.ts";
import { asciiString, paxInteger, type PaxRecord, paxTime } from "./pax.ts";
import { checkSparseMap, paxSparse, readGnuSparseExtensions, readSparse1Map } from "./sparse.ts";
import { applyXattrRecord, isTextAclKey } from "./xattrs.ts";

export const KINDS: Record<string, TarEntryKind> = {
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

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * linux/limits.h: PATH_MAX 4096 and NAME_MAX 255 bytes, both counting what a syscall accepts
 * (PATH_MAX includes the NUL). A runtime extracting a layer fails on anything longer with
 * ENAMETOOLONG, so no working image has it; refusing it here also keeps paths to at most ~2,000
 * levels for every consumer (a 1 MiB pax path could otherwise nest 500,000 directories).
 */
export const PATH_MAX_BYTES = 4095;
export const NAME_MAX_BYTES = 255;

/** A member's path for a message: whole when short, its two ends when past a line's worth. */
function memberNamed(path: string, offset: number): string {
  const shown = path.length <= 120 ? path : `${path.slice(0, 60)}…${path.slice(-50)}`;
  return `tar member "${shown}" (at byte ${offset})`;
}

function checkPathLimits(path: string, what: string, offset: number, member = path): void {
  const pathBytes = utf8Length(path);
  if (pathBytes > PATH_MAX_BYTES) {
    throw new FormatError(
      `${memberNamed(member, offset)}: ${what} longer than ${PATH_MAX_BYTES} bytes`,
      "Linux cannot create such a path (PATH_MAX)",
    );
  }
  if (pathBytes <= NAME_MAX_BYTES) return; // no name in it can be longer
  for (const name of path.split("/")) {
    if (utf8Length(name) > NAME_MAX_BYTES) {
      throw new FormatError(
        `${memberNamed(member, offset)}: ${what} has a name longer than ${NAME_MAX_BYTES} bytes`,
        "Linux cannot create such a name (NAME_MAX)",
      );
    }
  }
}

/**
 * The xattrs of a member without any (most): one shared empty map, never written (TarEntry's
 * xattrs is a ReadonlyMap).
 */
const NO_XATTRS: ReadonlyMap<string, Uint8Array> = new Map();

/** Typeflags with no data records (Go's isHeaderOnlyType): hard link to FIFO. */
const HEADER_ONLY_TYPES = new Set(["1", "2", "3", "4", "5", "6"]);

export interface BuildInput {
  src: ByteReader;
  header: HeaderBlock;
  records: PaxRecord[];
  longName?: Uint8Array;
  longLink?: Uint8Array;
  metaOffset: number;
  headerOffset: number;
  maxMetaBytes: number;
}

/** Builds the entry; for sparse members this reads extension blocks or the in-data map. */
export async function buildEntry(input: BuildInput): Promise<{ entry: TarEntry; data: EntryData }> {
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
  let xattrs: Map<string, Uint8Array> | undefined;
  let textAcls: PaxRecord[] | undefined;
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
        // A text ACL only where no binary one is given, which GNU tar writes after it.
        if (isTextAclKey(r.key)) (textAcls ??= []).push(r);
        else applyXattrRecord(xattrs ??= new Map(), r, headerOffset);
    }
  }
  for (const r of textAcls ?? []) applyXattrRecord(xattrs ??= new Map(), r, headerOffset);

  // No data follows a link, symlink, device, directory or FIFO header whatever its size field
  // (or pax `size`) says, as POSIX has it and Go's archive/tar (Docker, containerd, umoci,
  // scanners) reads it: skipping a claimed size made this reader see other members in the same
  // layer than they do (a member hidden from a scan, shown by the mount).
  if (HEADER_ONLY_TYPES.has(header.typeflag)) storedArea = 0;
  let kind = KINDS[header.typeflag];
  // Before ustar, a directory was a regular-file member whose name ends in "/".
  if ((header.typeflag === "\0" || header.typeflag === "0") && pathBytes.at(-1) === 0x2f) {
    kind = "dir";
    // Go reads type NUL with that name as a directory, no data after it; type "0" stays a
    // file there, whose data it skips as this reader does.
    if (header.typeflag === "\0") storedArea = 0;
  }

  let size = kind === "file" ? storedArea : 0;
  let storedSize = kind === "file" ? storedArea : 0;
  let sparse: SparseSegment[] | undefined;
  const maxSegments = Math.floor(input.maxMetaBytes / 24);
  // Header fields are views of the source's chunk, which a reader reusing its buffers
  // (openTar's reuseChunks) overwrites once it reads on: copy them before reading more.
  // (Inline, not a closure: one would put this function's variables in a context object.)
  if (header.gnuSparse) {
    sparse = [...header.gnuSparse.segments];
    if (header.gnuSparse.isExtended) {
      pathBytes = pathBytes.slice();
      linkBytes = linkBytes.slice();
      uname = uname.slice();
      gname = gname.slice();
      await readGnuSparseExtensions(src, sparse, maxSegments);
    }
    size = header.gnuSparse.realSize;
  }
  const pax = kind === "file" && records.length > 0 ? paxSparse(records, headerOffset) : undefined;
  if (pax) {
    if (pax.name) pathBytes = pax.name;
    size = pax.realSize;
    if (pax.version === "1.0") {
      pathBytes = pathBytes.slice();
      linkBytes = linkBytes.slice();
      uname = uname.slice();
      gname = gname.slice();
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
  checkPathLimits(path, "path", headerOffset);
  if (path === "" && kind !== "dir") {
    throw new FormatError(`tar member "${rawPath}" (${kind}) would replace the root directory`);
  }
  let linkname = "";
  if (kind === "symlink") {
    linkname = decodeName(linkBytes, "symlink target", headerOffset);
    if (linkname === "") throw new FormatError(`tar symlink "${rawPath}" has an empty target`);
    if (utf8Length(linkname) > PATH_MAX_BYTES) {
      throw new FormatError(
        `${memberNamed(rawPath, headerOffset)}: symlink target longer than PATH_MAX`,
      );
    }
  } else if (kind === "hardlink") {
    linkname = normalizeTarPath(decodeName(linkBytes, "hard link target", headerOffset));
    checkPathLimits(linkname, "hard link target", headerOffset, rawPath);
    if (linkname === "" || linkname === path) {
      throw new FormatError(`tar hard link "${rawPath}" has no usable target`);
    }
  }
  const dataOffset = src.position;
  const data = new EntryData(src, storedArea, kind === "file" ? storedSize : 0);
  const entry = new Member({
    path,
    rawPath,
    kind,
    mode: header.mode & 0o7777,
    uid,
    gid,
    uname: unames.decode(uname, headerOffset),
    gname: gnames.decode(gname, headerOffset),
    mtimeSec,
    mtimeNsec,
    size,
    linkname,
    devMajor: kind === "char" || kind === "block" ? devMajor : 0,
    devMinor: kind === "char" || kind === "block" ? devMinor : 0,
    xattrs: xattrs ?? NO_XATTRS,
    metaOffset: input.metaOffset,
    headerOffset,
    dataOffset,
    storedSize: kind === "file" ? storedSize : 0,
    sparse,
  }, data);
  return { entry, data };
}

// The merged interface declares the fields Object.assign sets, so they are listed once (TarEntry).
interface Member extends Omit<TarEntry, "body"> {}
/** A TarEntry whose `body` stream is made only when asked for (EntryData.stream). */
class Member implements TarEntry {
  #data: EntryData;

  constructor(fields: Omit<TarEntry, "body">, data: EntryData) {
    Object.assign(this, fields);
    this.#data = data;
  }

  get body(): ReadableStream<Uint8Array> {
    return this.#data.stream;
  }
}

function decodeName(bytes: Uint8Array, what: string, offset: number, lenient = false): string {
  const ascii = asciiString(bytes);
  if (ascii !== undefined) return ascii;
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

/**
 * The last user or group name decoded, kept with its bytes: a layer's members mostly share an
 * owner, and comparing the name's bytes (32 in a ustar header, up to 64 kept) is cheaper than
 * decoding them again.
 */
class LastName {
  #bytes = new Uint8Array(64);
  #length = -1;
  #value = "";
  constructor(readonly what: string) {}

  decode(bytes: Uint8Array, offset: number): string {
    const n = bytes.length;
    if (n === this.#length) {
      let i = 0;
      while (i < n && bytes[i] === this.#bytes[i]) i++;
      if (i === n) return this.#value;
    }
    const value = decodeName(bytes, this.what, offset, true);
    if (n <= this.#bytes.length) {
      this.#bytes.set(bytes);
      this.#length = n;
      this.#value = value;
    }
    return value;
  }
}
const unames = new LastName("uname");
const gnames = new LastName("gname");
