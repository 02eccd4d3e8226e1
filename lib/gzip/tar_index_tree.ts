/**
 * Reads a tar-index meta image (`mkfs.erofs --tar=i` or `erofs-oci index`: 512-byte blocks,
 * metadata only, every non-empty regular file one or more chunks of device 1 = the tar) back
 * into the writer's tree (`BuildNode`, files as `{kind: "tar", offset}`), so it can be written
 * again with another block size (./aligned_tar.ts).
 *
 * The image is hostile input held whole in memory: every offset is checked against it, every
 * directory is entered once (a directory reachable twice is an error, not a loop), and the
 * nodes made are bounded by the image's size (an inode is 32 bytes at least, a dirent 12).
 * Anything this reader does not expect in a tar-index image (compressed layouts, file data in
 * the meta image, long xattr prefixes, holes, chunks not contiguous in the tar) is a
 * FormatError naming the path, never a guess.
 * On-disk layout: linux/fs/erofs/erofs_fs.h; tar-index facts: ../shared/fixtures/README.md.
 */
import { FormatError } from "../errors.ts";
import { checkErofsSuperblock, EROFS_SUPER_OFFSET } from "../erofs/superblock.ts";
import {
  CHUNK_BASED,
  CHUNK_FORMAT_BLKBITS_MASK,
  CHUNK_FORMAT_INDEXES,
  CHUNK_INDEX_BYTES,
  direntsOfBlock,
  FLAT_INLINE,
  FLAT_PLAIN,
  INCOMPAT_48BIT,
  INODE_SLOT_BYTES,
  parseInode,
  XATTR_IBODY_HEADER_BYTES,
} from "../erofs/inode_layout.ts";
import { xattrPrefixOf } from "../erofs/writer/xattrs.ts";
import {
  type BuildNode,
  checkEntryName,
  kindOfMode,
  newNode,
  NO_XATTRS,
  type NodeKind,
} from "../erofs/writer/tree.ts";
import { tarIndexLayout } from "./hybrid_tar.ts";

/** EROFS_NULL_ADDR: a chunk with no data (a hole). */
const NULL_BLOCK = 0xffffffff;
/** Incompat features a tar-index image may carry: chunked files, the device table, 48bit. */
const ALLOWED_INCOMPAT = 0x4 | 0x8 | INCOMPAT_48BIT;

export interface TarIndexTree {
  root: BuildNode;
  buildTimeSec: number;
  buildTimeNsec: number;
  uuid: Uint8Array;
  volumeName: string;
  /** Bytes of the tar the image refers to (its device slot's blocks × 512). */
  tarBytes: number;
  /** Regular files with data (hard links once). */
  dataFiles: number;
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/** The tree of tar-index image `meta`; FormatError for anything malformed or unexpected. */
export function readTarIndexTree(meta: Uint8Array, what = "tar index"): TarIndexTree {
  const layout = tarIndexLayout(meta, what);
  const sb = checkErofsSuperblock(meta, what);
  if (sb.featureIncompat & ~ALLOWED_INCOMPAT) {
    throw new FormatError(
      `${what} has EROFS features a tar-index image does not use (${sb.features.join(", ")})`,
    );
  }
  const view = new DataView(meta.buffer, meta.byteOffset, meta.byteLength);
  const sbView = new DataView(meta.buffer, meta.byteOffset + EROFS_SUPER_OFFSET, 128);
  const reader = new MetaReader(meta, view, {
    blockBytes: sb.blockSizeBytes,
    metaBase: sb.metaBlockAddress * sb.blockSizeBytes,
    xattrBase: sb.xattrBlockAddress * sb.blockSizeBytes,
    is48bit: (sb.featureIncompat & INCOMPAT_48BIT) !== 0,
    tarBytes: layout.tarBytes,
    what,
  });
  const root = reader.readTree(sb.rootNid);
  const buildTime = sbView.getBigUint64(24, true);
  if (buildTime > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new FormatError(`${what}: build time out of range`);
  }
  return {
    root,
    buildTimeSec: Number(buildTime),
    buildTimeNsec: sbView.getUint32(32, true),
    uuid: meta.slice(EROFS_SUPER_OFFSET + 48, EROFS_SUPER_OFFSET + 64),
    volumeName: sb.volumeName,
    tarBytes: layout.tarBytes,
    dataFiles: reader.dataFiles,
  };
}

interface ReaderFacts {
  blockBytes: number;
  metaBase: number;
  xattrBase: number;
  is48bit: boolean;
  tarBytes: number;
  what: string;
}

interface RawInode {
  kind: NodeKind;
  layout: number;
  sizeBytes: number;
  /** i_u: start block, rdev or chunk format. */
  u: number;
  offset: number;
  bodyEnd: number;
  node: BuildNode;
}

class MetaReader {
  dataFiles = 0;
  readonly #meta: Uint8Array;
  readonly #view: DataView;
  readonly #f: ReaderFacts;
  /** Non-directories by nid: hard links are one node reached twice. */
  readonly #nodes = new Map<number, BuildNode>();
  readonly #dirsSeen = new Set<number>();
  /**
   * Bytes of directory and symlink contents, inline xattr bodies and chunk indexes read so far.
   * In a real image they are disjoint parts of it; hostile inodes sharing one region (each
   * directory's blocks, or each inode's xattr body starting inside the next inode) would
   * otherwise make the entries, xattr values and chunks read grow with the square of the
   * image's size: 176 KB of crafted image held 134 MB of xattr values.
   */
  #claimedBytes = 0;
  /** Shared xattrs by id: parsed once, their value shared by every inode naming them. */
  readonly #sharedXattrs = new Map<number, [string, Uint8Array]>();

