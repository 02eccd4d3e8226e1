/**
 * The in-memory model of a file system to be written as EROFS: what a directory scan or a tar
 * reader produces and what the writer lays out. Only metadata lives here; file contents are
 * referenced (`FileData`), never held, so memory grows with the number of entries, not their size.
 */
import { FormatError } from "../../errors.ts";
import { utf8Length } from "../../tar/path.ts";

export { utf8Length };

export type NodeKind = "file" | "dir" | "symlink" | "chardev" | "blockdev" | "fifo" | "socket";

const KIND_OF_FILE_TYPE: Record<number, NodeKind> = {
  0o100000: "file",
  0o040000: "dir",
  0o120000: "symlink",
  0o020000: "chardev",
  0o060000: "blockdev",
  0o010000: "fifo",
  0o140000: "socket",
};

/** The node kind of a st_mode / i_mode (its S_IFMT bits); undefined for an unknown type. */
export function kindOfMode(mode: number): NodeKind | undefined {
  return KIND_OF_FILE_TYPE[mode & 0o170000];
}

/** Where a regular file's bytes are read from when the image is written. */
export type FileData =
  /** A file on disk, read from its start. */
  | { kind: "path"; path: string }
  /**
   * A file of directory `dir` (the path), under the name its directory entry has (the layout
   * knows it), read from its start: one object shared by the siblings, where a joined path
   * cost ~80 bytes per file and an object per file ~50.
   */
  | { kind: "child"; dir: string }
  /** A byte range of an open file descriptor (a spooled tar stream, a tar on disk). */
  | { kind: "fd"; fd: number; offset: number }
  /** Tar-index images: the bytes stay in the tar (device 1) at this uncompressed offset. */
  | { kind: "tar"; offset: number };

export interface BuildNode {
  kind: NodeKind;
  /** Permission bits with setuid/setgid/sticky (st_mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch (may be negative) and nanoseconds (0..999999999). */
  mtimeSec: number;
  mtimeNsec: number;
  /**
   * Full xattr names ("user.x", "trusted.overlay.opaque") → values, any order. Nodes without
   * xattrs share `NO_XATTRS` (a map per entry would cost ~100 bytes each): replace, never mutate.
   */
  xattrs: ReadonlyMap<string, Uint8Array>;
  /** Regular files: size in bytes and where the bytes come from (undefined when empty). */
  sizeBytes: number;
  data?: FileData;
  /** Symlinks: the target bytes. */
  target?: Uint8Array;
  /** Device nodes. */
  rdevMajor: number;
  rdevMinor: number;
  /** Directories: entries by name (names are UTF-8 strings without "/" or NUL). */
  children?: Map<string, BuildNode>;
  /**
   * The layout's scratch: this node's inode index while an image is laid out (-1 before).
   * A field here instead of a Map from node to index saves ~40 bytes per entry.
   */
  layoutSlot: number;
}

/** The shared empty xattr map. */
export const NO_XATTRS: ReadonlyMap<string, Uint8Array> = new Map();

/** EROFS_NAME_LEN: longest name a directory entry may carry. */
export const MAX_NAME_BYTES = 255;

export interface NodeFields {
  mode?: number;
  uid?: number;
  gid?: number;
  mtimeSec?: number;
  mtimeNsec?: number;
}

/** A node of `kind` with defaults (0755 dirs, 0644 others, root-owned, epoch mtime). */
export function newNode(kind: NodeKind, fields: NodeFields = {}): BuildNode {
  return new PackedNode(kind, fields);
}

/** Node kinds by their small-integer code (the order `NodeTable` columns store them in). */
export const KIND_CODES: readonly NodeKind[] = [
  "file",
  "dir",
  "symlink",
  "chardev",
  "blockdev",
  "fifo",
  "socket",
];
const KIND_CODE = new Map(KIND_CODES.map((kind, code) => [kind, code]));
const FILE = 0, DIR = 1, SYMLINK = 2, CHARDEV = 3, BLOCKDEV = 4;
/** Kind code and permission bits in one small integer: kind * MODE_SPAN + mode. */
const MODE_SPAN = 0x10000;
/** uid and gid in one small integer while uid < 2^15 and gid < 2^16 (almost always). */
const GID_SPAN = 0x10000, PACKED_UID_LIMIT = 0x8000;

