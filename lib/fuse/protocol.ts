/**
 * The slice of the FUSE kernel protocol a one-file read-only server needs: opcodes, flags and
 * the little-endian struct layouts of linux/fuse.h (identical from 7.31 to 7.45 for these ops).
 */

/** Protocol version we speak (FUSE_KERNEL_VERSION / FUSE_KERNEL_MINOR_VERSION, fuse.h). */
export const FUSE_KERNEL_VERSION = 7;
export const FUSE_MINOR_WANTED = 44;
/** Oldest minor whose layouts of the structs below match ours. */
export const FUSE_MINOR_MIN = 31;

/** Opcodes (enum fuse_opcode, fuse.h). */
export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  OPEN: 14,
  READ: 15,
  STATFS: 17,
  RELEASE: 18,
  GETXATTR: 22,
  LISTXATTR: 23,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  ACCESS: 34,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  STATX: 52,
} as const;

/**
 * FUSE_NOTIFY_RESEND (7.40, kernel 6.9): a notification (out header with unique 0, this code
 * in `error`) that puts every request read from the connection but not answered back on its
 * queue, with FUSE_UNIQUE_RESEND set in `unique`, so a new server can answer them.
 */
export const FUSE_NOTIFY_RESEND = 7;

/** FUSE_ROOT_ID: the node id of the mount's root directory. */
export const ROOT_NODE_ID = 1n;

/** INIT flags (fuse.h). */
export const FUSE_ASYNC_READ = 1 << 0;
export const FUSE_MAX_PAGES = 1 << 22;
/** Kernel cap on max_pages (FUSE_MAX_MAX_PAGES): 256 pages = 1 MiB READs. */
export const FUSE_MAX_MAX_PAGES = 256;

/** fuse_open_out.open_flags: bypass the page cache of the FUSE file (EROFS caches itself). */
export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_CACHE_DIR = 1 << 3;
/** No FLUSH at close (7.35+, ignored before): a close() on our own thread cannot deadlock. */
export const FOPEN_NOFLUSH = 1 << 5;

/** Struct sizes (bytes). */
export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
export const INIT_OUT_SIZE = 64;
export const ATTR_SIZE = 88;
export const ENTRY_OUT_SIZE = 128;
export const ATTR_OUT_SIZE = 104;
export const OPEN_OUT_SIZE = 16;
export const STATFS_OUT_SIZE = 80;
export const DIRENT_HEADER_SIZE = 24;

/** File type bits (stat.h) and directory entry types (dirent.h). */
export const S_IFDIR = 0o040000, S_IFREG = 0o100000;
export const DT_DIR = 4, DT_REG = 8;

/** fuse_in_header. */
export interface RequestHeader {
  length: number;
  opcode: number;
  unique: bigint;
  nodeId: bigint;
  uid: number;
  gid: number;
  pid: number;
}

export function parseRequestHeader(view: DataView): RequestHeader {
  return {
    length: view.getUint32(0, true),
    opcode: view.getUint32(4, true),
    unique: view.getBigUint64(8, true),
    nodeId: view.getBigUint64(16, true),
    uid: view.getUint32(24, true),
    gid: view.getUint32(28, true),
    pid: view.getUint32(32, true),
  };
}

/** fuse_init_in (the fields we use). */
export interface InitRequest {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
}

export function parseInit(view: DataView, at = IN_HEADER_SIZE): InitRequest {
  return {
    major: view.getUint32(at, true),
    minor: view.getUint32(at + 4, true),
    maxReadahead: view.getUint32(at + 8, true),
    flags: view.getUint32(at + 12, true),
  };
}

/** fuse_read_in (also READDIR's argument). */
export interface ReadRequest {
  fh: bigint;
  offset: number;
  size: number;
}

export function parseRead(view: DataView, at = IN_HEADER_SIZE): ReadRequest {
  return {
    fh: view.getBigUint64(at, true),
    offset: Number(view.getBigUint64(at + 8, true)),
    size: view.getUint32(at + 16, true),
  };
}

/** A reply buffer: out_header followed by `bodyBytes`, header filled in. */
export function reply(unique: bigint, bodyBytes: number, error = 0): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(OUT_HEADER_SIZE + bodyBytes);
  writeOutHeader(new DataView(out.buffer), out.length, unique, error);
  return out;
}

/** The FUSE_NOTIFY_RESEND notification. */
export function encodeResendNotify(): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(OUT_HEADER_SIZE);
  const view = new DataView(out.buffer);
  view.setUint32(0, OUT_HEADER_SIZE, true);
  view.setInt32(4, FUSE_NOTIFY_RESEND, true); // a notify code, not an errno: not negated
  return out;
}

/** fuse_out_header: len, error (−errno), unique. */
export function writeOutHeader(view: DataView, length: number, unique: bigint, error = 0): void {
  view.setUint32(0, length, true);
  view.setInt32(4, -Math.abs(error), true);
  view.setBigUint64(8, unique, true);
}

/** fuse_init_out. */
export interface InitReply {
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  maxPages: number;
}

