/**
 * OCI layer whiteouts (image-spec layer.md, "Whiteouts"): a member named `.wh.NAME` deletes
 * NAME from the layers below; `.wh..wh..opq` in a directory hides everything the layers below
 * put in that directory. Whiteouts never hide members of their own layer. Other `.wh..wh.`
 * names are aufs bookkeeping and carry nothing.
 *
 * Two ways to use them: flatten several layers into one tree (`LayerFlattener`), or keep one
 * layer per image in the overlayfs form (`overlayFormOf`): a whiteout becomes a character
 * device 0/0 at NAME and an opaque marker becomes `trusted.overlay.opaque=y` on its directory
 * (Documentation/filesystems/overlayfs.rst).
 */
import { FormatError } from "../errors.ts";
import type { TarEntryKind } from "./entry.ts";

export const WHITEOUT_PREFIX = ".wh.";
export const OPAQUE_MARKER = ".wh..wh..opq";
const AUFS_META_PREFIX = ".wh..wh.";
/** overlayfs: xattr that makes a directory hide the lower layers' contents. */
export const OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque";
export const OVERLAY_OPAQUE_VALUE = new Uint8Array([0x79]); // "y"

export type Whiteout =
  /** Delete `target` (and everything under it) from the lower layers. */
  | { type: "whiteout"; target: string }
  /** Hide the lower layers' contents of directory `dir` ("" is the root). */
  | { type: "opaque"; dir: string }
  /** aufs metadata (`.wh..wh.plnk`, …): skip the member. */
  | { type: "meta" };

/** What a normalized member path means as a whiteout; undefined for an ordinary member. */
export function parseWhiteout(path: string): Whiteout | undefined {
  const slash = path.lastIndexOf("/");
  const base = path.slice(slash + 1);
  if (!base.startsWith(WHITEOUT_PREFIX)) return undefined;
  const dir = slash < 0 ? "" : path.slice(0, slash);
  if (base === OPAQUE_MARKER) return { type: "opaque", dir };
  if (base.startsWith(AUFS_META_PREFIX)) return { type: "meta" };
  const name = base.slice(WHITEOUT_PREFIX.length);
  if (name === "" || name === "." || name === "..") {
    throw new FormatError(`tar member "${path}": whiteout without a usable name`);
  }
  return { type: "whiteout", target: dir === "" ? name : `${dir}/${name}` };
}

/** The overlayfs form of a whiteout member, for one-image-per-layer builds. */
export type OverlayForm =
  /** Create a character device 0/0 at `path` instead of the `.wh.` member. */
  | { type: "device"; path: string; kind: "char"; devMajor: 0; devMinor: 0 }
  /** Set `OVERLAY_OPAQUE_XATTR` = `OVERLAY_OPAQUE_VALUE` on directory `dir` (create it if absent). */
  | { type: "opaque-xattr"; dir: string }
  | { type: "skip" };

/**
 * Maps a member path to its overlayfs form, or undefined for an ordinary member. When one layer
 * holds both `.wh.X` and a directory X (delete then recreate), overlayfs needs X to be opaque
 * instead of a device: `LayerOverlayMapper` handles that.
 */
export function overlayFormOf(path: string): OverlayForm | undefined {
  const w = parseWhiteout(path);
  if (!w) return undefined;
  if (w.type === "opaque") return { type: "opaque-xattr", dir: w.dir };
  if (w.type === "meta") return { type: "skip" };
  return { type: "device", path: w.target, kind: "char", devMajor: 0, devMinor: 0 };
}

/**
 * The kind of the member at each prefix of `parts` (a path's components: index i is the path of
 * parts 0..i), undefined where there is none; may stop early once one is missing.
 */
export type KindsAlong = (parts: readonly string[]) => (TarEntryKind | undefined)[];

/** A set of paths by component: `inSet` where the path down to this node is one of them. */
interface PathTree {
  inSet: boolean;
  children: Map<string, PathTree>;
}

/**
 * Collects one layer's members in overlayfs form. Feed every normalized member path with its
 * kind; `result()` then says which paths get a 0/0 device and which directories get the opaque
 * xattr, resolving same-layer conflicts: a whiteout of X next to a real X in the same layer
 * means "replace": a non-directory X simply wins, a directory X becomes opaque.
 */
export class LayerOverlayMapper {
  #members = new Map<string, TarEntryKind>();
  #whiteouts = new Set<string>();
  #opaque = new Set<string>();
  readonly #kindsAlong: KindsAlong | undefined;