/**
 * A `BuildNode` with its fields packed into 7 in-object slots (an object of 14 plain fields
 * took ~137 bytes per entry, the largest part of a big build's memory; this one ~80): kind and
 * mode in one small integer, uid and gid in another, and one slot for what only one kind has
 * (a file's data, a symlink's target, a directory's children, a device's numbers), the
 * layout slot in the xattrs' slot while there are none. Accessors
 * on the prototype keep the `BuildNode` interface, so producers and the layout are unchanged.
 */
type NodeRef = FileData | Uint8Array | Map<string, BuildNode> | LazyRef | number | undefined;

/**
 * A directory's children kept elsewhere (a scan's `NodeTable`) until someone asks for them as
 * objects: `materialize` then builds them once. The writer reads the table instead and never
 * asks, so a build from a scan holds no object per entry.
 */
export interface LazyChildren {
  readonly table: object;
  materialize(): Map<string, BuildNode>;
}

class LazyRef {
  constructor(readonly lazy: LazyChildren) {}
}

/** A directory node whose children are `lazy` until first read. */
export function newLazyDir(fields: NodeFields, lazy: LazyChildren): BuildNode {
  const node = new PackedNode("dir", fields);
  node.children = lazy as unknown as Map<string, BuildNode>;
  return node;
}

/** The table behind a directory's children while they have not been materialized. */
export function lazyTableOf(node: BuildNode): object | undefined {
  return node instanceof PackedNode ? node.lazyTable() : undefined;
}

class PackedNode implements BuildNode {
  #kindMode: number;
  #ids: number | { uid: number; gid: number };
  mtimeSec: number;
  mtimeNsec: number;
  sizeBytes: number;
  /** data (file), target (symlink), children (dir), major * 2^32 + minor (device). */
  #ref: NodeRef;
  /** The layout slot, with the xattrs when there are any (few nodes have them). */
  #slot: number | { slot: number; xattrs: ReadonlyMap<string, Uint8Array> };

  constructor(kind: NodeKind, fields: NodeFields) {
    const code = KIND_CODE.get(kind);
    if (code === undefined) throw new Error(`unknown node kind ${kind}`);
    this.#kindMode = code * MODE_SPAN + packMode(fields.mode ?? (kind === "dir" ? 0o755 : 0o644));
    this.#ids = packIds(fields.uid ?? 0, fields.gid ?? 0);
    this.mtimeSec = fields.mtimeSec ?? 0;
    this.mtimeNsec = fields.mtimeNsec ?? 0;
    this.sizeBytes = 0;
    this.#ref = code === DIR ? new Map() : code === CHARDEV || code === BLOCKDEV ? 0 : undefined;
    this.#slot = -1;
  }

  get xattrs(): ReadonlyMap<string, Uint8Array> {
    const slot = this.#slot;
    return typeof slot === "number" ? NO_XATTRS : slot.xattrs;
  }
  set xattrs(xattrs: ReadonlyMap<string, Uint8Array>) {
    const slot = this.layoutSlot;
    this.#slot = xattrs === NO_XATTRS ? slot : { slot, xattrs };
  }
  get layoutSlot(): number {
    const slot = this.#slot;
    return typeof slot === "number" ? slot : slot.slot;
  }
  set layoutSlot(layoutSlot: number) {
    const slot = this.#slot;
    if (typeof slot === "number") this.#slot = layoutSlot;
    else slot.slot = layoutSlot;
  }

