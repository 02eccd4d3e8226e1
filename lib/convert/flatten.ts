/**
 * Stacks per-layer trees (whiteouts in overlayfs form, as readLayerTree makes them) into one
 * tree the way overlayfs presents them: an upper entry replaces the lower one, directories over
 * directories merge unless the upper is opaque, a 0/0 character device deletes. The result has
 * no whiteouts and no opaque markers left.
 */
import type { BuildNode } from "../erofs/writer/tree.ts";
import { newNode } from "../erofs/writer/tree.ts";
import { OVERLAY_OPAQUE_XATTR } from "../tar/whiteout.ts";

/** True for overlayfs' whiteout: a character device with device number 0/0. */
export function isWhiteoutNode(node: BuildNode): boolean {
  return node.kind === "chardev" && node.rdevMajor === 0 && node.rdevMinor === 0;
}

function isOpaque(node: BuildNode): boolean {
  return node.xattrs.has(OVERLAY_OPAQUE_XATTR);
}

/** Merges `layers` (bottom first) into one tree; the inputs are reused, not copied. */
export function flattenTrees(layers: BuildNode[]): BuildNode {
  let merged = newNode("dir");
  for (const [i, layer] of layers.entries()) {
    if (i === 0 || isOpaque(layer)) {
      stripOverlay(layer);
      merged = layer;
    } else {
      mergeDir(merged, layer);
    }
  }
  return merged;
}

/** Applies directory `upper` onto directory `lower` in place. */
function mergeDir(lower: BuildNode, upper: BuildNode): void {
  copyAttributes(lower, upper);
  for (const [name, node] of upper.children!) {
    const below = lower.children!.get(name);
    if (isWhiteoutNode(node)) {
      lower.children!.delete(name);
    } else if (node.kind === "dir" && below?.kind === "dir" && !isOpaque(node)) {
      mergeDir(below, node);
    } else {
      if (node.kind === "dir") stripOverlay(node);
      lower.children!.set(name, node);
    }
  }
}

function copyAttributes(to: BuildNode, from: BuildNode): void {
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

/** A directory with nothing below it: its whiteouts and opaque marker mean nothing any more. */
function stripOverlay(dir: BuildNode): void {
  dir.xattrs = withoutOpaque(dir.xattrs);
  for (const [name, node] of dir.children!) {
    if (isWhiteoutNode(node)) dir.children!.delete(name);
    else if (node.kind === "dir") stripOverlay(node);
  }
}
