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
 * tar-index readers): `tableOf` turns such a tree into a table, and a scan's root materializes
 * objects only when someone reads its children.
 */
import { FormatError } from "../../errors.ts";
import {
  type BuildNode,
  type FileData,
  KIND_CODES,
  lazyTableOf,
  newLazyDir,
  newNode,
  NO_XATTRS,
  type NodeKind,
} from "./tree.ts";
import { NumberColumn } from "./number_column.ts";

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

type Column = Uint8Array | Uint16Array | Uint32Array | Int32Array | Float64Array;
type ColumnType<T extends Column> = {
  new (buffer: ArrayBuffer): T;
  readonly BYTES_PER_ELEMENT: number;
};

/** Most entries a table holds (a column's reserved address space, not memory). */
const MAX_ELEMENTS = 2 ** 26;
const MAX_POOL_BYTES = 2 ** 32;
/** Columns grow in place by this many elements: no copy, no garbage, little unused room. */
const GROW_ELEMENTS = 8192;

/**
 * A column on a resizable buffer: it grows in place (the address space is reserved, pages are
 * committed as they are used), where doubling a plain typed array left the old copies as
 * garbage until V8 collected them (~50 MB of RSS at 600,000 entries) plus up to half unused.
 */
function column<T extends Column>(type: ColumnType<T>, maxElements = MAX_ELEMENTS): T {
  return new type(new ArrayBuffer(0, { maxByteLength: maxElements * type.BYTES_PER_ELEMENT }));
}

/**
 * `array` with room for `needed` elements. Columns of one table grow to the same element
 * count (a multiple of GROW_ELEMENTS), so checking one column's length covers them all.
 */
function grown<T extends Column>(array: T, needed: number): T {
  if (needed <= array.length) return array;
  const buffer = array.buffer as ArrayBuffer;
  const capacity = Math.ceil(needed / GROW_ELEMENTS) * GROW_ELEMENTS;
  const bytes = Math.min(buffer.maxByteLength, capacity * array.BYTES_PER_ELEMENT);
  if (needed * array.BYTES_PER_ELEMENT > bytes) {
    throw new FormatError(`more than ${buffer.maxByteLength / array.BYTES_PER_ELEMENT} entries`);
  }
  buffer.resize(bytes);
  return array;
}

/**
 * A zeroed array of `length` on its own resizable buffer, which `releaseArray` gives back at
 * once: big scratch arrays (a name index, a layout's child lists) then leave no garbage that
 * waits for V8 to collect it while the next big array is allocated.
 */
export function scratchArray<T extends Column>(type: ColumnType<T>, length: number): T {
  const bytes = length * type.BYTES_PER_ELEMENT;
  return new type(new ArrayBuffer(bytes, { maxByteLength: bytes }));
}

/** Frees `array`'s memory now (it must come from `scratchArray` or `column`; length 0 after). */
export function releaseArray(array: Column): void {
  (array.buffer as ArrayBuffer).resize(0);
}

function trimmed<T extends Column>(array: T, length: number): T {
  (array.buffer as ArrayBuffer).resize(length * array.BYTES_PER_ELEMENT);
  return array;
}

export class NodeTable {
  inodes = 0;
  entries = 0;
  /** kind code << 12 | permission bits. */
  kindMode = column(Uint16Array);
  /** Owner, mtime, a file's size: as narrow as their values allow (`NumberColumn`). */
  readonly uid = new NumberColumn(MAX_ELEMENTS);
  readonly gid = new NumberColumn(MAX_ELEMENTS);
  readonly mtimeSec = new NumberColumn(MAX_ELEMENTS);
  readonly mtimeNsec = new NumberColumn(MAX_ELEMENTS);
  readonly size = new NumberColumn(MAX_ELEMENTS);
  /** Index into `refs` (0: no data). */
  dataRef = column(Uint32Array);
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

  entryParent = column(Uint32Array);
  entryInode = column(Uint32Array);
  nameStart = column(Uint32Array);
  nameLength = column(Uint8Array);
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

  /** Copies what `stat` shows of `node` (not its children) into inode `i`. */
  setAttributes(i: number, node: BuildNode): void {
    this.setMode(i, node.mode);
    this.uid.set(i, node.uid);
    this.gid.set(i, node.gid);
    this.mtimeSec.set(i, node.mtimeSec);
    this.mtimeNsec.set(i, node.mtimeNsec);
    this.setXattrs(i, node.xattrs);
  }

