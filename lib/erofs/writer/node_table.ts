/**
 * The tree model as columns: per-inode fields in typed arrays indexed by inode id, directory
 * entries (parent inode, name, child inode) in typed arrays indexed by entry id, all names in
 * one UTF-8 byte pool. A scan of a million entries then holds ~80 bytes per entry outside the
 * JS heap, where an object per node, a string per name and a map entry per child took ~135
 * bytes of heap plus V8's headroom.
 *
 * Inode 0 is the root. An entry keeps its id when its name is given another inode (a later tar
 * member replacing an earlier one), so a directory's entries in id order are in the order they
 * were first added, as a `Map`'s would be. Inodes no entry reaches any more are simply not laid
 * out. The `BuildNode` objects (tree.ts) stay the interface for code that edits trees (convert,
 * tar-index readers): node_table_objects.ts turns them into tables and back. The columns'
 * memory (grown in place, trimmed) is resizable_arrays.ts's.
 */
import { FormatError } from "../../errors.ts";
import { type FileData, KIND_CODES, NO_XATTRS, type NodeKind } from "./tree.ts";
import { NumberColumn } from "./number_column.ts";
import { column, grown, releaseArray, scratchArray, trimmed } from "./resizable_arrays.ts";

export const KIND_FILE = 0, KIND_DIR = 1, KIND_SYMLINK = 2, KIND_CHARDEV = 3, KIND_BLOCKDEV = 4;
/** `DirectoryPlan.entries` values standing for "." and "..". */
export const DOT = -1, DOTDOT = -2;
const KIND_SHIFT = 12;
const MODE_MASK = 0o7777;