  get kind(): NodeKind {
    return KIND_CODES[Math.floor(this.#kindMode / MODE_SPAN)];
  }
  set kind(kind: NodeKind) {
    if (kind !== this.kind) throw new Error(`a ${this.kind} node cannot become a ${kind}`);
  }
  get mode(): number {
    return this.#kindMode % MODE_SPAN;
  }
  set mode(mode: number) {
    this.#kindMode = this.#kindMode - (this.#kindMode % MODE_SPAN) + packMode(mode);
  }
  get uid(): number {
    const ids = this.#ids;
    return typeof ids === "number" ? Math.floor(ids / GID_SPAN) : ids.uid;
  }
  set uid(uid: number) {
    this.#ids = packIds(uid, this.gid);
  }
  get gid(): number {
    const ids = this.#ids;
    return typeof ids === "number" ? ids % GID_SPAN : ids.gid;
  }
  set gid(gid: number) {
    this.#ids = packIds(this.uid, gid);
  }
  get data(): FileData | undefined {
    return this.#code() === FILE ? this.#ref as FileData | undefined : undefined;
  }
  set data(data: FileData | undefined) {
    this.#setRef(FILE, "data", data);
  }
  get target(): Uint8Array | undefined {
    return this.#code() === SYMLINK ? this.#ref as Uint8Array | undefined : undefined;
  }
  set target(target: Uint8Array | undefined) {
    this.#setRef(SYMLINK, "target", target);
  }
  get children(): Map<string, BuildNode> | undefined {
    if (this.#code() !== DIR) return undefined;
    const ref = this.#ref;
    if (ref instanceof LazyRef) return (this.#ref = ref.lazy.materialize());
    return ref as Map<string, BuildNode>;
  }
  set children(children: Map<string, BuildNode> | undefined) {
    const value = children === undefined || children instanceof Map
      ? children
      : new LazyRef(children as unknown as LazyChildren);
    this.#setRef(DIR, "children", value);
  }
  lazyTable(): object | undefined {
    const ref = this.#ref;
    return ref instanceof LazyRef ? ref.lazy.table : undefined;
  }
  get rdevMajor(): number {
    return this.#isDevice() ? Math.floor((this.#ref as number) / 2 ** 32) : 0;
  }
  set rdevMajor(major: number) {
    // Only devices keep their numbers (a statx of anything else reports 0 anyway).
    if (this.#isDevice()) this.#ref = major * 2 ** 32 + this.rdevMinor;
  }
  get rdevMinor(): number {
    return this.#isDevice() ? (this.#ref as number) % 2 ** 32 : 0;
  }
  set rdevMinor(minor: number) {
    if (this.#isDevice()) this.#ref = this.rdevMajor * 2 ** 32 + minor;
  }

  #code(): number {
    return Math.floor(this.#kindMode / MODE_SPAN);
  }
  #isDevice(): boolean {
    const code = this.#code();
    return code === CHARDEV || code === BLOCKDEV;
  }
  #setRef(code: number, field: string, value: NodeRef): void {
    if (this.#code() === code) this.#ref = value;
    else if (value !== undefined) throw new Error(`${field} on a ${this.kind} node`);
  }
}

function packMode(mode: number): number {
  if (!Number.isInteger(mode) || mode < 0 || mode >= MODE_SPAN) {
    throw new Error(`mode ${mode} out of range`);
  }
  return mode;
}

function packIds(uid: number, gid: number): number | { uid: number; gid: number } {
  return uid >= 0 && uid < PACKED_UID_LIMIT && gid >= 0 && gid < GID_SPAN &&
      Number.isInteger(uid) && Number.isInteger(gid)
    ? uid * GID_SPAN + gid
    : { uid, gid };
}

/** Throws FormatError unless `name` is usable as one directory entry. */
export function checkEntryName(name: string, where: string): void {
  if (
    name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0") ||
    !name.isWellFormed()
  ) {
    throw new FormatError(`bad file name ${JSON.stringify(name)} in ${where}`);
  }
  if (utf8Length(name) > MAX_NAME_BYTES) {
    throw new FormatError(
      `file name longer than ${MAX_NAME_BYTES} bytes in ${where}: ${name.slice(0, 40)}…`,
    );
  }
}

/**
 * Names in the order of their UTF-8 bytes, the order EROFS directories need: code point order
 * (UTF-8 preserves it), compared without encoding. UTF-16 units alone would put U+E000..U+FFFF
 * after the surrogate pairs of U+10000 and up.
 */
export function compareNames(a: string, b: string): number {
  let i = 0, j = 0;
  while (i < a.length && j < b.length) {
    const x = a.codePointAt(i)!, y = b.codePointAt(j)!;
    if (x !== y) return x - y;
    i += x > 0xffff ? 2 : 1;
    j += y > 0xffff ? 2 : 1;
  }
  return (a.length - i) - (b.length - j);
}

/** Children of a directory sorted by name bytes. */
export function sortedChildren(dir: BuildNode): [string, BuildNode][] {
  return [...(dir.children ?? new Map()).entries()].sort(([a], [b]) => compareNames(a, b));
}
