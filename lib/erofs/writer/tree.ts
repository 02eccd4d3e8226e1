/**
 * The in-memory model of a file system to be written as EROFS: what a directory scan or a tar
 * reader produces and what the writer lays out. Only metadata lives here; file contents are
 * referenced (`FileData`), never held, so memory grows with the number of entries, not their size.
 */
import { FormatError } from "../../errors.ts";

export type NodeKind = "file" | "dir" | "symlink" | "chardev" | "blockdev" | "fifo" | "socket";

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
  return {
    kind,
    mode: fields.mode ?? (kind === "dir" ? 0o755 : 0o644),
    uid: fields.uid ?? 0,
    gid: fields.gid ?? 0,
    mtimeSec: fields.mtimeSec ?? 0,
    mtimeNsec: fields.mtimeNsec ?? 0,
    xattrs: NO_XATTRS,
    sizeBytes: 0,
    // Set now, even when unused: a property added later gets each node its own property
    // store (100,000 files: 4 MB more).
    data: undefined,
    target: undefined,
    rdevMajor: 0,
    rdevMinor: 0,
    children: kind === "dir" ? new Map() : undefined,
    layoutSlot: -1,
  };
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

/** Bytes of `name` in UTF-8 (lone surrogates count as U+FFFD, as TextEncoder writes them). */
export function utf8Length(name: string): number {
  let bytes = 0;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < name.length) {
      const d = name.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

/** Children of a directory sorted by name bytes. */
export function sortedChildren(dir: BuildNode): [string, BuildNode][] {
  return [...(dir.children ?? new Map()).entries()].sort(([a], [b]) => compareNames(a, b));
}
