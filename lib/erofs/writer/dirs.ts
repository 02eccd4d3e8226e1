/**
 * EROFS directory data: each block holds an array of 12-byte `erofs_dirent` {le64 nid,
 * le16 nameoff, u8 file_type, u8 reserved} followed by the names (no terminators; the last
 * name of a block runs to the first zero or the block/directory end). Names are sorted by
 * bytes across the whole directory, "." and ".." included, because the kernel binary-searches
 * blocks by their first name and then the entries within a block.
 */
import { DIRENT_BYTES } from "./format.ts";
import { compareNames } from "./tree.ts";

const encoder = new TextEncoder();

export interface DirectoryEntry {
  /** A string, or its UTF-8 bytes. */
  name: string | Uint8Array;
  nid: number;
  fileType: number;
}

/** Entries sorted by the UTF-8 bytes of their names. */
export function sortEntries<T extends { name: string }>(entries: T[]): T[] {
  return entries.sort((a, b) => compareNames(a.name, b.name));
}

/**
 * Splits sorted name lengths into blocks; returns the entry count of each block and the size
 * of the directory (full blocks plus the used part of the last one).
 */
export function packDirectory(
  nameLengths: number[],
  blockBytes: number,
): { perBlock: number[]; sizeBytes: number } {
  const perBlock: number[] = [];
  let used = 0, count = 0;
  for (const length of nameLengths) {
    const cost = DIRENT_BYTES + length;
    if (count > 0 && used + cost > blockBytes) {
      perBlock.push(count);
      used = 0;
      count = 0;
    }
    used += cost;
    count++;
  }
  if (count > 0) perBlock.push(count);
  return { perBlock, sizeBytes: (perBlock.length - 1) * blockBytes + used };
}

/** The directory's bytes (`sizeBytes` long) for sorted `entries` packed as `perBlock` says. */
export function encodeDirectory(
  entries: DirectoryEntry[],
  perBlock: number[],
  sizeBytes: number,
  blockBytes: number,
): Uint8Array {
  const out = new Uint8Array(sizeBytes);
  const view = new DataView(out.buffer);
  let next = 0;
  perBlock.forEach((count, block) => {
    const base = block * blockBytes;
    let nameAt = count * DIRENT_BYTES;
    for (let i = 0; i < count; i++) {
      const entry = entries[next++];
      const at = base + i * DIRENT_BYTES;
      view.setBigUint64(at, BigInt(entry.nid), true);
      view.setUint16(at + 8, nameAt, true);
      view.setUint8(at + 10, entry.fileType);
      if (typeof entry.name === "string") {
        nameAt += encoder.encodeInto(entry.name, out.subarray(base + nameAt)).written;
      } else {
        out.set(entry.name, base + nameAt);
        nameAt += entry.name.length;
      }
    }
  });
  return out;
}
