/**
 * Walks the EROFS directory tree of an image through a ranged `read` and collects the pages
 * holding its metadata (superblock, every inode with its xattrs and inline tail or chunk index,
 * every directory block), so a server can fetch them ahead of the kernel: the kernel reads
 * metadata one block at a time, each waiting for the previous, which over a registry costs a
 * round trip per block. The walk goes level by level (breadth first) and fetches each level's
 * missing pages with parallel, coalesced reads.
 *
 * It is an optimisation: a hostile or unusual image ends a branch (or the walk). Everything it
 * keeps is bounded whatever the image claims: pages held (`maxBytes`, counted per page), bytes
 * read, entries queued and dirents scanned; a directory larger than the budget is skipped.
 * The only rejection is the FormatError of an image that is not EROFS.
 * On-disk layout: ./inode_layout.ts; pages and the fetch budget: ./metadata_pages.ts.
 */
import { eventLoopTurn } from "../event_loop.ts";
import { checkErofsSuperblock, EROFS_SUPER_END, type ErofsSuperblock } from "./superblock.ts";
import {
  MetadataPages,
  type PageBudget,
  type PageRange,
  type ReadRange,
} from "./metadata_pages.ts";
import {
  type Dirent,
  direntsOfBlock,
  EXTENDED_INODE_BYTES,
  extentSpans,
  FLAT_INLINE,
  FLAT_PLAIN,
  FT_DIR,
  INCOMPAT_48BIT,
  INODE_SLOT_BYTES,
  type InodeInfo,
  parseInode,
} from "./inode_layout.ts";

export type { ReadRange } from "./metadata_pages.ts";

/** The kernel reads the block device through its page cache: 4 KiB pages at least. */
const MIN_PAGE_BYTES = 4096;

/**
 * First speculative read: the whole directory part of an `erofs-oci build` image of ~9k entries
 * is 0.3 MB, so one read covers it; on images whose metadata is spread (mkfs.erofs) it costs
 * the same one request, just longer, and the windows stop there.
 */
const DEFAULT_READ_AHEAD_BYTES = 1 << 20;

/** Dirents scanned between two yields to the event loop (the server also serves the kernel). */
const YIELD_EVERY_DIRENTS = 1 << 16;

export interface MetadataWalkOptions {
  /**
   * Hard bound of the metadata pages held, counted per page (a page counts whole even when it
   * is the short last one). Default 64 MiB.
   */
  maxBytes?: number;
  /** Bytes all reads may return, gaps included. Default 4 × maxBytes. */
  maxFetchBytes?: number;
  /**
   * Stop after this many directory entries (each queued one costs memory). Default maxBytes / 32
   * (one inode slot each), within 4 Ki..1 Mi.
   */
  maxEntries?: number;
  /** Stop after scanning this many dirents (CPU bound: hostile dirs can share blocks). 8 Mi. */
  maxDirentsScanned?: number;
  /** Reads in flight at once. Default 8. */
  concurrency?: number;
  /** Pages closer than this are fetched in one read (the gap is read and dropped). 64 KiB. */
  gapBytes?: number;
  /** Largest single read. Default 4 MiB. */
  maxReadBytes?: number;
  /**
   * The first read takes this many bytes from the image start (0: just the superblock page);
   * while such windows turn out to be mostly metadata, the next, doubled, follows. Default 1 MiB.
   */
  readAheadBytes?: number;
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
  /** Dirents looked at (".", "..", skipped files included). */
  direntsScanned: number;
  /** Reads made, the bytes they returned, BFS levels walked. */
  reads: number;
  bytesRead: number;
  levels: number;
  /** Paths relative to the root ("" is the root), when `collectPaths`. */
  paths?: string[];
  /** Why the walk stopped before the end of the tree, or undefined when it covered it all. */
  incomplete?: string;
  /** Branches dropped (bad offsets, failed reads, unknown layouts, over-budget directories). */
  skipped: number;
}

interface Pending {
  nid: number;
  /** Only with `collectPaths`: paths of a deep hostile tree would cost memory. */
  path?: string;
}

