/**
 * Walks the EROFS directory tree of an image through a ranged `read` and collects the pages
 * holding its metadata (superblock, every inode with its xattrs and inline tail or chunk index,
 * every directory block), so a server can fetch them ahead of the kernel: the kernel reads
 * metadata one block at a time, each waiting for the previous, which over a registry costs a
 * round trip per block. The walk goes level by level (breadth first) and fetches each level's
 * missing pages with parallel, coalesced reads.
 *
 * It is an optimisation: a hostile or unusual image ends a branch (or the walk), never throws.
 * Layout facts: linux/fs/erofs/erofs_fs.h (`erofs_super_block`, `erofs_inode_compact`,
 * `erofs_inode_extended`, `erofs_dirent`), checked against /work/shared/fixtures/inspect_erofs.py.
 */
import { checkErofsSuperblock, EROFS_SUPER_END, type ErofsSuperblock } from "./superblock.ts";

/** Inode slots are 32 bytes (EROFS_ISLOTBITS = 5). */
const INODE_SLOT_BYTES = 32;
const COMPACT_INODE_BYTES = 32;
const EXTENDED_INODE_BYTES = 64;
/** sizeof(struct erofs_xattr_ibody_header); each further xattr slot is 4 bytes. */
const XATTR_IBODY_HEADER_BYTES = 12;
const XATTR_ENTRY_SLOT_BYTES = 4;
/** sizeof(struct erofs_dirent): le64 nid, le16 nameoff, u8 file_type, u8 reserved. */
const DIRENT_BYTES = 12;
/** i_format datalayouts (EROFS_INODE_*). */
const FLAT_PLAIN = 0;
const FLAT_INLINE = 2;
const CHUNK_BASED = 4;
/** i_u of a chunk-based inode: chunk bits mask and "has 8-byte chunk indexes". */
const CHUNK_FORMAT_BLKBITS_MASK = 0x1f;
const CHUNK_FORMAT_INDEXES = 0x20;
const CHUNK_INDEX_BYTES = 8;
const CHUNK_BLKADDR_BYTES = 4;
/** erofs_dirent.file_type of a directory (EROFS_FT_DIR). */
const FT_DIR = 2;
/** Nids with bit 63 live in the metabox inode (EROFS_DIRENT_NID_METABOX_BIT): not followed. */
const NID_METABOX_BIT = 1n << 63n;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const INCOMPAT_48BIT = 0x80;
/** The kernel reads the block device through its page cache: 4 KiB pages at least. */
const MIN_PAGE_BYTES = 4096;

export interface MetadataWalkOptions {
  /** Stop collecting past this many bytes of metadata pages. Default 64 MiB. */
  maxBytes?: number;
  /** Stop after this many directory entries. Default 4 Mi. */
  maxEntries?: number;
  /** Reads in flight at once. Default 8. */
  concurrency?: number;
  /** Pages closer than this are fetched in one read (the gap is read and dropped). 64 KiB. */
  gapBytes?: number;
  /** Largest single read. Default 4 MiB. */
  maxReadBytes?: number;
  /**
   * Also fetch the inodes of non-directories (what `stat`, `ls -l`, `tar` read; a plain `find`
   * reads only directories, thanks to d_type). Default true.
   */
  fileInodes?: boolean;
  /** Record every path found (tests); off by default to save memory. */
  collectPaths?: boolean;
  /** Pages a previous walk of the same image fetched (same page size): not fetched again. */
  knownPages?: Map<number, Uint8Array>;
  /** Called with each page (offset, bytes) as soon as it is fetched. */
  onPage?: (offset: number, bytes: Uint8Array) => void;
  signal?: AbortSignal;
}

