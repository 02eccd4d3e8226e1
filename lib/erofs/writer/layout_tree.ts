/**
 * The layout's walk of the tree (layout.ts): every reachable inode once, numbered breadth-first
 * in each directory's entry order (hard links are one inode reached twice; a directory reached
 * twice is no tree), with link counts, and each directory's entries sorted by their bytes with
 * "." and ".." where their bytes put them, packed into blocks (dirs.ts). Directories' and
 * symlinks' sizes are set in the table here. Apart from layout.ts because it decides what the
 * image holds and in which inode order; layout.ts decides where each piece goes.
 */
import { FormatError } from "../../errors.ts";
import { packDirectory } from "./dirs.ts";
import { DOT, DOTDOT, KIND_DIR, KIND_SYMLINK, type NodeTable } from "./node_table.ts";
import { releaseArray, scratchArray } from "./resizable_arrays.ts";

/**
 * A directory's entries sorted by their bytes ("." and ".." included): table entry ids (or
 * DOT / DOTDOT), and the entries per block.
 */
export interface DirectoryPlan {
  /** Inode indexes of the directory and its parent. */
  self: number;
  parent: number;
  entries: Int32Array;
  perBlock: number[];
}

/** The inodes of the image in inode order, their link counts and directories. */
export interface Tree {
  inodeOf: Int32Array;
  indexOf: Int32Array;
  entryOf: Int32Array;
  nlink: Uint32Array;
  dirs: Map<number, DirectoryPlan>;
}

const DOT_BYTES = new Uint8Array([0x2e]), DOTDOT_BYTES = new Uint8Array([0x2e, 0x2e]);

/**
 * Every reachable inode once, breadth-first in each directory's entry order (hard links are
 * one inode reached twice), with link counts, sizes and each directory's sorted entries.
 */
export function collectTree(table: NodeTable, blockBytes: number): Tree {
  const inodes = table.inodes, entries = table.entries;
  // Each directory's entries in entry order: a counting sort by parent.
  // One array for counts, fill positions and starts (no second one of `inodes`): counted at
  // p + 2, summed, then filled from p + 1, which leaves [childStart[p], childStart[p + 1]).
  const childStart = scratchArray(Uint32Array, inodes + 2);
  for (let e = 0; e < entries; e++) childStart[table.entryParent[e] + 2]++;
  for (let i = 0; i <= inodes; i++) childStart[i + 1] += childStart[i];
  const childList = scratchArray(Int32Array, entries);
  for (let e = 0; e < entries; e++) childList[childStart[table.entryParent[e] + 1]++] = e;
  const indexOf = new Int32Array(inodes).fill(-1);
  const inodeOf = new Int32Array(inodes);
  // Names of files are needed only for data a directory scan shares per directory.
  const entryOf = new Int32Array(table.refs.some((ref) => ref?.kind === "child") ? inodes : 0);
  const nlink = new Uint32Array(inodes);
  let count = 0;
  const add = (inode: number, entry: number): number => {
    indexOf[inode] = count;
    inodeOf[count] = inode;
    if (entryOf.length > 0) entryOf[count] = entry;
    return count++;
  };
  add(0, -1);
  nlink[0] = 2;
  const dirs = new Map<number, DirectoryPlan>();
  const pool = table.pool, nameStart = table.nameStart, nameLength = table.nameLength;
  const compareEntries = (a: number, b: number): number => {
    const la = nameLength[a], lb = nameLength[b];
    const sa = nameStart[a], sb = nameStart[b];
    const n = la < lb ? la : lb;
    for (let k = 0; k < n; k++) {
      const d = pool[sa + k] - pool[sb + k];
      if (d !== 0) return d;
    }
    return la - lb;
  };
  const compareToBytes = (e: number, bytes: Uint8Array): number => {
    const le = nameLength[e], se = nameStart[e];
    const n = le < bytes.length ? le : bytes.length;
    for (let k = 0; k < n; k++) {
      const d = pool[se + k] - bytes[k];
      if (d !== 0) return d;
    }
    return le - bytes.length;
  };
  // Directory indexes (and their parents) in breadth-first order.
  const queue: number[] = [0, 0];
  for (let head = 0; head < queue.length; head += 2) {
    const dir = queue[head], parent = queue[head + 1];
    const from = childStart[inodeOf[dir]], to = childStart[inodeOf[dir] + 1];
    for (let k = from; k < to; k++) {
      const e = childList[k];
      const child = table.entryInode[e];
      const isDir = table.kindCode(child) === KIND_DIR;
      let target = indexOf[child];
      if (target >= 0 && isDir) {
        throw new FormatError(`directory reachable twice (at ${table.nameOf(e)}): not a tree`);
      }
      if (target < 0) target = add(child, e);
      if (isDir) {
        nlink[target] = 2;
        nlink[dir]++;
        queue.push(target, dir);
      } else {
        nlink[target]++;
      }
    }
    const sorted = childList.subarray(from, to).sort(compareEntries);
    for (let k = 1; k < sorted.length; k++) {
      if (compareEntries(sorted[k - 1], sorted[k]) === 0) {
        throw new FormatError("duplicate name in a directory");
      }
    }
    // "." and ".." among the names, where their bytes put them.
    const merged = new Int32Array(sorted.length + 2);
    let at = 0, k = 0, dotDone = false, dotdotDone = false;
    while (at < merged.length) {
      if (!dotDone && (k >= sorted.length || compareToBytes(sorted[k], DOT_BYTES) > 0)) {
        merged[at++] = DOT;
        dotDone = true;
      } else if (
        dotDone && !dotdotDone &&
        (k >= sorted.length || compareToBytes(sorted[k], DOTDOT_BYTES) > 0)
      ) {
        merged[at++] = DOTDOT;
        dotdotDone = true;
      } else {
        merged[at++] = sorted[k++];
      }
    }
    const lengths = Array.from(merged, (e) => e === DOT ? 1 : e === DOTDOT ? 2 : nameLength[e]);
    const packed = packDirectory(lengths, blockBytes);
    dirs.set(dir, { self: dir, parent, entries: merged, perBlock: packed.perBlock });
    table.size.set(inodeOf[dir], packed.sizeBytes);
  }
  releaseArray(childList);
  releaseArray(childStart);
  // Symlinks' sizes join the table's (files' are there, directories' set above; others 0).
  for (const inode of table.extras.keys()) {
    if (table.kindCode(inode) === KIND_SYMLINK) {
      table.size.set(inode, table.targetOf(inode)?.length ?? 0);
    }
  }
  // Every inode is reachable unless a tar member replaced some: copy only then.
  const fit = (a: Int32Array) => count === inodes ? a : a.slice(0, count);
  return {
    inodeOf: fit(inodeOf),
    indexOf,
    entryOf: entryOf.length > 0 ? fit(entryOf) : entryOf,
    nlink: count === inodes ? nlink : nlink.slice(0, count),
    dirs,
  };
}

/** The inode index entry `k` of directory `plan` points at. */
export function direntTarget(
  layout: { table: NodeTable; indexOf: Int32Array },
  plan: DirectoryPlan,
  k: number,
): number {
  const e = plan.entries[k];
  return e === DOT
    ? plan.self
    : e === DOTDOT
    ? plan.parent
    : layout.indexOf[layout.table.entryInode[e]];
}
