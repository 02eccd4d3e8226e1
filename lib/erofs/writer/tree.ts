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
  /** Full xattr names ("user.x", "trusted.overlay.opaque") → values, any order. */
  xattrs: Map<string, Uint8Array>;
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
}

/** EROFS_NAME_LEN: longest name a directory entry may carry. */
export const MAX_NAME_BYTES = 255;

const encoder = new TextEncoder();

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
    xattrs: new Map(),
    sizeBytes: 0,
    rdevMajor: 0,
    rdevMinor: 0,
    children: kind === "dir" ? new Map() : undefined,
  };
}

/** Throws FormatError unless `name` is usable as one directory entry. */
export function checkEntryName(name: string, where: string): void {
  if (name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
    throw new FormatError(`bad file name ${JSON.stringify(name)} in ${where}`);
  }
  if (encoder.encode(name).length > MAX_NAME_BYTES) {
    throw new FormatError(
      `file name longer than ${MAX_NAME_BYTES} bytes in ${where}: ${name.slice(0, 40)}…`,
    );
  }
}

/** Names compared as their UTF-8 bytes, the order EROFS directories need. */
export function compareNames(a: string, b: string): number {
  const x = encoder.encode(a), y = encoder.encode(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/** Children of a directory sorted by name bytes. */
export function sortedChildren(dir: BuildNode): [string, BuildNode][] {
  return [...(dir.children ?? new Map()).entries()].sort(([a], [b]) => compareNames(a, b));
}