export interface MetadataWalkResult {
  /** Page size used: max(block size, 4096). */
  pageBytes: number;
  /** Metadata pages by page index (offset = index * pageBytes). */
  pages: Map<number, Uint8Array>;
  pagesBytes: number;
  directories: number;
  entries: number;
  /** Reads made, the bytes they returned, BFS levels walked. */
  reads: number;
  bytesRead: number;
  levels: number;
  /** Paths relative to the root ("" is the root), when `collectPaths`. */
  paths?: string[];
  /** Why the walk stopped before the end of the tree, or undefined when it covered it all. */
  incomplete?: string;
  /** Branches dropped (bad offsets, failed reads, unknown layouts). */
  skipped: number;
}

export type ReadRange = (offset: number, length: number, signal?: AbortSignal) => Promise<
  Uint8Array
>;

interface InodeInfo {
  offset: number;
  isDir: boolean;
  layout: number;
  size: number;
  rawBlockAddress: number;
  /** Byte just past the inode and its inline xattrs. */
  bodyEnd: number;
}

interface Pending {
  nid: number;
  path: string;
}

/**
 * Walks the tree of an EROFS image of `sizeBytes` bytes readable through `read`.
 * Never rejects (unless `read` throws synchronously in a way no promise catches).
 *
 * @example
 * const walk = await walkErofsMetadata((o, l) => source.read(o, l), source.size);
 * // walk.pages: the pages a cold `find` reads
 */
export async function walkErofsMetadata(
  read: ReadRange,
  sizeBytes: number,
  options: MetadataWalkOptions = {},
): Promise<MetadataWalkResult> {
  const walker = new Walker(read, sizeBytes, options);
  try {
    await walker.run();
  } catch (error) {
    walker.result.incomplete = `walk failed: ${(error as Error)?.message ?? error}`;
  }
  return walker.result;
}

class Walker {
  readonly result: MetadataWalkResult;
  readonly #read: ReadRange;
  readonly #size: number;
  readonly #maxBytes: number;
  readonly #maxEntries: number;
  readonly #concurrency: number;
  readonly #gapBytes: number;
  readonly #maxReadBytes: number;
  readonly #options: MetadataWalkOptions;
  /** Pages a read failed for: not asked again. */
  readonly #failed = new Set<number>();
  readonly #visited = new Set<number>();
  #sb?: ErofsSuperblock;
  #blockBytes = MIN_PAGE_BYTES;

  constructor(read: ReadRange, sizeBytes: number, options: MetadataWalkOptions) {
    this.#read = read;
    this.#size = sizeBytes;
    this.#options = options;
    this.#maxBytes = options.maxBytes ?? 64 << 20;
    this.#maxEntries = options.maxEntries ?? 4 << 20;
    this.#concurrency = Math.max(1, options.concurrency ?? 8);
    this.#gapBytes = options.gapBytes ?? 64 << 10;
    this.#maxReadBytes = options.maxReadBytes ?? 4 << 20;
    this.result = {
      pageBytes: MIN_PAGE_BYTES,
      pages: new Map(options.knownPages ?? []),
      pagesBytes: [...(options.knownPages?.values() ?? [])].reduce((n, p) => n + p.length, 0),
      directories: 0,
      entries: 0,
      reads: 0,
      bytesRead: 0,
      levels: 0,
      skipped: 0,
      paths: options.collectPaths ? [] : undefined,
    };
  }

