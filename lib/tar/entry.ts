/** What the tar reader yields: one archive member, with its data as a stream. */
import type { SparseSegment } from "./header.ts";

export type { SparseSegment };

/** Member kinds a tar can hold (sockets cannot be archived). */
export type TarEntryKind = "file" | "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo";

export interface TarEntry {
  /**
   * Normalized path: relative, "/"-separated, no "", "." or ".." components (see
   * `normalizeTarPath`), at most 4095 bytes with names of at most 255. "" only for the root
   * directory itself ("./" or "/" in the archive). Paths may repeat: every member is yielded in
   * archive order, and a consumer building a tree lets the later one win.
   */
  readonly path: string;
  /** The path as stored (after pax/GNU long-name overrides), before normalization. */
  readonly rawPath: string;
  readonly kind: TarEntryKind;
  /** Permission bits including setuid/setgid/sticky (07777). */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly uname: string;
  readonly gname: string;
  /** Modification time: whole seconds (may be negative) and 0..999999999 ns (pax only). */
  readonly mtimeSec: number;
  readonly mtimeNsec: number;
  /** Logical file size (a sparse file's real size); 0 for every kind but "file". */
  readonly size: number;
  /**
   * symlink: the target exactly as stored (data, never resolved; at most 4095 bytes).
   * hardlink: the target's normalized path; with the default `hardlinkTargets` it is always an
   * earlier non-directory member of the same archive, and means the member most recently read
   * at that path (a later member with the same path does not change what the link meant).
   */
  readonly linkname: string;
  /** For "char" and "block"; 0 otherwise. */
  readonly devMajor: number;
  readonly devMinor: number;
  /** Extended attributes from pax SCHILY.xattr.* and LIBARCHIVE.xattr.* records. */
  readonly xattrs: ReadonlyMap<string, Uint8Array>;
  /** Offset in the uncompressed tar of the first header block of this member (pax, GNU L/K). */
  readonly metaOffset: number;
  /** Offset of the member's own ustar header block. */
  readonly headerOffset: number;
  /**
   * Offset of the first stored data byte in the uncompressed tar (512-aligned). For a sparse
   * file this is after any in-data sparse map (pax 1.0) and old GNU extension blocks.
   */
  readonly dataOffset: number;
  /** Data bytes stored in the archive from `dataOffset` (equals `size` unless sparse). */
  readonly storedSize: number;
  /**
   * Sparse files only: the data runs in file order, stored back to back from `dataOffset`;
   * everything between runs (and after the last one up to `size`) is a hole of zeros.
   */
  readonly sparse?: readonly SparseSegment[];
  /**
   * The stored data (`storedSize` bytes: for a sparse file the runs back to back, holes not
   * included). Read it before asking the reader for the next entry; what is left unread is
   * skipped then, and the stream errors if read later. Empty for non-files.
   */
  readonly body: ReadableStream<Uint8Array>;
}

/** Where each piece of a file's data lives in the uncompressed tar (for tar-index images). */
export interface DataExtent {
  /** Offset inside the logical file. */
  fileOffset: number;
  /** Offset inside the uncompressed tar stream. */
  tarOffset: number;
  length: number;
}

/**
 * Maps a file entry's data to tar offsets: one extent for a plain file, one per non-empty run
 * for a sparse file (holes are the gaps). Only the first extent is guaranteed 512-aligned.
 */
export function dataExtents(entry: TarEntry): DataExtent[] {
  if (entry.kind !== "file") return [];
  if (!entry.sparse) {
    return entry.size === 0
      ? []
      : [{ fileOffset: 0, tarOffset: entry.dataOffset, length: entry.size }];
  }
  const extents: DataExtent[] = [];
  let tarOffset = entry.dataOffset;
  for (const { offset, length } of entry.sparse) {
    if (length > 0) extents.push({ fileOffset: offset, tarOffset, length });
    tarOffset += length;
  }
  return extents;
}
