/**
 * The directories of the layers below the one being converted, as stacked (metadata only).
 * A per-layer EROFS image is mounted under overlayfs, which shows an upper directory's own
 * metadata; a directory the layer's tar only implies must therefore carry what the layers below
 * have there, or a 0700 directory would turn 0755 (and its mtime change) once stacked.
 */
import { type BuildNode, newNode } from "../erofs/writer/tree.ts";
import {
  copyAttributes,
  isOpaqueDir,
  isWhiteoutNode,
  pruneWithoutLower,
  type StackedLayer,
} from "./flatten.ts";
import { OVERLAY_OPAQUE_VALUE, OVERLAY_OPAQUE_XATTR } from "../tar/whiteout.ts";

interface DirSkeleton {
  /** A node holding the directory's metadata (children unused). */
  meta: BuildNode;
  children: Map<string, DirSkeleton>;
}

export class LowerDirs {
  #root: DirSkeleton | undefined;
  /** Layers stacked so far. */
  layers = 0;

  /**
   * Prepares layer `index` for stacking on the layers below: fills its implied directories and
   * drops marker-only ones (see below). Layers not stacked here yet are read with `readLayer`,
   * only when the layer implies any directory.
   */
  async completeFromBelow(
    layer: StackedLayer,
    index: number,
    readLayer: (index: number) => Promise<StackedLayer & { close(): void }>,
  ): Promise<void> {
    if (layer.implied.size === 0) return;
    while (this.layers < index) {
      const below = await readLayer(this.layers);
      try {
        this.apply(below);
      } finally {
        below.close();
      }
    }
    this.fillImplied(layer);
    this.dropMarkersWithoutLower(layer);
  }

  /** Gives `layer`'s implied directories the metadata of the same directory below. */
  fillImplied(layer: StackedLayer): void {
    if (!this.#root || layer.implied.size === 0) return;
    const pending: [BuildNode, DirSkeleton][] = [[layer.root, this.#root]];
    while (pending.length > 0) {
      const [dir, below] = pending.pop()!;
      if (layer.implied.has(dir)) {
        const opaque = isOpaqueDir(dir);
        copyAttributes(dir, below.meta);
        if (opaque) {
          dir.xattrs = new Map([...dir.xattrs, [OVERLAY_OPAQUE_XATTR, OVERLAY_OPAQUE_VALUE]]);
        }
      }
      // Below an opaque directory nothing of the lower layers shows: a directory implied there
      // is made afresh (as umoci unpack does), not given the hidden one's metadata.
      if (isOpaqueDir(dir)) continue;
      for (const [name, node] of dir.children!) {
        const lower = below.children.get(name);
        if (node.kind === "dir" && lower) pending.push([node, lower]);
      }
    }
  }

  /**
   * Drops what only whiteouts brought into `layer` where nothing lies below: directories the
   * tar implies just to hold a whiteout or opaque marker (umoci unpack does not create them;
   * overlayfs would show them empty), and the markers themselves.
   */
  dropMarkersWithoutLower(layer: StackedLayer): void {
    if (!this.#root) {
      pruneWithoutLower(layer.root, layer.implied);
      return;
    }
    const pending: [BuildNode, DirSkeleton][] = [[layer.root, this.#root]];
    while (pending.length > 0) {
      const [dir, below] = pending.pop()!;
      for (const [name, node] of dir.children!) {
        if (node.kind !== "dir") continue;
        const lower = below.children.get(name);
        if (lower && !isOpaqueDir(node)) pending.push([node, lower]);
        else {
          const empty = pruneWithoutLower(node, layer.implied, lower !== undefined);
          if (empty && !lower && layer.implied.has(node)) dir.children!.delete(name);
        }
      }
    }
  }

  /** Stacks `layer` on top (call after fillImplied, in layer order). */
  apply(layer: StackedLayer): void {
    this.layers++;
    if (!this.#root || isOpaqueDir(layer.root)) {
      // As flattenTrees: an opaque root hides what is below, an implied one keeps its meta.
      const meta = this.#root && layer.implied.has(layer.root) ? this.#root.meta : undefined;
      this.#root = skeletonOf(layer.root);
      if (meta) this.#root.meta = meta;
      return;
    }
    const pending: [DirSkeleton, BuildNode][] = [[this.#root, layer.root]];
    while (pending.length > 0) {
      const [below, dir] = pending.pop()!;
      if (!layer.implied.has(dir)) below.meta = metaOf(dir);
      for (const [name, node] of dir.children!) {
        const lower = below.children.get(name);
        if (node.kind !== "dir") below.children.delete(name);
        else if (lower && !isOpaqueDir(node)) pending.push([lower, node]);
        else {
          const fresh = skeletonOf(node);
          if (lower && layer.implied.has(node)) fresh.meta = lower.meta;
          below.children.set(name, fresh);
        }
      }
    }
  }
}

function skeletonOf(top: BuildNode): DirSkeleton {
  const root: DirSkeleton = { meta: metaOf(top), children: new Map() };
  const pending: [DirSkeleton, BuildNode][] = [[root, top]];
  while (pending.length > 0) {
    const [skeleton, dir] = pending.pop()!;
    for (const [name, node] of dir.children!) {
      if (node.kind !== "dir" || isWhiteoutNode(node)) continue;
      const child: DirSkeleton = { meta: metaOf(node), children: new Map() };
      skeleton.children.set(name, child);
      pending.push([child, node]);
    }
  }
  return root;
}

/** The metadata of a directory without its children (the layer's tree can then be freed). */
function metaOf(dir: BuildNode): BuildNode {
  // A copy field by field: a spread would copy none of a packed node's fields (accessors).
  const meta = newNode(dir.kind, dir);
  meta.xattrs = dir.xattrs;
  meta.children = undefined;
  return meta;
}
