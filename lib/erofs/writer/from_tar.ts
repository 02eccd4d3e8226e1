/**
 * Reads a tar stream (an OCI layer) into a `NodeTable` (the root as a `BuildNode` whose
 * children become objects only when read). File data is not held: it stays in the
 * tar when the tar is an uncompressed file on disk (nodes point at its byte ranges), else it is
 * spooled to an unlinked temporary file (holes of sparse members stay holes). Later members
 * replace earlier ones with the same path, as extraction would.
 *
 * OCI whiteouts become their overlayfs form (the default, so a per-layer image works in an
 * overlay stack): `.wh.NAME` → character device 0/0 at NAME, `.wh..wh..opq` →
 * `trusted.overlay.opaque=y` on its directory (lib/tar/whiteout.ts resolves same-layer cases).
 *
 * The spool is from_tar_spool.ts; a member's checks and attributes from_tar_member.ts.
 */
import { FormatError } from "../../errors.ts";
import { warn } from "../../log.ts";
import { readTar } from "../../tar/reader.ts";
import {
  LayerOverlayMapper,
  OVERLAY_OPAQUE_VALUE,
  OVERLAY_OPAQUE_XATTR,
  parseWhiteout,
} from "../../tar/whiteout.ts";
import { type BuildNode, checkEntryName, type FileData, type NodeKind } from "./tree.ts";
import { KIND_DIR, NodeTable } from "./node_table.ts";
import { rootNodeOf } from "./node_table_objects.ts";
import { type SkippedXattr, skippedXattrWarner } from "./xattrs.ts";
import { checkMemberFields, setMemberAttributes } from "./from_tar_member.ts";
import { TarSpool } from "./from_tar_spool.ts";

/**
 * impliedMtimeSec's value that marks what a tar only implies (parent directories it does not
 * list, whiteout devices) for takeImplied to find in the tree: the caller learns which
 * directories of a layer are its own and which stand for the layers below.
 */
export const MARK_IMPLIED = "mark";
export type ImpliedMtime = number | typeof MARK_IMPLIED;
/** The mark: a nanoseconds value no member can have (a tar's fraction has nine digits). */
const IMPLIED_NSEC_MARK = 1_000_000_000;

/**
 * The nodes of `root`'s tree scanTar marked (MARK_IMPLIED) get `mtimeSec`; returns the
 * directories among them. Iterative: a hostile layer can nest deeper than the call stack.
 */
export function takeImplied(root: BuildNode, mtimeSec: number): Set<BuildNode> {
  const implied = new Set<BuildNode>();
  const pending = [root];
  while (pending.length > 0) {
    const node = pending.pop()!;
    if (node.mtimeNsec === IMPLIED_NSEC_MARK) {
      node.mtimeSec = mtimeSec;
      node.mtimeNsec = 0;
      if (node.kind === "dir") implied.add(node);
    }
    for (const child of node.children?.values() ?? []) pending.push(child);
  }
  return implied;
}

/** EROFS stores a file's block count in 32 bits. */
const MAX_FILE_BLOCKS = 0xffffffff;

export interface TarScanOptions {
  /** Keep `.wh.*` members as plain files instead of their overlayfs form. */
  literalWhiteouts?: boolean;
  /** An input of no bytes: refused (default), or an empty archive (an image's layer). */
  emptyInput?: "refuse" | "archive";
  /**
   * mtime of directories the tar implies but does not list, and of whiteout devices (default
   * 0); MARK_IMPLIED: marked for takeImplied, which gives them their time afterwards.
   */
  impliedMtimeSec?: ImpliedMtime;
  /**
   * An fd of the same uncompressed tar on disk: file data is referenced there, not copied.
   * Sparse members are still spooled.
   */
  tarFd?: number;
  /** Where other data is spooled (an open, writable, empty file). Needed unless `tarFd`. */
  spoolFd?: number;
  /**
   * Tar-index mode: file data stays in the tar; nodes get `{kind: "tar", offset}` and nothing
   * is copied or spooled. Sparse members cannot be indexed as one chunk and are refused.
   */
  indexOnly?: boolean;
  /**
   * Refuse a layer whose files hold more bytes than this in all, each at its full size: a
   * sparse member of a few blocks in the tar can stand for terabytes of zeros in the image.
   */
  maxFileBytes?: number;
  /** Default: a warning for each of the first five. */
  onSkippedXattr?: SkippedXattr;
  onEntries?: (count: number) => void;
}