  constructor(meta: Uint8Array, view: DataView, facts: ReaderFacts) {
    this.#meta = meta;
    this.#view = view;
    this.#f = facts;
  }

  readTree(rootNid: number): BuildNode {
    const root = this.#inode(rootNid, "/");
    if (root.kind !== "dir") throw this.#error("/", "the root is not a directory");
    this.#dirsSeen.add(rootNid);
    // Breadth first with an explicit queue: a hostile image can nest directories very deep.
    const queue: { inode: RawInode; nid: number; path: string }[] = [
      { inode: root, nid: rootNid, path: "" },
    ];
    for (let head = 0; head < queue.length; head++) {
      const { inode: dir, nid: dirNid, path } = queue[head];
      const data = this.#contents(dir, path || "/");
      const children = dir.node.children!;
      for (let at = 0; at < data.length; at += this.#f.blockBytes) {
        const block = data.subarray(at, Math.min(data.length, at + this.#f.blockBytes));
        for (const entry of direntsOfBlock(block)) {
          if (entry === "bad" || entry === "unfollowed") {
            throw this.#error(path || "/", "a directory block is malformed");
          }
          let name: string;
          try {
            name = decoder.decode(entry.name);
          } catch {
            throw this.#error(path || "/", "a name is not UTF-8");
          }
          if (name === "." || name === "..") continue;
          const childPath = `${path}/${name}`;
          checkEntryName(name, `${this.#f.what} ${path || "/"}`);
          if (children.has(name)) throw this.#error(childPath, "the name appears twice");
          if (entry.nid === dirNid) throw this.#error(childPath, "a directory contains itself");
          const known = this.#nodes.get(entry.nid);
          if (known) {
            children.set(name, known);
            continue;
          }
          const child = this.#inode(entry.nid, childPath);
          children.set(name, child.node);
          if (child.kind === "dir") {
            if (this.#dirsSeen.has(entry.nid)) {
              throw this.#error(childPath, "a directory is reachable twice");
            }
            this.#dirsSeen.add(entry.nid);
            queue.push({ inode: child, nid: entry.nid, path: childPath });
          } else {
            this.#nodes.set(entry.nid, child.node);
          }
        }
      }
    }
    return root.node;
  }

  #error(path: string, problem: string): FormatError {
    return new FormatError(
      `${this.#f.what} is malformed at ${JSON.stringify(path)}: ${problem}`,
      "the index does not belong to this layer or was damaged; make it again with `erofs-oci index`",
    );
  }

  /** Counts `bytes` of the image read as `what` for one inode; all together fit in it. */
  #claim(bytes: number, path: string, what: string): void {
    this.#claimedBytes += bytes;
    if (this.#claimedBytes > this.#meta.length) {
      throw this.#error(
        path,
        `${what} of its inodes exceed the ${this.#meta.length}-byte image (they overlap)`,
      );
    }
  }