/** What few inodes have: xattrs, a symlink's target, a device's numbers. */
interface Extra {
  xattrs?: ReadonlyMap<string, Uint8Array>;
  target?: Uint8Array;
  rdevMajor?: number;
  rdevMinor?: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Most entries a table holds (a column's reserved address space, not memory). */
const MAX_ELEMENTS = 2 ** 26;
const MAX_POOL_BYTES = 2 ** 32;

export class NodeTable {
  inodes = 0;
  entries = 0;
  /** kind code << 12 | permission bits. */
  kindMode = column(Uint16Array, MAX_ELEMENTS);
  /** Owner, mtime, a file's size: as narrow as their values allow (`NumberColumn`). */
  readonly uid = new NumberColumn(MAX_ELEMENTS);
  readonly gid = new NumberColumn(MAX_ELEMENTS);
  readonly mtimeSec = new NumberColumn(MAX_ELEMENTS);
  readonly mtimeNsec = new NumberColumn(MAX_ELEMENTS);
  readonly size = new NumberColumn(MAX_ELEMENTS);
  /** Index into `refs` (0: no data). */
  dataRef = column(Uint32Array, MAX_ELEMENTS);
  /** Byte offset into the data's source. */
  readonly dataOffset = new NumberColumn(MAX_ELEMENTS);
  /**
   * The inode number a scanned file's data was seen at (0: not from a directory scan): the
   * file opened by its name when the image is written must be that file, not one renamed
   * over it meanwhile (RENAME_EXCHANGE: another file's bytes under this one's owner, mode and
   * capabilities).
   */
  readonly sourceIno = new NumberColumn(MAX_ELEMENTS);
  /** Shared data sources: `{kind: "child", dir}` per scanned directory, one per fd, …. */
  refs: (FileData | undefined)[] = [undefined];
  extras = new Map<number, Extra>();

  entryParent = column(Uint32Array, MAX_ELEMENTS);
  entryInode = column(Uint32Array, MAX_ELEMENTS);
  nameStart = column(Uint32Array, MAX_ELEMENTS);
  nameLength = column(Uint8Array, MAX_ELEMENTS);
  pool = column(Uint8Array, MAX_POOL_BYTES);
  poolBytes = 0;

  /** (parent, name) → entry + 1, open addressing; only while a scan needs lookups. */
  #index: Uint32Array | undefined;

  addInode(kind: NodeKind | number, mode: number): number {
    const i = this.inodes++;
    if (i >= this.kindMode.length) {
      const n = i + 1;
      this.kindMode = grown(this.kindMode, n);
      this.dataRef = grown(this.dataRef, n);
      this.#reserveNumbers(this.kindMode.length);
    }
    const code = typeof kind === "number" ? kind : KIND_CODES.indexOf(kind);
    if (code < 0) throw new Error(`unknown node kind ${kind}`);
    this.kindMode[i] = (code << KIND_SHIFT) | (mode & MODE_MASK);
    this.uid.set(i, 0);
    this.gid.set(i, 0);
    this.mtimeSec.set(i, 0);
    this.mtimeNsec.set(i, 0);
    this.size.set(i, 0);
    this.dataRef[i] = 0;
    this.dataOffset.set(i, 0);
    this.sourceIno.set(i, 0);
    return i;
  }

  #reserveNumbers(capacity: number): void {
    for (
      const numbers of [
        this.uid,
        this.gid,
        this.mtimeSec,
        this.mtimeNsec,
        this.size,
        this.dataOffset,
        this.sourceIno,
      ]
    ) {
      numbers.reserve(capacity);
    }
  }

  kindCode(i: number): number {
    return this.kindMode[i] >> KIND_SHIFT;
  }
  kindOf(i: number): NodeKind {
    return KIND_CODES[this.kindMode[i] >> KIND_SHIFT];
  }
  modeOf(i: number): number {
    return this.kindMode[i] & MODE_MASK;
  }
  setMode(i: number, mode: number): void {
    this.kindMode[i] = (this.kindMode[i] & ~MODE_MASK) | (mode & MODE_MASK);
  }

  /** Sets the data of inode `i` to shared source `ref` (from `addRef`) at `offset`. */
  setData(i: number, ref: number, offset: number): void {
    this.dataRef[i] = ref;
    this.dataOffset.set(i, offset);
  }
  addRef(data: FileData): number {
    this.refs.push(data);
    return this.refs.length - 1;
  }
  /** The data of inode `i` as a `FileData` (an object per call for offsets). */
  dataOf(i: number): FileData | undefined {
    const ref = this.refs[this.dataRef[i]];
    if (!ref) return undefined;
    const offset = this.dataOffset.get(i);
    if (ref.kind === "fd") return { kind: "fd", fd: ref.fd, offset };
    if (ref.kind === "tar") return { kind: "tar", offset };
    return ref;
  }

  xattrsOf(i: number): ReadonlyMap<string, Uint8Array> {
    return this.extras.get(i)?.xattrs ?? NO_XATTRS;
  }
  setXattrs(i: number, xattrs: ReadonlyMap<string, Uint8Array>): void {
    this.#extra(i, xattrs.size > 0).xattrs = xattrs.size > 0 ? xattrs : undefined;
  }
  targetOf(i: number): Uint8Array | undefined {
    return this.extras.get(i)?.target;
  }
  setTarget(i: number, target: Uint8Array | undefined): void {
    this.#extra(i, target !== undefined).target = target;
  }
  rdevOf(i: number): [number, number] {
    const extra = this.extras.get(i);
    return [extra?.rdevMajor ?? 0, extra?.rdevMinor ?? 0];
  }
  setRdev(i: number, major: number, minor: number): void {
    const code = this.kindCode(i);
    if (code !== KIND_CHARDEV && code !== KIND_BLOCKDEV) return;
    const extra = this.#extra(i, major !== 0 || minor !== 0);
    extra.rdevMajor = major;
    extra.rdevMinor = minor;
  }
  #extra(i: number, create: boolean): Extra {
    let extra = this.extras.get(i);
    if (!extra) {
      extra = {};
      if (create) this.extras.set(i, extra);
    }
    return extra;
  }