  /** A new node object with inode `i`'s fields (children not included). */
  nodeOf(i: number): BuildNode {
    const kind = this.kindOf(i);
    const node = newNode(kind, {
      mode: this.modeOf(i),
      uid: this.uid.get(i),
      gid: this.gid.get(i),
      mtimeSec: this.mtimeSec.get(i),
      mtimeNsec: this.mtimeNsec.get(i),
    });
    node.xattrs = this.xattrsOf(i);
    if (kind === "file") {
      node.sizeBytes = this.size.get(i);
      node.data = this.dataOf(i);
    } else if (kind === "symlink") {
      node.target = this.targetOf(i);
    } else if (kind === "chardev" || kind === "blockdev") {
      [node.rdevMajor, node.rdevMinor] = this.rdevOf(i);
    }
    return node;
  }

  /**
   * The root object of this table: a directory node with inode 0's fields whose children
   * become objects only when read. The writer uses the table itself (`tableOf`).
   */
  rootNode(): BuildNode {
    const root = newLazyDir({
      mode: this.modeOf(0),
      uid: this.uid.get(0),
      gid: this.gid.get(0),
      mtimeSec: this.mtimeSec.get(0),
      mtimeNsec: this.mtimeNsec.get(0),
    }, { table: this, materialize: () => this.#materialize(root) });
    root.xattrs = this.xattrsOf(0);
    return root;
  }

  /** Every entry as objects, in entry order (each directory's `Map` in insertion order). */
  #materialize(root: BuildNode): Map<string, BuildNode> {
    const objects: (BuildNode | undefined)[] = new Array(this.inodes);
    const rootChildren = new Map<string, BuildNode>();
    const childrenOf = (inode: number): Map<string, BuildNode> => {
      if (inode === 0) return rootChildren;
      return objectOf(inode).children!;
    };
    const objectOf = (inode: number): BuildNode => (objects[inode] ??= this.nodeOf(inode));
    objects[0] = root;
    for (let e = 0; e < this.entries; e++) {
      childrenOf(this.entryParent[e]).set(this.nameOf(e), objectOf(this.entryInode[e]));
    }
    return rootChildren;
  }
}

function hashName(parent: number, bytes: Uint8Array, start: number, end: number): number {
  let h = Math.imul(parent ^ 0x9e3779b9, 0x85ebca6b);
  for (let k = start; k < end; k++) h = Math.imul(h ^ bytes[k], 0x01000193);
  h ^= h >>> 15;
  return Math.imul(h, 0x2c1b3c6d) >>> 0;
}

/**
 * The table to lay out for `root`: a scan's own table (with the root object's fields, which the
 * caller may have changed), or a new one built from an object tree. FormatError when a
 * directory is reachable twice.
 */
export function tableOf(root: BuildNode): NodeTable {
  const own = lazyTableOf(root);
  if (own instanceof NodeTable) {
    own.setAttributes(0, root);
    return own;
  }
  return tableFromTree(root);
}

function tableFromTree(root: BuildNode): NodeTable {
  const table = new NodeTable();
  const refs = new Map<unknown, number>();
  const seen = new Map<BuildNode, number>();
  const add = (node: BuildNode): number => {
    const i = table.addInode(node.kind, node.mode);
    table.setAttributes(i, node);
    if (node.kind === "file") {
      table.size.set(i, node.sizeBytes);
      const data = node.data;
      if (data) {
        const shared: FileData = data.kind === "fd"
          ? { kind: "fd", fd: data.fd, offset: 0 }
          : data.kind === "tar"
          ? { kind: "tar", offset: 0 }
          : data;
        const key = data.kind === "fd" ? `fd:${data.fd}` : data.kind === "tar" ? "tar" : data;
        let ref = refs.get(key);
        if (ref === undefined) refs.set(key, ref = table.addRef(shared));
        table.setData(i, ref, data.kind === "fd" || data.kind === "tar" ? data.offset : 0);
      }
    } else if (node.kind === "symlink") {
      table.setTarget(i, node.target);
    } else if (node.kind === "chardev" || node.kind === "blockdev") {
      table.setRdev(i, node.rdevMajor, node.rdevMinor);
    }
    seen.set(node, i);
    return i;
  };
  add(root);
  const pending: [BuildNode, number][] = [[root, 0]];
  while (pending.length > 0) {
    const [dir, inode] = pending.pop()!;
    for (const [name, child] of dir.children ?? []) {
      let i = seen.get(child);
      if (i !== undefined && child.kind === "dir") {
        throw new FormatError(`directory reachable twice (at ${name}): not a tree`);
      }
      if (i === undefined) {
        i = add(child);
        if (child.kind === "dir") pending.push([child, i]);
      }
      table.addEntry(inode, name, i);
    }
  }
  table.trim();
  return table;
}