  #bytes(offset: number, length: number, path: string): Uint8Array {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.#meta.length) {
      throw this.#error(path, `${length} bytes at ${offset} lie outside the image`);
    }
    return this.#meta.subarray(offset, offset + length);
  }

  #inode(nid: number, path: string): RawInode {
    const offset = this.#f.metaBase + nid * INODE_SLOT_BYTES;
    const info = parseInode(
      (o, l) => {
        return o >= 0 && o + l <= this.#meta.length ? this.#meta.subarray(o, o + l) : undefined;
      },
      offset,
      this.#f.is48bit,
    );
    if (!info) throw this.#error(path, `inode ${nid} lies outside the image`);
    const v = this.#view;
    const format = v.getUint16(offset, true);
    const extended = (format & 1) === 1;
    const mode = v.getUint16(offset + 4, true);
    const kind = kindOfMode(mode);
    if (!kind) throw this.#error(path, `unknown file type in mode 0${mode.toString(8)}`);
    if (format >> 4) throw this.#error(path, "unknown inode format bits");
    const node = newNode(kind, { mode: mode & 0o7777 });
    if (extended) {
      node.uid = v.getUint32(offset + 24, true);
      node.gid = v.getUint32(offset + 28, true);
      const mtime = v.getBigInt64(offset + 32, true);
      if (mtime > BigInt(Number.MAX_SAFE_INTEGER) || mtime < -BigInt(Number.MAX_SAFE_INTEGER)) {
        throw this.#error(path, "mtime out of range");
      }
      node.mtimeSec = Number(mtime);
      node.mtimeNsec = v.getUint32(offset + 40, true);
    } else {
      node.uid = v.getUint16(offset + 24, true);
      node.gid = v.getUint16(offset + 26, true);
      // Compact inodes carry the superblock's build time.
      const sbView = new DataView(this.#meta.buffer, this.#meta.byteOffset + EROFS_SUPER_OFFSET);
      node.mtimeSec = Number(sbView.getBigUint64(24, true));
      node.mtimeNsec = sbView.getUint32(32, true);
    }
    if (node.mtimeNsec > 999_999_999) throw this.#error(path, "mtime nanoseconds out of range");
    const u = v.getUint32(offset + 16, true);
    const raw: RawInode = {
      kind,
      layout: info.layout,
      sizeBytes: info.size,
      u,
      offset,
      bodyEnd: info.bodyEnd,
      node,
    };
    const xattrCount = v.getUint16(offset + 2, true);
    if (xattrCount > 0) node.xattrs = this.#xattrs(offset + (extended ? 64 : 32), xattrCount, path);
    if (kind === "chardev" || kind === "blockdev") {
      // new_decode_dev()
      node.rdevMajor = (u & 0xfff00) >>> 8;
      node.rdevMinor = (u & 0xff) | ((u >>> 12) & 0xfff00);
    } else if (kind === "symlink") {
      node.target = this.#contents(raw, path).slice();
      if (node.target.length === 0) throw this.#error(path, "an empty symlink target");
    } else if (kind === "file") {
      node.sizeBytes = info.size;
      if (info.size > 0) {
        node.data = { kind: "tar", offset: this.#fileTarOffset(raw, path) };
        this.dataFiles++;
      }
    }
    return raw;
  }

  /** Inline and shared xattrs of the inode whose xattr body starts at `at`. */
  #xattrs(at: number, count: number, path: string): Map<string, Uint8Array> {
    const bodyBytes = XATTR_IBODY_HEADER_BYTES + (count - 1) * 4;
    const body = this.#bytes(at, bodyBytes, path);
    this.#claim(bodyBytes, path, "inline xattrs");
    const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    const sharedCount = view.getUint8(4);
    const xattrs = new Map<string, Uint8Array>();
    let p = XATTR_IBODY_HEADER_BYTES;
    if (p + sharedCount * 4 > bodyBytes) throw this.#error(path, "too many shared xattrs");
    for (let i = 0; i < sharedCount; i++, p += 4) {
      const id = view.getUint32(p, true);
      let shared = this.#sharedXattrs.get(id);
      if (!shared) {
        const entry = new Map<string, Uint8Array>();
        // Counted like every other part of the image: ids whose entries overlap (each a
        // value of up to 64 KiB, 4 bytes apart) would otherwise copy far more than the image.
        this.#claim(
          this.#xattrEntry(this.#f.xattrBase + id * 4, path, entry),
          path,
          "shared xattrs",
        );
        shared = [...entry][0];
        this.#sharedXattrs.set(id, shared);
      }
      xattrs.set(shared[0], shared[1]);
    }
    while (p < bodyBytes) {
      p += this.#xattrEntry(at + p, path, xattrs, at + bodyBytes);
    }
    if (p !== bodyBytes) throw this.#error(path, "xattr entries overrun their body");
    return xattrs.size ? xattrs : NO_XATTRS as Map<string, Uint8Array>;
  }

  /** One entry at `at` into `into`; returns its padded length. */
  #xattrEntry(at: number, path: string, into: Map<string, Uint8Array>, end?: number): number {
    const head = this.#bytes(at, 4, path);
    const nameBytes = head[0], index = head[1];
    const valueBytes = head[2] | (head[3] << 8);
    const total = (4 + nameBytes + valueBytes + 3) & ~3;
    if (end !== undefined && at + total > end) throw this.#error(path, "an xattr overruns");
    const prefix = xattrPrefixOf(index);
    if (prefix === undefined) {
      throw this.#error(path, `xattr name index ${index} (long prefixes are not supported)`);
    }
    const body = this.#bytes(at + 4, nameBytes + valueBytes, path);
    let suffix: string;
    try {
      suffix = decoder.decode(body.subarray(0, nameBytes));
    } catch {
      throw this.#error(path, "an xattr name is not UTF-8");
    }
    const exact = index === 2 || index === 3;
    if (exact ? nameBytes !== 0 : nameBytes === 0) throw this.#error(path, "a bad xattr name");
    into.set(prefix + suffix, body.slice(nameBytes));
    return total;
  }

  /** Bytes of a directory or symlink, all of which live in the meta image. */
  #contents(inode: RawInode, path: string): Uint8Array {
    const size = inode.sizeBytes;
    const bs = this.#f.blockBytes;
    if (size === 0) return new Uint8Array();
    this.#claim(size, path, "directory and symlink contents");
    if (inode.layout === FLAT_PLAIN) return this.#bytes(inode.u * bs, size, path);
    if (inode.layout !== FLAT_INLINE) {
      throw this.#error(path, `data layout ${inode.layout} for a ${inode.kind}`);
    }
    const fullBlocks = Math.ceil(size / bs) - 1;
    const tailBytes = size - fullBlocks * bs;
    const tail = this.#bytes(inode.bodyEnd, tailBytes, path);
    if (fullBlocks === 0) return tail;
    const out = new Uint8Array(size);
    out.set(this.#bytes(inode.u * bs, fullBlocks * bs, path));
    out.set(tail, fullBlocks * bs);
    return out;
  }

  /**
   * Tar offset of a regular file's data: its chunks must all be on device 1 and follow one
   * another in the tar (so the file is one range of it) and end within the tar.
   */
  #fileTarOffset(inode: RawInode, path: string): number {
    if (inode.layout !== CHUNK_BASED) {
      throw this.#error(path, `a file with data layout ${inode.layout}, not chunks of the tar`);
    }
    const format = inode.u & 0xffff;
    if (!(format & CHUNK_FORMAT_INDEXES)) {
      throw this.#error(path, "a file with block-map chunks (no device index)");
    }
    const bs = this.#f.blockBytes;
    const chunkBits = Math.log2(bs) + (format & CHUNK_FORMAT_BLKBITS_MASK);
    if (chunkBits > 52) throw this.#error(path, "chunk size out of range");
    const chunkBytes = 2 ** chunkBits;
    const chunks = Math.ceil(inode.sizeBytes / chunkBytes);
    const indexAt = Math.ceil(inode.bodyEnd / CHUNK_INDEX_BYTES) * CHUNK_INDEX_BYTES;
    const index = this.#bytes(indexAt, chunks * CHUNK_INDEX_BYTES, path);
    this.#claim(index.length, path, "chunk indexes");
    const view = new DataView(index.buffer, index.byteOffset, index.byteLength);
    let start = 0;
    for (let k = 0; k < chunks; k++) {
      const hi = this.#f.is48bit ? view.getUint16(k * 8, true) : 0;
      const device = view.getUint16(k * 8 + 2, true);
      const lo = view.getUint32(k * 8 + 4, true);
      if (lo === NULL_BLOCK && hi === 0) throw this.#error(path, "a file with a hole");
      if (device !== 1) throw this.#error(path, `a chunk on device ${device}, not the tar`);
      const at = (hi * 2 ** 32 + lo) * bs;
      if (k === 0) start = at;
      else if (at !== start + k * chunkBytes) {
        throw this.#error(path, "chunks that are not contiguous in the tar");
      }
    }
    if (start + inode.sizeBytes > this.#f.tarBytes) {
      throw this.#error(
        path,
        `data at tar offset ${start} + ${inode.sizeBytes} bytes past the tar's ${this.#f.tarBytes}`,
      );
    }
    return start;
  }
}
