/**
 * The order file data is written in: the `--order` paths first (contiguous, in their order),
 * then every other regular file with data blocks, depth-first in name order.
 */
import type { BuildNode } from "./tree.ts";
import type { DirectoryPlan } from "./layout.ts";

/** What of the layout the ordering needs: inodes, their data blocks, directory entries. */
export interface OrderInput {
  nodes: BuildNode[];
  blocks: Uint32Array;
  dirs: Map<number, DirectoryPlan>;
}

/** Inode indexes of files with data blocks; `order` paths naming no file go to `unmatched`. */
export function orderFiles(
  root: BuildNode,
  tree: OrderInput,
  order: string[],
  unmatched: string[],
): Int32Array {
  const { nodes, blocks, dirs } = tree;
  let out = new Int32Array(1024);
  let length = 0;
  const taken = new Uint8Array(nodes.length);
  /** False when `node` is not a regular file (empty files and repeats count as found). */
  const take = (index: number): boolean => {
    if (index < 0 || nodes[index].kind !== "file") return false;
    if (blocks[index] > 0 && !taken[index]) {
      taken[index] = 1;
      if (length === out.length) {
        const grown = new Int32Array(out.length * 2);
        grown.set(out);
        out = grown;
      }
      out[length++] = index;
    }
    return true;
  };
  for (const path of order) {
    const node = lookup(root, path);
    const slot = node?.layoutSlot ?? -1;
    if (!take(slot >= 0 && nodes[slot] === node ? slot : -1)) unmatched.push(path);
  }
  // Depth first with an explicit stack: a hostile tar can nest directories very deep.
  const stack: { dir: DirectoryPlan; next: number }[] = [{ dir: dirs.get(0)!, next: 0 }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    if (top.next >= top.dir.names.length) {
      stack.pop();
      continue;
    }
    const at = top.next++;
    const name = top.dir.names[at];
    if (name === "." || name === "..") continue;
    const target = top.dir.targets[at];
    const dir = dirs.get(target);
    if (dir) stack.push({ dir, next: 0 });
    else take(target);
  }
  return out.slice(0, length);
}

/** The node at a relative path ("a/b", "./a/b", "/a/b"), not following symlinks. */
export function lookup(root: BuildNode, path: string): BuildNode | undefined {
  let node: BuildNode | undefined = root;
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    node = node?.children?.get(part);
    if (!node) return undefined;
  }
  return node;
}
