/**
 * The layout's xattrs (layout.ts): xattr pairs on two inodes or more are stored once, in the
 * shared area after the superblock, and named by id in each inode's xattr body; the others are
 * stored in the body itself (xattrs.ts encodes both).
 */
import { FormatError } from "../../errors.ts";
import { encodeXattrBody, encodeXattrEntry, MAX_SHARED_PER_INODE, xattrKey } from "./xattrs.ts";
import type { NodeTable } from "./node_table.ts";
import { alignUp } from "./small_int.ts";

/** The shared xattr area as planned. */
export interface SharedXattrs {
  /** Its entries and the byte offset of each in the image. */
  entries: { offset: number; bytes: Uint8Array }[];
  /** The shared id (offset / 4) of each pair stored there, by xattrKey. */
  ids: Map<string, number>;
  /** The byte after the area's last entry. */
  end: number;
}

/**
 * The shared area from byte `start`: no entry crosses a block boundary, and the area stops
 * short of `maxShared` (which keeps the root nid within its 16-bit field).
 */
export function planSharedXattrs(
  table: NodeTable,
  tree: { inodeOf: Int32Array; indexOf: Int32Array },
  start: number,
  blockBytes: number,
  maxShared: number,
): SharedXattrs {
  const uses = new Map<string, { name: string; value: Uint8Array; count: number }>();
  // In inode order, as the shared area's order follows the first use.
  const withXattrs: number[] = [];
  for (const inode of table.extras.keys()) {
    const i = tree.indexOf[inode];
    if (i >= 0 && table.xattrsOf(inode).size > 0) withXattrs.push(i);
  }
  withXattrs.sort((a, b) => a - b);
  for (const i of withXattrs) {
    for (const [name, value] of table.xattrsOf(tree.inodeOf[i])) {
      const key = xattrKey(name, value);
      const use = uses.get(key);
      if (use) use.count++;
      else uses.set(key, { name, value, count: 1 });
    }
  }
  const ids = new Map<string, number>();
  const entries: { offset: number; bytes: Uint8Array }[] = [];
  let cursor = start;
  for (const [key, use] of uses) {
    if (use.count < 2) continue;
    const bytes = encodeXattrEntry(use.name, use.value);
    if (cursor + bytes.length > maxShared) break;
    if ((cursor % blockBytes) + bytes.length > blockBytes) cursor = alignUp(cursor, blockBytes);
    entries.push({ offset: cursor, bytes });
    ids.set(key, cursor / 4);
    cursor += bytes.length;
  }
  return { entries, ids, end: cursor };
}

/**
 * Table inode `inode`'s xattr body (undefined without xattrs): its pairs sorted by name, shared
 * ones by id. A body EROFS cannot hold is a FormatError naming the inode's path (`pathOf`).
 */
export function xattrBodyOf(
  table: NodeTable,
  inode: number,
  sharedIds: Map<string, number>,
  pathOf: (inode: number) => string,
): Uint8Array | undefined {
  const xattrs = table.xattrsOf(inode);
  if (xattrs.size === 0) return undefined;
  const ids: number[] = [];
  const inline: [string, Uint8Array][] = [];
  const sorted = [...xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  for (const [name, value] of sorted) {
    // The header counts shared ids in one byte: past 255 the pairs are the inode's own.
    const id = ids.length < MAX_SHARED_PER_INODE ? sharedIds.get(xattrKey(name, value)) : undefined;
    if (id !== undefined) ids.push(id);
    else inline.push([name, value]);
  }
  try {
    return encodeXattrBody(ids, inline);
  } catch (error) {
    if (!(error instanceof FormatError)) throw error;
    const where = `"${pathOf(inode)}" in the image`;
    throw new FormatError(`${where}: ${error.message}`, error.hint, { cause: error });
  }
}