export interface TarScanResult {
  root: BuildNode;
  entries: number;
  /** Bytes written to the spool file. */
  spooledBytes: number;
  /** End of the last member in the uncompressed tar (where the end-of-archive marker starts). */
  tarEndOffset: number;
  /** Zero blocks of the end-of-archive marker after it (0–2: the input may end without them). */
  endMarkerBlocks: 0 | 1 | 2;
}

const TAR_KIND: Record<string, NodeKind> = {
  file: "file",
  dir: "dir",
  symlink: "symlink",
  char: "chardev",
  block: "blockdev",
  fifo: "fifo",
};
const encoder = new TextEncoder();

export async function scanTar(
  stream: ReadableStream<Uint8Array>,
  options: TarScanOptions = {},
): Promise<TarScanResult> {
  const maxFileBytes = options.maxFileBytes ?? Infinity;
  let fileBytes = 0;
  const marking = options.impliedMtimeSec === MARK_IMPLIED;
  const impliedMtimeSec = marking ? 0 : options.impliedMtimeSec as number | undefined ?? 0;
  const table = new NodeTable();
  table.indexNames();
  /** Gives an inode the time of what the tar implies (or the mark). */
  const impliedTime = (inode: number) => {
    table.mtimeSec.set(inode, impliedMtimeSec);
    if (marking) table.mtimeNsec.set(inode, IMPLIED_NSEC_MARK);
  };
  /** Directories made for a path's parents, until a member of their own lands on them. */
  const impliedDirs = new Set<number>();
  const newImpliedDir = (): number => {
    const d = table.addInode(KIND_DIR, 0o755);
    impliedTime(d);
    impliedDirs.add(d);
    return d;
  };
  newImpliedDir();
  impliedDirs.delete(0);
  const nameBuffer = new Uint8Array(1024);
  /** UTF-8 bytes of a checked name (at most 255 bytes), valid until the next call. */
  const bytesOf = (name: string): Uint8Array => {
    // ASCII (most names) copied in JavaScript: a TextEncoder call costs more than the copy.
    const n = name.length;
    for (let i = 0; i < n; i++) {
      const c = name.charCodeAt(i);
      if (c >= 0x80) return nameBuffer.subarray(0, encoder.encodeInto(name, nameBuffer).written);
      nameBuffer[i] = c;
    }
    return nameBuffer.subarray(0, n);
  };
  const find = (dir: number, name: string): number => table.findEntry(dir, bytesOf(name));
  const isDir = (inode: number) => table.kindCode(inode) === KIND_DIR;
  /** Names `inode` as `name` in `dir`, in place of what had that name (keeping its position). */
  const setChild = (dir: number, name: string, inode: number): void => {
    const bytes = bytesOf(name);
    const e = table.findEntry(dir, bytes);
    if (e < 0) {
      table.addEntryBytes(dir, bytes, inode);
      return;
    }
    if (isDir(table.entryInode[e]) && !isDir(inode)) lastDirPath = undefined;
    table.entryInode[e] = inode;
  };
  /** The inode at each prefix of `parts` ("a//b" is "a/b"), as far down as the tree has them. */
  const inodesAlong = (parts: readonly string[]): number[] => {
    const inodes: number[] = [];
    let inode = 0;
    for (const part of parts) {
      if (part !== "") {
        if (!isDir(inode)) break;
        const e = find(inode, part);
        if (e < 0) break;
        inode = table.entryInode[e];
      }
      inodes.push(inode);
    }
    return inodes;
  };
  const lookupPath = (path: string): number => {
    const parts = path.split("/");
    const inodes = inodesAlong(parts);
    return inodes.length === parts.length ? inodes[inodes.length - 1] : -1;
  };
  const overlay = options.literalWhiteouts ? undefined : new LayerOverlayMapper({
    // A directory only implied by deeper members of this layer counts as one: `.wh.w` beside
    // `w/new` hides the lower w, not this layer's w/new (w becomes opaque, not a whiteout).
    kindsAlong: (parts) => inodesAlong(parts).map((inode) => isDir(inode) ? "dir" : "file"),
  });
  /** When each whiteout was made: a directory it replaces by one it implies gets that time. */
  const whiteoutMtimes = new Map<string, number>();
  let entries = 0;
  let tarEnd = 0;
  const onSkippedXattr = options.onSkippedXattr ?? skippedXattrWarner();
  const onWhiteoutLookalike = whiteoutLookalikeWarner();
  let endMarkerBlocks: 0 | 1 | 2 = 0;

  // Members come grouped by directory: the last parent found is most often the next one.
  let lastDirPath: string | undefined;
  let lastDir = 0;
  const parentOf = (path: string): [number, string] => {
    const slash = path.lastIndexOf("/");
    const name = path.slice(slash + 1);
    const dirPath = slash < 0 ? "" : path.slice(0, slash);
    if (dirPath !== lastDirPath) {
      const parts = slash < 0 ? [] : dirPath.split("/");
      let dir = 0;
      for (let i = 0; i < parts.length; i++) {
        checkEntryName(parts[i], `tar member "${path}"`);
        const e = find(dir, parts[i]);
        if (e < 0) {
          const next = newImpliedDir();
          table.addEntryBytes(dir, bytesOf(parts[i]), next);
          dir = next;
        } else if (!isDir(table.entryInode[e])) {
          throw new FormatError(
            `tar member "${path}": "${parts.slice(0, i + 1).join("/")}" is not a directory`,
          );
        } else {
          dir = table.entryInode[e];
        }
      }
      lastDirPath = dirPath;
      lastDir = dir;
    }
    checkEntryName(name, `tar member "${path}"`);
    return [lastDir, name];
  };
  const refs = new Map<number | string, number>();
  const refOf = (key: number | string, data: FileData): number => {
    let ref = refs.get(key);
    if (ref === undefined) refs.set(key, ref = table.addRef(data));
    return ref;
  };

  const spool = new TarSpool(options.spoolFd);

  // Hard-link targets are looked up in the tree below (the reader's own check would keep a
  // path string per member: ~200 MB of a million-member layer).
  for await (
    const entry of readTar(drainOnCancel(stream), {
      hardlinkTargets: "any",
      onEnd: (blocks) => endMarkerBlocks = blocks,
      emptyInput: options.emptyInput,
    })
  ) {
    entries++;
    if (entries % 1024 === 0) options.onEntries?.(entries);
    tarEnd = Math.max(tarEnd, entry.dataOffset + Math.ceil(entry.storedSize / 512) * 512);
    if (overlay?.add(entry.path, entry.kind)) {
      const whiteout = parseWhiteout(entry.path);
      if (whiteout?.type === "whiteout") whiteoutMtimes.set(whiteout.target, entry.mtimeSec);
      continue;
    }
    if (entry.path === "") {
      if (entry.kind === "dir") {
        checkMemberFields(entry);
        setMemberAttributes(table, 0, entry, options, onSkippedXattr);
      }
      continue;
    }
    const [dir, name] = parentOf(entry.path);
    if (entry.kind === "hardlink") {
      const target = lookupPath(entry.linkname);
      if (target < 0 || isDir(target)) {
        throw new FormatError(
          `tar member "${entry.path}": hard link target "${entry.linkname}" ${
            target < 0 ? "missing (not earlier in the archive)" : "is a directory"
          }`,
          "a layer's hard links must point at files earlier in the same layer",
        );
      }
      setChild(dir, name, target);
      continue;
    }
    const kind = TAR_KIND[entry.kind];
    checkMemberFields(entry);
    if (kind === "dir") {
      const e = find(dir, name);
      const old = e < 0 ? -1 : table.entryInode[e];
      if (old >= 0 && isDir(old)) {
        // A directory over a directory keeps its entries: the same inode, new attributes.
        setMemberAttributes(table, old, entry, options, onSkippedXattr);
        impliedDirs.delete(old);
        continue;
      }
    }
    const node = table.addInode(kind, 0);
    setMemberAttributes(table, node, entry, options, onSkippedXattr);
    if (kind === "symlink") table.setTarget(node, encoder.encode(entry.linkname));
    if (kind === "chardev" || kind === "blockdev") {
      table.setRdev(node, entry.devMajor, entry.devMinor);
      if (overlay && kind === "chardev" && entry.devMajor === 0 && entry.devMinor === 0) {
        onWhiteoutLookalike(entry.path);
      }
    }
    if (kind === "file") {
      // Said before its data is spooled: past this the spool's file system refused it first
      // ("ftruncate (spool): File too large") on ext4, or the image was found too big after.
      if (!options.indexOnly && entry.size > MAX_FILE_BLOCKS * 4096) {
        throw new FormatError(
          `tar member "${entry.path}" is ${entry.size} bytes: more than an EROFS file of ` +
            `4096-byte blocks holds (${MAX_FILE_BLOCKS} blocks)`,
        );
      }
      fileBytes += entry.size;
      if (fileBytes > maxFileBytes) {
        throw new FormatError(
          `the layer's files hold more than ${maxFileBytes} bytes (at "${entry.path}"; a sparse ` +
            "file counts at its full size)",
          "the layer is larger than allowed (or a sparse-file bomb)",
        );
      }
      table.size.set(node, entry.size);
      if (entry.size > 0 && options.indexOnly) {
        if (entry.sparse) {
          throw new FormatError(
            `tar member "${entry.path}" is sparse: a tar index cannot point into it`,
            "convert the layer to EROFS (`erofs-oci convert`, or `erofs-oci build` without " +
              "--tar-index): its data is then copied, holes included",
          );
        }
        table.setData(node, refOf("tar", { kind: "tar", offset: 0 }), entry.dataOffset);
      } else if (entry.size > 0) {
        if (options.tarFd !== undefined && !entry.sparse) {
          const fd = options.tarFd;
          table.setData(node, refOf(fd, { kind: "fd", fd, offset: 0 }), entry.dataOffset);
        } else {
          const fd = options.spoolFd ?? -1;
          const offset = await spool.add(entry);
          table.setData(node, refOf(fd, { kind: "fd", fd, offset: 0 }), offset);
        }
      }
    }
    setChild(dir, name, node);
  }
  options.onEntries?.(entries);
  spool.finish();

  if (overlay) {
    const { devices, opaqueDirs, replacedDirs } = overlay.result();
    // Made afresh where the lower one was deleted (as umoci unpack makes it: 0755, root's), not
    // given the deleted one's metadata when stacked.
    for (const path of replacedDirs) {
      const node = lookupPath(path);
      if (!impliedDirs.delete(node)) continue;
      table.mtimeSec.set(node, whiteoutMtimes.get(path) ?? 0);
      table.mtimeNsec.set(node, 0);
    }
    for (const path of devices) {
      const [dir, name] = parentOf(path);
      const device = table.addInode("chardev", 0);
      impliedTime(device);
      setChild(dir, name, device);
    }
    for (const path of opaqueDirs) {
      let node = path === "" ? 0 : lookupPath(path);
      if (node < 0) {
        const [dir, name] = parentOf(path);
        node = newImpliedDir();
        setChild(dir, name, node);
      }
      if (isDir(node)) {
        table.setXattrs(
          node,
          new Map([...table.xattrsOf(node), [OVERLAY_OPAQUE_XATTR, OVERLAY_OPAQUE_VALUE]]),
        );
      }
    }
  }
  table.dropIndex();
  table.trim();
  return {
    root: rootNodeOf(table),
    entries,
    spooledBytes: spool.end,
    tarEndOffset: tarEnd,
    endMarkerBlocks,
  };
}

/**
 * The tar reader cancels its input after the end-of-archive marker; a decompressor still
 * producing the archive's trailing padding then fails on its closed output (an uncaught error
 * in node:zlib's web adapter). Reading the rest to the end instead keeps memory flat and ends
 * the input cleanly.
 */
function drainOnCancel(stream: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = stream.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    async cancel() {
      while (!(await reader.read()).done) { /* discard trailing bytes */ }
    },
  }, { highWaterMark: 0 });
}

/**
 * A layer's own character device 0:0 is what overlayfs takes for a whiteout: kept in this
 * image, it hides (not shows) in a mount or a merge of several layers, as with docker and
 * containerd. Said for the first five, so a user does not lose the file unknowingly.
 */
function whiteoutLookalikeWarner(): (path: string) => void {
  let seen = 0;
  return (path) => {
    seen++;
    if (seen <= 5) {
      warn(
        `tar member "${path}" is a character device 0:0, which overlayfs takes for a ` +
          "whiteout: hidden, not shown, where this layer is stacked on others (a mount of " +
          "several layers, convert, build IMAGE)",
      );
    }
    if (seen === 6) warn("more character devices 0:0 in this layer");
  };
}
