/**
 * Stacks per-layer trees (whiteouts in overlayfs form, as readLayerTree makes them) into one
 * tree the way a container sees them: an upper entry replaces the lower one, directories over
 * directories merge unless the upper is opaque, a 0/0 character device deletes. A directory the
 * upper layer only implies keeps the lower one's metadata. The result has no whiteouts and no
 * opaque markers left. Walks are iterative: hostile layers can nest deeper than the stack.
 */
import type { BuildNode } from "../erofs/writer/tree.ts";
import { OVERLAY_OPAQUE_XATTR } from "../tar/whiteout.ts";

/** True for overlayfs' whiteout: a character device with device number 0/0. */
export function isWhiteoutNode(node: BuildNode): boolean {
  return node.kind === "chardev" && node.rdevMajor === 0 && node.rdevMinor === 0;
}

export function isOpaqueDir(node: BuildNode): boolean {
  return node.xattrs.has(OVERLAY_OPAQUE_XATTR);
}

/** One layer's tree and the directories it only implies. */
export interface StackedLayer {
  root: BuildNode;
  implied: ReadonlySet<BuildNode>;
}

/** Merges `layers` (bottom first) into one tree; the inputs are reused, not copied. */
export function flattenTrees(layers: StackedLayer[]): BuildNode {
  let merged: BuildNode | undefined;
  for (const layer of layers) {
    if (!merged || isOpaqueDir(layer.root)) {
      // An opaque root hides every layer below; one the tar only implies (`.wh..wh..opq`
      // without a `./` entry) keeps the attributes of the root below.
      if (merged && layer.implied.has(layer.root)) copyAttributes(layer.root, merged);
      pruneWithoutLower(layer.root, layer.implied);
      merged = layer.root;
    } else {
      mergeDir(merged, layer);
    }
  }
  return merged!;
}

function mergeDir(lowerRoot: BuildNode, layer: StackedLayer): void {
  const pending: [BuildNode, BuildNode][] = [[lowerRoot, layer.root]];
  while (pending.length > 0) {
    const [lower, upper] = pending.pop()!;
    if (!layer.implied.has(upper)) copyAttributes(lower, upper);
    for (const [name, node] of upper.children!) {
      const below = lower.children!.get(name);
      if (isWhiteoutNode(node)) {
        lower.children!.delete(name);
      } else if (node.kind === "dir" && below?.kind === "dir" && !isOpaqueDir(node)) {
        pending.push([below, node]);
      } else {
        if (node.kind === "dir") {
          const empty = pruneWithoutLower(node, layer.implied);
          if (layer.implied.has(node)) {
            if (below?.kind === "dir") copyAttributes(node, below);
            // Only whiteouts made this directory: nothing to show (as umoci unpack does).
            else if (empty) continue;
          }
        }
        lower.children!.set(name, node);
      }
    }
  }
}

/** Copies what `stat` shows (not the children) from `from` to `to`, minus the opaque marker. */
export function copyAttributes(to: BuildNode, from: BuildNode): void {
  to.mode = from.mode;
  to.uid = from.uid;
  to.gid = from.gid;
  to.mtimeSec = from.mtimeSec;
  to.mtimeNsec = from.mtimeNsec;
  to.xattrs = withoutOpaque(from.xattrs);
}

function withoutOpaque(xattrs: ReadonlyMap<string, Uint8Array>): ReadonlyMap<string, Uint8Array> {
  if (!xattrs.has(OVERLAY_OPAQUE_XATTR)) return xattrs;
  return new Map([...xattrs].filter(([name]) => name !== OVERLAY_OPAQUE_XATTR));
}

/**
 * A directory with nothing below it: its whiteouts and opaque markers mean nothing (the opaque
 * marker of `top` itself stays with `keepTopOpaque`), and implied directories holding nothing
 * else go. Returns true when `top` ends up empty. Post-order without recursion.
 */
export function pruneWithoutLower(
  top: BuildNode,
  implied: ReadonlySet<BuildNode>,
  keepTopOpaque = false,
): boolean {
  const order: [BuildNode, BuildNode | undefined, string][] = [[top, undefined, ""]];
  for (let i = 0; i < order.length; i++) {
    for (const [name, node] of order[i][0].children!) {
      if (node.kind === "dir" && !isWhiteoutNode(node)) order.push([node, order[i][0], name]);
    }
  }
  for (let i = order.length - 1; i >= 0; i--) {
    const [dir, parent, name] = order[i];
    if (dir !== top || !keepTopOpaque) dir.xattrs = withoutOpaque(dir.xattrs);
    for (const [child, node] of dir.children!) {
      if (isWhiteoutNode(node)) dir.children!.delete(child);
    }
    if (parent && dir.children!.size === 0 && implied.has(dir)) parent.children!.delete(name);
  }
  return top.children!.size === 0;
}