  get #pageBytes(): number {
    return this.result.pageBytes;
  }

  async run(): Promise<void> {
    if (this.#size < EROFS_SUPER_END) {
      this.result.incomplete = "image smaller than a superblock";
      return;
    }
    await this.#fetch(this.#pagesOf(0, EROFS_SUPER_END));
    const head = this.#bytes(0, EROFS_SUPER_END);
    if (!head) {
      this.result.incomplete = "superblock unreadable";
      return;
    }
    const sb = checkErofsSuperblock(head);
    this.#sb = sb;
    this.#blockBytes = sb.blockSizeBytes;
    if (sb.blockSizeBytes > MIN_PAGE_BYTES) {
      // Pages become blocks. Known pages of an earlier walk are keyed by block already.
      const page0 = this.result.pages.get(0);
      const wholeBlock = Math.min(this.#size, sb.blockSizeBytes);
      if (!page0 || page0.length < wholeBlock) {
        this.result.pages.clear();
        this.result.pagesBytes = 0;
      }
      this.result.pageBytes = sb.blockSizeBytes;
      await this.#fetch([0]);
    }

    let level: Pending[] = [{ nid: sb.rootNid, path: "" }];
    this.result.paths?.push("");
    this.#visited.add(sb.rootNid);
    while (level.length) {
      if (this.#options.signal?.aborted) {
        this.result.incomplete = "aborted";
        return;
      }
      this.result.levels++;
      // 1. Inode pages (64 bytes cover a compact or extended inode header).
      await this.#fetch(
        level.flatMap((p) => this.#pagesOf(this.#inodeOffset(p.nid), EXTENDED_INODE_BYTES)),
      );
      const inodes = level.map((p) => this.#parseInode(p.nid));
      // 2. What follows the header: xattrs, inline tail, chunk indexes; and plain dir blocks.
      const more: number[] = [];
      inodes.forEach((inode) => {
        if (inode) more.push(...this.#extentPages(inode));
      });
      await this.#fetch(more);
      // 3. Directory entries: the next level.
      const next: Pending[] = [];
      for (const [i, inode] of inodes.entries()) {
        if (!inode) continue;
        if (!inode.isDir) continue;
        this.result.directories++;
        for (const entry of this.#dirents(inode)) {
          if (entry.name === "." || entry.name === "..") continue;
          if (this.#options.fileInodes === false && entry.fileType !== FT_DIR) continue;
          this.result.entries++;
          if (this.result.entries > this.#maxEntries) {
            this.result.incomplete = `more than ${this.#maxEntries} entries`;
            return;
          }
          const path = level[i].path ? `${level[i].path}/${entry.name}` : entry.name;
          this.result.paths?.push(path);
          if (this.#visited.has(entry.nid)) continue; // hard links, hostile cycles
          this.#visited.add(entry.nid);
          next.push({ nid: entry.nid, path });
        }
      }
      if (this.result.pagesBytes >= this.#maxBytes) {
        this.result.incomplete = `metadata above ${this.#maxBytes} bytes`;
        return;
      }
      level = next;
    }
  }

  #inodeOffset(nid: number): number {
    return this.#sb!.metaBlockAddress * this.#blockBytes + nid * INODE_SLOT_BYTES;
  }

  #parseInode(nid: number): InodeInfo | undefined {
    const offset = this.#inodeOffset(nid);
    const head = this.#bytes(offset, COMPACT_INODE_BYTES);
    if (!head) return this.#skip();
    const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
    const format = view.getUint16(0, true);
    const extended = (format & 1) === 1;
    const layout = (format >> 1) & 7;
    const xattrCount = view.getUint16(2, true);
    const mode = view.getUint16(4, true);
    const startHi = view.getUint16(6, true);
    let size = view.getUint32(8, true);
    const iu = view.getUint32(16, true);
    let inodeBytes = COMPACT_INODE_BYTES;
    if (extended) {
      const ext = this.#bytes(offset, EXTENDED_INODE_BYTES);
      if (!ext) return this.#skip();
      const sizeBig = new DataView(ext.buffer, ext.byteOffset, ext.byteLength).getBigUint64(
        8,
        true,
      );
      if (sizeBig > BigInt(Number.MAX_SAFE_INTEGER)) return this.#skip();
      size = Number(sizeBig);
      inodeBytes = EXTENDED_INODE_BYTES;
    }
    const xattrBytes = xattrCount
      ? XATTR_IBODY_HEADER_BYTES + (xattrCount - 1) * XATTR_ENTRY_SLOT_BYTES
      : 0;
    const is48bit = (this.#sb!.featureIncompat & INCOMPAT_48BIT) !== 0;
    return {
      offset,
      isDir: (mode & S_IFMT) === S_IFDIR,
      layout,
      size,
      rawBlockAddress: is48bit ? iu + startHi * 2 ** 32 : iu,
      bodyEnd: offset + inodeBytes + xattrBytes,
    };
  }

  /** Pages past the 64-byte header: xattrs, inline tail, chunk indexes, plain dir blocks. */
  #extentPages(inode: InodeInfo): number[] {
    const bs = this.#blockBytes;
    let end = inode.bodyEnd;
    const pages: number[] = [];
    if (inode.layout === FLAT_INLINE) {
      const blocks = Math.ceil(inode.size / bs);
      const tail = inode.size - Math.max(0, blocks - 1) * bs;
      end += tail;
      if (inode.isDir && blocks > 1) {
        pages.push(...this.#pagesOf(inode.rawBlockAddress * bs, (blocks - 1) * bs));
      }
    } else if (inode.layout === FLAT_PLAIN) {
      if (inode.isDir && inode.size > 0) {
        pages.push(...this.#pagesOf(inode.rawBlockAddress * bs, inode.size));
      }
    } else if (inode.layout === CHUNK_BASED && !inode.isDir) {
      const chunkFormat = inode.rawBlockAddress & 0xffff;
      const chunkBytes = bs * 2 ** (chunkFormat & CHUNK_FORMAT_BLKBITS_MASK);
      const chunks = Math.ceil(inode.size / chunkBytes);
      if (chunkFormat & CHUNK_FORMAT_INDEXES) {
        end = Math.ceil(end / CHUNK_INDEX_BYTES) * CHUNK_INDEX_BYTES + chunks * CHUNK_INDEX_BYTES;
      } else {
        end += chunks * CHUNK_BLKADDR_BYTES;
      }
    }
    // A hostile size must not make one inode claim the budget.
    if (end - inode.offset > this.#maxBytes) return this.#skip() ?? [];
    pages.push(...this.#pagesOf(inode.offset, end - inode.offset));
    return pages;
  }

  /** Entries of a directory whose pages are fetched; a bad block ends that directory. */
  *#dirents(inode: InodeInfo): Generator<{ nid: number; name: string; fileType: number }> {
    const bs = this.#blockBytes;
    if (inode.layout !== FLAT_PLAIN && inode.layout !== FLAT_INLINE) return this.#skip();
    const blocks = Math.ceil(inode.size / bs);
    const decoder = new TextDecoder();
    for (let b = 0; b < blocks; b++) {
      const length = Math.min(bs, inode.size - b * bs);
      const inline = inode.layout === FLAT_INLINE && b === blocks - 1;
      const offset = inline ? inode.bodyEnd : (inode.rawBlockAddress + b) * bs;
      const block = this.#bytes(offset, length);
      if (!block || length < DIRENT_BYTES) return this.#skip();
      const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
      const firstNameOffset = view.getUint16(8, true);
      if (
        firstNameOffset < DIRENT_BYTES || firstNameOffset > length ||
        firstNameOffset % DIRENT_BYTES
      ) return this.#skip();
      const count = firstNameOffset / DIRENT_BYTES;
      for (let k = 0; k < count; k++) {
        const nid = view.getBigUint64(k * DIRENT_BYTES, true);
        const nameStart = view.getUint16(k * DIRENT_BYTES + 8, true);
        const nameEnd = k + 1 < count ? view.getUint16((k + 1) * DIRENT_BYTES + 8, true) : length;
        if (nameStart > nameEnd || nameEnd > length) return this.#skip();
        if (nid & NID_METABOX_BIT || nid > BigInt(Number.MAX_SAFE_INTEGER)) {
          this.#skip();
          continue;
        }
        let name = block.subarray(nameStart, nameEnd);
        const nul = name.indexOf(0);
        if (nul >= 0) name = name.subarray(0, nul);
        yield {
          nid: Number(nid),
          name: decoder.decode(name),
          fileType: view.getUint8(k * DIRENT_BYTES + 10),
        };
      }
    }
  }

  #skip(): undefined {
    this.result.skipped++;
    return undefined;
  }

  /** Page indexes covering [offset, offset + length) inside the image; none if outside. */
  #pagesOf(offset: number, length: number): number[] {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 ||
      length <= 0 || offset + length > this.#size
    ) {
      this.#skip();
      return [];
    }
    const first = Math.floor(offset / this.#pageBytes);
    const last = Math.floor((offset + length - 1) / this.#pageBytes);
    const out: number[] = [];
    for (let p = first; p <= last; p++) out.push(p);
    return out;
  }

  /** Bytes at [offset, offset + length) when every page is there. */
  #bytes(offset: number, length: number): Uint8Array | undefined {
    if (offset < 0 || offset + length > this.#size) return undefined;
    return this.#bytesRaw(offset, length);
  }

  #bytesRaw(offset: number, length: number): Uint8Array | undefined {
    const pb = this.#pageBytes;
    const first = Math.floor(offset / pb);
    const last = Math.floor((offset + length - 1) / pb);
    if (first === last) {
      const page = this.result.pages.get(first);
      const start = offset - first * pb;
      if (!page || page.length < start + length) return undefined;
      return page.subarray(start, start + length);
    }
    const out = new Uint8Array(length);
    for (let p = first; p <= last; p++) {
      const page = this.result.pages.get(p);
      if (!page) return undefined;
      const from = Math.max(offset, p * pb);
      const to = Math.min(offset + length, p * pb + page.length);
      if (to < Math.min(offset + length, (p + 1) * pb)) return undefined;
      out.set(page.subarray(from - p * pb, to - p * pb), from - offset);
    }
    return out;
  }

  #store(index: number, bytes: Uint8Array): void {
    if (this.result.pages.has(index)) return;
    this.result.pages.set(index, bytes);
    this.result.pagesBytes += bytes.length;
    this.#options.onPage?.(index * this.#pageBytes, bytes);
  }

  /** Fetches the missing pages of `wanted` in coalesced reads, `concurrency` at a time. */
  async #fetch(wanted: number[]): Promise<void> {
    const missing = [...new Set(wanted)]
      .filter((p) => !this.result.pages.has(p) && !this.#failed.has(p))
      .sort((a, b) => a - b);
    if (!missing.length) return;
    const pb = this.#pageBytes;
    const gapPages = Math.floor(this.#gapBytes / pb);
    const maxPages = Math.max(1, Math.floor(this.#maxReadBytes / pb));
    const runs: number[][] = [];
    for (const page of missing) {
      const run = runs.at(-1);
      if (run && page - run.at(-1)! - 1 <= gapPages && page - run[0] < maxPages) run.push(page);
      else runs.push([page]);
    }
    let next = 0;
    const worker = async () => {
      while (next < runs.length) {
        if (this.#options.signal?.aborted) return;
        if (this.result.pagesBytes >= this.#maxBytes) return;
        const run = runs[next++];
        const start = run[0] * pb;
        const end = Math.min(this.#size, (run.at(-1)! + 1) * pb);
        try {
          const bytes = await this.#read(start, end - start, this.#options.signal);
          this.result.reads++;
          this.result.bytesRead += bytes.length;
          if (bytes.length !== end - start) throw new Error("short read");
          for (const page of run) {
            const from = page * pb - start;
            // A copy: the read's buffer (gaps included) must not stay alive for one page.
            this.#store(page, bytes.slice(from, Math.min(from + pb, bytes.length)));
          }
        } catch {
          for (const page of run) this.#failed.add(page);
          this.#skip();
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.#concurrency, runs.length) }, worker));
  }
}