  /** Adds entry `name` (UTF-8 bytes, 1..255) of directory `parent` for `inode`. */
  addEntryBytes(parent: number, name: Uint8Array, inode: number): number {
    const e = this.#newEntry(parent, inode);
    this.pool = grown(this.pool, this.poolBytes + name.length);
    this.pool.set(name, this.poolBytes);
    this.nameStart[e] = this.poolBytes;
    this.nameLength[e] = name.length;
    this.poolBytes += name.length;
    if (this.#index) this.#insert(e);
    return e;
  }
  addEntry(parent: number, name: string, inode: number): number {
    const e = this.#newEntry(parent, inode);
    this.pool = grown(this.pool, this.poolBytes + name.length * 3);
    const { written } = encoder.encodeInto(name, this.pool.subarray(this.poolBytes));
    if (written === 0 || written > 255) throw new FormatError(`bad file name length: ${written}`);
    this.nameStart[e] = this.poolBytes;
    this.nameLength[e] = written;
    this.poolBytes += written;
    if (this.#index) this.#insert(e);
    return e;
  }
  #newEntry(parent: number, inode: number): number {
    const e = this.entries++;
    if (e >= this.entryParent.length) {
      this.entryParent = grown(this.entryParent, e + 1);
      this.entryInode = grown(this.entryInode, e + 1);
      this.nameStart = grown(this.nameStart, e + 1);
      this.nameLength = grown(this.nameLength, e + 1);
    }
    this.entryParent[e] = parent;
    this.entryInode[e] = inode;
    return e;
  }
  nameOf(e: number): string {
    const start = this.nameStart[e];
    return decoder.decode(this.pool.subarray(start, start + this.nameLength[e]));
  }
  /**
   * Where `inode` is in the image ("/etc/passwd"; one of a hard link's names), for refusals:
   * it goes through every entry. `laidOut` leaves out entries of directories a later tar
   * member replaced.
   */
  pathOf(inode: number, laidOut: (inode: number) => boolean = () => true): string {
    const namingEntry = new Int32Array(this.inodes).fill(-1);
    for (let e = this.entries - 1; e >= 0; e--) {
      if (laidOut(this.entryParent[e])) namingEntry[this.entryInode[e]] = e;
    }
    const names: string[] = [];
    // At most one step per entry: a table a bug made cyclic still ends.
    for (let at = inode; at !== 0 && namingEntry[at] >= 0 && names.length < this.entries;) {
      names.push(this.nameOf(namingEntry[at]));
      at = this.entryParent[namingEntry[at]];
    }
    return `/${names.reverse().join("/")}`;
  }
  nameBytesOf(e: number): Uint8Array {
    const start = this.nameStart[e];
    return this.pool.subarray(start, start + this.nameLength[e]);
  }

  /** Keeps a (parent, name) index from now on, for `findEntry`. */
  indexNames(): void {
    this.#index = scratchArray(Uint32Array, 4096);
    for (let e = 0; e < this.entries; e++) this.#insert(e);
  }
  /** The entry `name` (UTF-8 bytes) of directory `parent`, or -1 (needs `indexNames`). */
  findEntry(parent: number, name: Uint8Array): number {
    const index = this.#index!;
    const mask = index.length - 1;
    for (let at = hashName(parent, name, 0, name.length) & mask;; at = (at + 1) & mask) {
      const slot = index[at];
      if (slot === 0) return -1;
      const e = slot - 1;
      if (this.entryParent[e] === parent && this.#nameIs(e, name)) return e;
    }
  }
  #nameIs(e: number, name: Uint8Array): boolean {
    if (this.nameLength[e] !== name.length) return false;
    const pool = this.pool;
    const start = this.nameStart[e];
    for (let k = 0; k < name.length; k++) if (pool[start + k] !== name[k]) return false;
    return true;
  }
  #insert(e: number): void {
    let index = this.#index!;
    if ((e + 1) * 2 > index.length) {
      const length = index.length * 2;
      releaseArray(index);
      index = this.#index = scratchArray(Uint32Array, length);
      for (let k = 0; k < e; k++) this.#place(index, k);
    }
    this.#place(index, e);
  }
  #place(index: Uint32Array, e: number): void {
    const mask = index.length - 1;
    const start = this.nameStart[e];
    let at = hashName(this.entryParent[e], this.pool, start, start + this.nameLength[e]) & mask;
    while (index[at] !== 0) at = (at + 1) & mask;
    index[at] = e + 1;
  }
  dropIndex(): void {
    if (this.#index) releaseArray(this.#index);
    this.#index = undefined;
  }

  /** Frees the columns' unused capacity (a scan is complete). */
  trim(): void {
    const n = this.inodes, m = this.entries;
    this.kindMode = trimmed(this.kindMode, n);
    this.dataRef = trimmed(this.dataRef, n);
    this.#reserveNumbers(n);
    this.entryParent = trimmed(this.entryParent, m);
    this.entryInode = trimmed(this.entryInode, m);
    this.nameStart = trimmed(this.nameStart, m);
    this.nameLength = trimmed(this.nameLength, m);
    this.pool = trimmed(this.pool, this.poolBytes);
  }
}

function hashName(parent: number, bytes: Uint8Array, start: number, end: number): number {
  let h = Math.imul(parent ^ 0x9e3779b9, 0x85ebca6b);
  for (let k = start; k < end; k++) h = Math.imul(h ^ bytes[k], 0x01000193);
  h ^= h >>> 15;
  return Math.imul(h, 0x2c1b3c6d) >>> 0;
}