/**
 * Walks the tree of an EROFS image of `sizeBytes` bytes readable through `read`. Failed reads
 * and hostile metadata end branches; rejects only with the FormatError of a bad superblock.
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
  await walker.run();
  return walker.finish();
}

class Walker {
  readonly result: MetadataWalkResult;
  readonly #size: number;
  readonly #maxBytes: number;
  readonly #maxFetchBytes: number;
  readonly #maxEntries: number;
  readonly #maxDirentsScanned: number;
  readonly #options: MetadataWalkOptions;
  readonly #store: MetadataPages;
  readonly #policy: {
    concurrency: number;
    gapBytes: number;
    maxReadBytes: number;
    readAheadBytes: number;
  };
  readonly #visited = new Set<number>();
  #sb?: ErofsSuperblock;
  #blockBytes = MIN_PAGE_BYTES;

  constructor(read: ReadRange, sizeBytes: number, options: MetadataWalkOptions) {
    this.#size = sizeBytes;
    this.#options = options;
    this.#maxBytes = Math.max(0, options.maxBytes ?? 64 << 20);
    this.#maxFetchBytes = options.maxFetchBytes ?? 4 * this.#maxBytes;
    // Each entry followed needs its inode slot (32 bytes) held, so a real tree within the
    // budget has no more entries than this; a hostile one could queue far more.
    this.#maxEntries = options.maxEntries ??
      Math.min(1 << 20, Math.max(4096, Math.floor(this.#maxBytes / INODE_SLOT_BYTES)));
    this.#maxDirentsScanned = options.maxDirentsScanned ?? 8 << 20;
    this.#policy = {
      concurrency: Math.max(1, options.concurrency ?? 8),
      gapBytes: options.gapBytes ?? 64 << 10,
      maxReadBytes: options.maxReadBytes ?? 4 << 20,
      readAheadBytes: options.readAheadBytes ?? DEFAULT_READ_AHEAD_BYTES,
    };
    this.#store = new MetadataPages(
      read,
      sizeBytes,
      MIN_PAGE_BYTES,
      options.knownPages,
      options.onPage,
    );
    this.result = {
      pageBytes: MIN_PAGE_BYTES,
      pages: this.#store.pages,
      pagesBytes: 0,
      directories: 0,
      entries: 0,
      direntsScanned: 0,
      reads: 0,
      bytesRead: 0,
      levels: 0,
      skipped: 0,
      paths: options.collectPaths ? [] : undefined,
    };
  }

  get #pageBytes(): number {
    return this.#store.pageBytes;
  }

  get #budget(): PageBudget {
    return {
      maxPages: Math.floor(this.#maxBytes / this.#pageBytes),
      maxFetchBytes: this.#maxFetchBytes,
    };
  }

  finish(): MetadataWalkResult {
    const store = this.#store;
    Object.assign(this.result, {
      pageBytes: store.pageBytes,
      pages: store.pages,
      pagesBytes: store.heldBytes,
      reads: store.reads,
      bytesRead: store.bytesRead,
    });
    this.result.skipped += store.failedReads;
    if (store.exhausted) this.result.incomplete ??= store.exhausted;
    return this.result;
  }

  async #fetch(wanted: (PageRange | undefined)[]): Promise<void> {
    const ranges = wanted.filter((r): r is PageRange => r !== undefined);
    await this.#store.fetch(ranges, this.#budget, {
      ...this.#policy,
      signal: this.#options.signal,
    });
  }

  async run(): Promise<void> {
    if (this.#size < EROFS_SUPER_END) {
      this.result.incomplete = "image smaller than a superblock";
      return;
    }
    await this.#fetch([this.#store.rangeOf(0, EROFS_SUPER_END)]);
    const head = this.#store.bytes(0, EROFS_SUPER_END);
    if (!head) {
      this.result.incomplete = "superblock unreadable";
      return;
    }
    const sb = checkErofsSuperblock(head);
    this.#sb = sb;
    this.#blockBytes = sb.blockSizeBytes;
    if (sb.blockSizeBytes > MIN_PAGE_BYTES) {
      // Pages become blocks. Known pages of an earlier walk are keyed by block already.
      const page0 = this.#store.pages.get(0);
      const wholeBlock = Math.min(this.#size, sb.blockSizeBytes);
      if (!page0 || page0.length < wholeBlock) this.#store.resize(sb.blockSizeBytes);
      else this.#store.pageBytes = sb.blockSizeBytes;
      await this.#fetch([{ first: 0, last: 0 }]);
    }

    let level: Pending[] = [{ nid: sb.rootNid, path: this.result.paths ? "" : undefined }];
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
        level.map((p) => this.#rangeOrSkip(this.#inodeOffset(p.nid), EXTENDED_INODE_BYTES)),
      );
      const inodes = level.map((p) => this.#parseInode(p.nid));
      // 2. What follows the header: xattrs, inline tail, chunk indexes; and plain dir blocks.
      const more: PageRange[] = [];
      for (const inode of inodes) if (inode) more.push(...this.#extentRanges(inode));
      await this.#fetch(more);
      // 3. Directory entries: the next level.
      const next: Pending[] = [];
      for (const [i, inode] of inodes.entries()) {
        if (!inode?.isDir) continue;
        this.result.directories++;
        for (const entry of this.#dirents(inode)) {
          if (this.result.direntsScanned > this.#maxDirentsScanned) {
            this.result.incomplete = `more than ${this.#maxDirentsScanned} dirents scanned`;
            return;
          }
          if (this.result.direntsScanned % YIELD_EVERY_DIRENTS === 0) await yieldToEventLoop();
          if (isDotOrDotDot(entry.name)) continue;
          if (this.#options.fileInodes === false && entry.fileType !== FT_DIR) continue;
          this.result.entries++;
          if (this.result.entries > this.#maxEntries) {
            this.result.incomplete = `more than ${this.#maxEntries} entries`;
            return;
          }
          let path: string | undefined;
          if (this.result.paths) {
            const name = new TextDecoder().decode(entry.name);
            path = level[i].path ? `${level[i].path}/${name}` : name;
            this.result.paths.push(path);
          }
          if (this.#visited.has(entry.nid)) continue; // hard links, hostile cycles
          this.#visited.add(entry.nid);
          next.push({ nid: entry.nid, path });
        }
      }
      if (this.#store.exhausted) return;
      level = next;
      await yieldToEventLoop();
    }
  }

  #inodeOffset(nid: number): number {
    return this.#sb!.metaBlockAddress * this.#blockBytes + nid * INODE_SLOT_BYTES;
  }

  #rangeOrSkip(offset: number, length: number): PageRange | undefined {
    return this.#store.rangeOf(offset, length) ?? this.#skip();
  }

  #parseInode(nid: number): InodeInfo | undefined {
    const is48bit = (this.#sb!.featureIncompat & INCOMPAT_48BIT) !== 0;
    return parseInode((o, l) => this.#store.bytes(o, l), this.#inodeOffset(nid), is48bit) ??
      this.#skip();
  }

  /**
   * Pages past the 64-byte header: xattrs, inline tail, chunk indexes, plain dir blocks. An
   * inode whose pages alone exceed the whole budget is skipped: it cannot be held anyway, and
   * no real directory or chunk index is that large.
   */
  #extentRanges(inode: InodeInfo): PageRange[] {
    const ranges = extentSpans(inode, this.#blockBytes).map((span) =>
      this.#rangeOrSkip(span.offset, span.length)
    );
    const maxPages = this.#budget.maxPages;
    const pages = ranges.reduce((n, r) => n + (r ? r.last - r.first + 1 : 0), 0);
    if (ranges.includes(undefined) || pages > maxPages) {
      if (pages > maxPages) this.#skip();
      return [];
    }
    return ranges as PageRange[];
  }

  /**
   * Entries of a directory whose pages are fetched; a bad or missing block ends that directory.
   * Names stay bytes (decoded only for `collectPaths`).
   */
  *#dirents(inode: InodeInfo): Generator<Dirent> {
    const bs = this.#blockBytes;
    if (inode.layout !== FLAT_PLAIN && inode.layout !== FLAT_INLINE) return this.#skip();
    const blocks = Math.ceil(inode.size / bs);
    for (let b = 0; b < blocks; b++) {
      const length = Math.min(bs, inode.size - b * bs);
      const inline = inode.layout === FLAT_INLINE && b === blocks - 1;
      const offset = inline ? inode.bodyEnd : (inode.rawBlockAddress + b) * bs;
      const block = this.#store.bytes(offset, length);
      if (!block) return this.#skip();
      for (const entry of direntsOfBlock(block)) {
        this.result.direntsScanned++;
        if (entry === "bad") return this.#skip();
        if (entry === "unfollowed") {
          this.#skip();
          continue;
        }
        yield entry;
      }
    }
  }

  #skip(): undefined {
    this.result.skipped++;
    return undefined;
  }
}

const DOT = 0x2e;

function isDotOrDotDot(name: Uint8Array): boolean {
  return (name.length === 1 && name[0] === DOT) ||
    (name.length === 2 && name[0] === DOT && name[1] === DOT);
}

/**
 * A macrotask turn: lets socket and FUSE/NBD I/O of the same process run. Not a zero timer:
 * one took 2-3 ms per turn here (Deno 2.9, quiet host), which made the 10 turns of the
 * benchmark image's directory walk most of its ~25 ms with every page known. Not node:timers'
 * setImmediate either: it would boot Deno's Node layer (~22 ms) on a cold mount's path.
 */
function yieldToEventLoop(): Promise<void> {
  return eventLoopTurn();
}