export function encodeInit(unique: bigint, init: InitReply): Uint8Array<ArrayBuffer> {
  const out = reply(unique, INIT_OUT_SIZE);
  const v = new DataView(out.buffer, OUT_HEADER_SIZE);
  v.setUint32(0, FUSE_KERNEL_VERSION, true);
  v.setUint32(4, init.minor, true);
  v.setUint32(8, init.maxReadahead, true);
  v.setUint32(12, init.flags, true);
  v.setUint16(16, init.maxBackground, true);
  v.setUint16(18, init.congestionThreshold, true);
  v.setUint32(20, init.maxWrite, true);
  v.setUint32(24, 1, true); // time_gran: nanoseconds
  v.setUint16(28, init.maxPages, true);
  return out;
}

/** What the server knows about a node: enough for fuse_attr. */
export interface NodeAttr {
  ino: bigint;
  sizeBytes: number;
  mode: number;
  nlink: number;
  mtimeSec: number;
}

/** fuse_attr at `at`. */
export function writeAttr(v: DataView, at: number, attr: NodeAttr): void {
  v.setBigUint64(at, attr.ino, true);
  v.setBigUint64(at + 8, BigInt(attr.sizeBytes), true);
  v.setBigUint64(at + 16, BigInt(Math.ceil(attr.sizeBytes / 512)), true);
  for (const field of [24, 32, 40]) v.setBigUint64(at + field, BigInt(attr.mtimeSec), true);
  v.setUint32(at + 60, attr.mode, true);
  v.setUint32(at + 64, attr.nlink, true);
  // uid, gid, rdev stay 0 (root-owned, not a device)
  v.setUint32(at + 80, 4096, true); // blksize
}

/** fuse_entry_out: LOOKUP's reply. */
export function encodeEntry(
  unique: bigint,
  attr: NodeAttr,
  validSec: number,
): Uint8Array<ArrayBuffer> {
  const out = reply(unique, ENTRY_OUT_SIZE);
  const v = new DataView(out.buffer, OUT_HEADER_SIZE);
  v.setBigUint64(0, attr.ino, true); // nodeid = ino
  v.setBigUint64(16, BigInt(validSec), true); // entry_valid
  v.setBigUint64(24, BigInt(validSec), true); // attr_valid
  writeAttr(v, 40, attr);
  return out;
}

/** fuse_attr_out: GETATTR's reply. */
export function encodeAttrReply(
  unique: bigint,
  attr: NodeAttr,
  validSec: number,
): Uint8Array<ArrayBuffer> {
  const out = reply(unique, ATTR_OUT_SIZE);
  const v = new DataView(out.buffer, OUT_HEADER_SIZE);
  v.setBigUint64(0, BigInt(validSec), true);
  writeAttr(v, 16, attr);
  return out;
}

/** fuse_open_out: OPEN / OPENDIR reply. */
export function encodeOpen(unique: bigint, fh: bigint, openFlags: number): Uint8Array<ArrayBuffer> {
  const out = reply(unique, OPEN_OUT_SIZE);
  const v = new DataView(out.buffer, OUT_HEADER_SIZE);
  v.setBigUint64(0, fh, true);
  v.setUint32(8, openFlags, true);
  return out;
}

/** fuse_statfs_out (struct fuse_kstatfs). */
export function encodeStatfs(
  unique: bigint,
  blocks: number,
  files: number,
): Uint8Array<ArrayBuffer> {
  const out = reply(unique, STATFS_OUT_SIZE);
  const v = new DataView(out.buffer, OUT_HEADER_SIZE);
  v.setBigUint64(0, BigInt(blocks), true);
  v.setBigUint64(24, BigInt(files), true);
  v.setUint32(40, 4096, true); // bsize
  v.setUint32(44, 255, true); // namelen
  v.setUint32(48, 4096, true); // frsize
  return out;
}

export interface DirEntry {
  ino: bigint;
  name: string;
  type: number;
}

/**
 * READDIR reply: the entries from index `offset` on that fit in `maxBytes`; each entry's `off`
 * is the cookie of the next one (fuse_dirent, names padded to 8 bytes).
 */
export function encodeDirents(
  unique: bigint,
  entries: DirEntry[],
  offset: number,
  maxBytes: number,
): Uint8Array<ArrayBuffer> {
  const encoder = new TextEncoder();
  const parts: { entry: DirEntry; name: Uint8Array; cookie: number }[] = [];
  let total = 0;
  for (let i = offset; i < entries.length; i++) {
    const name = encoder.encode(entries[i].name);
    const size = align8(DIRENT_HEADER_SIZE + name.length);
    if (total + size > maxBytes) break;
    parts.push({ entry: entries[i], name, cookie: i + 1 });
    total += size;
  }
  const out = reply(unique, total);
  const v = new DataView(out.buffer);
  let at = OUT_HEADER_SIZE;
  for (const { entry, name, cookie } of parts) {
    v.setBigUint64(at, entry.ino, true);
    v.setBigUint64(at + 8, BigInt(cookie), true);
    v.setUint32(at + 16, name.length, true);
    v.setUint32(at + 20, entry.type, true);
    out.set(name, at + DIRENT_HEADER_SIZE);
    at += align8(DIRENT_HEADER_SIZE + name.length);
  }
  return out;
}

function align8(n: number): number {
  return (n + 7) & ~7;
}