  /**
   * `kindsAlong`: where the caller keeps the layer's members itself (a tree of them), the kind
   * of the last member at each prefix of a path's components, found in one walk down ("dir" also
   * for a directory only implied by deeper members, undefined where there is none); the mapper
   * then keeps no path per member (a string per entry of a big layer).
   */
  constructor(options: { kindsAlong?: KindsAlong } = {}) {
    this.#kindsAlong = options.kindsAlong;
  }

  /** Returns true when the member is a whiteout marker (its own data is not part of the image). */
  add(path: string, kind: TarEntryKind): boolean {
    const form = overlayFormOf(path);
    if (!form) {
      if (!this.#kindsAlong) {
        this.#members.set(path, kind);
        // Its parents, unless named themselves: implied directories of this layer.
        for (let at = path.lastIndexOf("/"); at > 0; at = path.lastIndexOf("/", at - 1)) {
          const parent = path.slice(0, at);
          if (this.#members.has(parent)) break;
          this.#members.set(parent, "dir");
        }
      }
      return false;
    }
    if (form.type === "device") this.#whiteouts.add(form.path);
    else if (form.type === "opaque-xattr") this.#opaque.add(form.dir);
    return true;
  }

  /**
   * `devices`: paths that get a 0/0 device; `opaqueDirs`: directories that get the opaque
   * xattr; `replacedDirs`: those of them a whiteout made opaque (the lower directory is gone,
   * not only its contents: one this layer only implies is a fresh directory, not the lower's).
   */
  result(): { devices: string[]; opaqueDirs: string[]; replacedDirs: string[] } {
    const kindsAlong: KindsAlong = this.#kindsAlong ??
      ((parts) => parts.map((_, i) => this.#members.get(parts.slice(0, i + 1).join("/"))));
    const kindAt = (path: string) => {
      const parts = path.split("/");
      return kindsAlong(parts)[parts.length - 1];
    };
    // The whiteouts by component, so that a path's ancestors are looked up in one walk down (a
    // lookup by each ancestor's path made a deep path's check quadratic in its depth).
    const whiteoutTree: PathTree = { inSet: false, children: new Map() };
    for (const path of this.#whiteouts) {
      let node = whiteoutTree;
      for (const part of path.split("/")) {
        let child = node.children.get(part);
        if (!child) node.children.set(part, child = { inSet: false, children: new Map() });
        node = child;
      }
      node.inSet = true;
    }
    // Under a path this layer makes a non-directory, or deletes itself, a whiteout or opaque
    // marker hides nothing more (umoci writes `dirA` as a file, then `dirA/.wh.f1`): moot.
    const moot = (path: string) => {
      const parts = path.split("/");
      const kinds = kindsAlong(parts.slice(0, -1));
      let whiteouts: PathTree | undefined = whiteoutTree;
      for (let i = 0; i < parts.length - 1; i++) {
        whiteouts = whiteouts?.children.get(parts[i]);
        const kind = kinds[i];
        if (kind !== undefined ? kind !== "dir" : whiteouts?.inSet) return true;
      }
      return false;
    };
    const devices: string[] = [];
    const replacedDirs: string[] = [];
    const opaqueDirs = new Set<string>();
    for (const dir of this.#opaque) {
      if (dir === "" || (!moot(dir) && (kindAt(dir) ?? "dir") === "dir")) opaqueDirs.add(dir);
    }
    for (const path of this.#whiteouts) {
      if (moot(path)) continue;
      const real = kindAt(path);
      if (real === undefined) devices.push(path);
      else if (real === "dir") {
        opaqueDirs.add(path);
        replacedDirs.push(path);
      }
    }
    return { devices: devices.sort(), opaqueDirs: [...opaqueDirs].sort(), replacedDirs };
  }
}

interface TreeNode<T> {
  value?: T;
  /** Kind of `value`; a node without a value is an implied directory. */
  kind: TarEntryKind;
  children: Map<string, TreeNode<T>>;
  /** Layer that last set this node's value. */
  layer: number;
  /** Newest layer that set a value here or anywhere below. */
  touched: number;
}

/**
 * Flattens layers, bottom first, into one tree. A later member with the same path replaces the
 * earlier one (a directory over a directory keeps the children; anything else drops them).
 * Whiteouts apply only to what lower layers put there, whatever their order in the layer.
 *
 * @example
 * const flat = new LayerFlattener<MyEntry>();
 * for (const layer of layers) {
 *   flat.beginLayer();
 *   for await (const e of readTar(layer)) if (!flat.add(e.path, e.kind, mine(e))) ...store data;
 * }
 * for (const [path, kind, value] of flat.entries()) ...
 */
export class LayerFlattener<T> {
  #root: TreeNode<T> = newNode("dir", 0);
  #layer = 0;

  /** Starts the next (upper) layer. */
  beginLayer(): void {
    this.#layer++;
  }

  /**
   * Adds one member of the current layer. Returns false for a whiteout/opaque/aufs marker (the
   * caller keeps nothing of it), true for a member stored in the tree.
   * A path that passes through a non-directory is a FormatError (the reader never follows
   * symlinks, so such a member has no place in the tree).
   */
  add(path: string, kind: TarEntryKind, value: T): boolean {
    const w = parseWhiteout(path);
    if (w) {
      if (w.type === "whiteout") this.#hide(w.target, false);
      else if (w.type === "opaque") this.#hide(w.dir, true);
      return false;
    }
    if (path === "") {
      this.#root.value = value;
      this.#root.layer = this.#layer;
      this.#root.touched = this.#layer;
      return true;
    }
    const parts = path.split("/");
    let node = this.#root;
    node.touched = this.#layer;
    for (let i = 0; i < parts.length - 1; i++) {
      let child = node.children.get(parts[i]);
      if (!child) {
        child = newNode("dir", this.#layer);
        node.children.set(parts[i], child);
      } else if (child.kind !== "dir") {
        throw new FormatError(
          `tar member "${path}": "${parts.slice(0, i + 1).join("/")}" is not a directory`,
        );
      }
      child.touched = this.#layer;
      node = child;
    }
    const name = parts[parts.length - 1];
    const old = node.children.get(name);
    const keepChildren = old !== undefined && old.kind === "dir" && kind === "dir";
    const next = newNode<T>(kind, this.#layer);
    next.value = value;
    if (keepChildren) next.children = old.children;
    node.children.set(name, next);
    return true;
  }

  /** The value stored at a path, or undefined (absent, or an implied directory). */
  get(path: string): T | undefined {
    return this.#find(path)?.value;
  }

  /**
   * Every path in the tree, parents before children, siblings sorted: [path, kind, value]; the
   * value is undefined for a directory implied by deeper members.
   */
  *entries(): Generator<[string, TarEntryKind, T | undefined]> {
    // An explicit stack: one pax path can nest hundreds of thousands of directories.
    const stack: [TreeNode<T>, string][] = [[this.#root, ""]];
    while (stack.length > 0) {
      const [node, path] = stack.pop()!;
      yield [path, node.kind, node.value];
      const names = [...node.children.keys()].sort().reverse();
      for (const name of names) {
        stack.push([node.children.get(name)!, path === "" ? name : `${path}/${name}`]);
      }
    }
  }

  #find(path: string): TreeNode<T> | undefined {
    let node: TreeNode<T> | undefined = this.#root;
    if (path === "") return node;
    for (const part of path.split("/")) {
      node = node.children.get(part);
      if (!node) return undefined;
    }
    return node;
  }

  /** Removes what lower layers put at `path` (or only below it when `childrenOnly`). */
  #hide(path: string, childrenOnly: boolean): void {
    const node = this.#find(path);
    if (!node) return;
    if (childrenOnly) {
      this.#pruneChildren(node);
      return;
    }
    const slash = path.lastIndexOf("/");
    const parent = this.#find(slash < 0 ? "" : path.slice(0, slash))!;
    const name = path.slice(slash + 1);
    if (node.touched < this.#layer) {
      parent.children.delete(name);
      return;
    }
    // Members of this layer survive; only what lower layers left there goes.
    this.#pruneChildren(node);
    if (node.layer < this.#layer) {
      node.value = undefined;
      node.kind = "dir";
    }
  }

  /** Drops lower layers' members under `node`, keeping this layer's (iteratively, as above). */
  #pruneChildren(top: TreeNode<T>): void {
    const stack = [top];
    while (stack.length > 0) {
      const node = stack.pop()!;
      for (const [name, child] of node.children) {
        if (child.touched < this.#layer) {
          node.children.delete(name);
          continue;
        }
        stack.push(child);
        if (child.layer < this.#layer) {
          child.value = undefined;
          child.kind = "dir";
        }
      }
    }
  }
}

function newNode<T>(kind: TarEntryKind, layer: number): TreeNode<T> {
  return { kind, children: new Map(), layer, touched: layer };
}
