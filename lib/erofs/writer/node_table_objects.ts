/**
 * The `BuildNode` objects (tree.ts) and the tables (node_table.ts) turned into each other: the
 * objects stay the interface for code that edits trees (convert, tar-index readers), the
 * writer lays out tables. `tableOf` turns an object tree into a table; a scan's root
 * (`rootNodeOf`) materializes objects only when someone reads its children.
 */
import { FormatError } from "../../errors.ts";
import { type BuildNode, type FileData, lazyTableOf, newLazyDir, newNode } from "./tree.ts";
import { NodeTable } from "./node_table.ts";

/**
 * The table to lay out for `root`: a scan's own table (with the root object's fields, which the
 * caller may have changed), or a new one built from an object tree. FormatError when a
 * directory is reachable twice.
 */
export function tableOf(root: BuildNode): NodeTable {
  const own = lazyTableOf(root);
  if (own instanceof NodeTable) {
    setAttributes(own, 0, root);
    return own;
  }
  return tableFromTree(root);
}

function tableFromTree(root: BuildNode): NodeTable {
  const table = new NodeTable();
  const refs = new Map<unknown, number>();
  const seen = new Map<BuildNode, number>();
  const add = (node: BuildNode): number => {
    const i = table.addInode(node.kind, node.mode);
    setAttributes(table, i, node);
    if (node.kind === "file") {
      table.size.set(i, node.sizeBytes);
      const data = node.data;
      if (data) {
        const shared: FileData = data.kind === "fd"
          ? { kind: "fd", fd: data.fd, offset: 0 }
          : data.kind === "tar"
          ? { kind: "tar", offset: 0 }
          : data;
        const key = data.kind === "fd" ? `fd:${data.fd}` : data.kind === "tar" ? "tar" : data;
        let ref = refs.get(key);
        if (ref === undefined) refs.set(key, ref = table.addRef(shared));
        table.setData(i, ref, data.kind === "fd" || data.kind === "tar" ? data.offset : 0);
      }
    } else if (node.kind === "symlink") {
      table.setTarget(i, node.target);
    } else if (node.kind === "chardev" || node.kind === "blockdev") {
      table.setRdev(i, node.rdevMajor, node.rdevMinor);
    }
    seen.set(node, i);
    return i;
  };
  add(root);
  const pending: [BuildNode, number][] = [[root, 0]];
  while (pending.length > 0) {
    const [dir, inode] = pending.pop()!;
    for (const [name, child] of dir.children ?? []) {
      let i = seen.get(child);
      if (i !== undefined && child.kind === "dir") {
        throw new FormatError(`directory reachable twice (at ${name}): not a tree`);
      }
      if (i === undefined) {
        i = add(child);
        if (child.kind === "dir") pending.push([child, i]);
      }
      table.addEntry(inode, name, i);
    }
  }
  table.trim();
  return table;
}

/** Copies what `stat` shows of `node` (not its children) into inode `i` of `table`. */
function setAttributes(table: NodeTable, i: number, node: BuildNode): void {
  table.setMode(i, node.mode);
  table.uid.set(i, node.uid);
  table.gid.set(i, node.gid);
  table.mtimeSec.set(i, node.mtimeSec);
  table.mtimeNsec.set(i, node.mtimeNsec);
  table.setXattrs(i, node.xattrs);
}

/**
 * The root object of `table`: a directory node with inode 0's fields whose children become
 * objects only when read. The writer uses the table itself (`tableOf`).
 */
export function rootNodeOf(table: NodeTable): BuildNode {
  const root = newLazyDir({
    mode: table.modeOf(0),
    uid: table.uid.get(0),
    gid: table.gid.get(0),
    mtimeSec: table.mtimeSec.get(0),
    mtimeNsec: table.mtimeNsec.get(0),
  }, { table, materialize: () => materialize(table, root) });
  root.xattrs = table.xattrsOf(0);
  return root;
}

/** Every entry as objects, in entry order (each directory's `Map` in insertion order). */
function materialize(table: NodeTable, root: BuildNode): Map<string, BuildNode> {
  const objects: (BuildNode | undefined)[] = new Array(table.inodes);
  const rootChildren = new Map<string, BuildNode>();
  const childrenOf = (inode: number): Map<string, BuildNode> => {
    if (inode === 0) return rootChildren;
    return objectOf(inode).children!;
  };
  const objectOf = (inode: number): BuildNode => (objects[inode] ??= nodeOf(table, inode));
  objects[0] = root;
  for (let e = 0; e < table.entries; e++) {
    childrenOf(table.entryParent[e]).set(table.nameOf(e), objectOf(table.entryInode[e]));
  }
  return rootChildren;
}

/** A new node object with inode `i`'s fields (children not included). */
function nodeOf(table: NodeTable, i: number): BuildNode {
  const kind = table.kindOf(i);
  const node = newNode(kind, {
    mode: table.modeOf(i),
    uid: table.uid.get(i),
    gid: table.gid.get(i),
    mtimeSec: table.mtimeSec.get(i),
    mtimeNsec: table.mtimeNsec.get(i),
  });
  node.xattrs = table.xattrsOf(i);
  if (kind === "file") {
    node.sizeBytes = table.size.get(i);
    node.data = table.dataOf(i);
  } else if (kind === "symlink") {
    node.target = table.targetOf(i);
  } else if (kind === "chardev" || kind === "blockdev") {
    [node.rdevMajor, node.rdevMinor] = table.rdevOf(i);
  }
  return node;
}
