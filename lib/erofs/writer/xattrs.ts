/**
 * EROFS extended attributes: names are stored as a prefix index plus the rest of the name
 * (erofs_fs.h EROFS_XATTR_INDEX_*), entries `{u8 name_len, u8 name_index, le16 value_size,
 * name, value}` padded to 4 bytes; an inode's xattr body starts with `erofs_xattr_ibody_header`
 * (12 bytes: le32 name filter, u8 shared count, 7 reserved) followed by le32 shared ids.
 */
import { FormatError } from "../../errors.ts";
import { warn } from "../../log.ts";
import { XATTR_IBODY_HEADER_BYTES } from "../inode_layout.ts";
import { aclProblem, isAclXattr } from "../../tar/acl.ts";

export { XATTR_IBODY_HEADER_BYTES };
export const MAX_SHARED_PER_INODE = 255;
/** i_xattr_icount is 16 bits (erofs_fs.h): the most 4-byte units an inode's xattr body spans. */
const MAX_XATTR_COUNT = 0xffff;
const MAX_VALUE_BYTES = 65535;

/** Exact names first, then prefixes (EROFS_XATTR_INDEX_USER=1 … SECURITY=6). */
const PREFIXES: { index: number; prefix: string; exact?: boolean }[] = [
  { index: 2, prefix: "system.posix_acl_access", exact: true },
  { index: 3, prefix: "system.posix_acl_default", exact: true },
  { index: 1, prefix: "user." },
  { index: 4, prefix: "trusted." },
  { index: 5, prefix: "lustre." },
  { index: 6, prefix: "security." },
];

/** The name prefix (or whole name) of EROFS_XATTR_INDEX_`index`; undefined for others. */
export function xattrPrefixOf(index: number): string | undefined {
  return PREFIXES.find((p) => p.index === index)?.prefix;
}

const encoder = new TextEncoder();

/** Told of each xattr a scan leaves out: whose, which, and why (a phrase). */
export type SkippedXattr = (path: string, name: string, why: string) => void;

export const NOT_STORABLE = "cannot be stored in EROFS";

/** Warns of the first five xattrs left out, then once that there are more. */
export function skippedXattrWarner(): SkippedXattr {
  let skipped = 0;
  return (path, name, why) => {
    skipped++;
    if (skipped <= 5) warn(`xattr ${name} of ${path} ${why}: left out`);
    if (skipped === 6) warn("more xattrs left out");
  };
}

/**
 * overlayfs's own xattrs (trusted.overlay.*: opaque, redirect, metacopy, whiteout): in a
 * layer's tar they would delete, hide or redirect lower files in a mount where the OCI rules
 * (deletions only by .wh. members) and every other reader of the layer see none of it.
 */
export function isOverlayXattr(name: string): boolean {
  return name.startsWith("trusted.overlay.");
}

/** True when EROFS can store this xattr name without the xattr_prefixes feature. */
export function xattrNameSupported(name: string): boolean {
  return PREFIXES.some((p) =>
    p.exact ? name === p.prefix : name.startsWith(p.prefix) && name.length > p.prefix.length
  );
}

/** Why EROFS cannot hold this xattr (a short phrase), or undefined when it can. */
export function xattrProblem(name: string, value: Uint8Array): string | undefined {
  const match = PREFIXES.find((p) =>
    p.exact ? name === p.prefix : name.startsWith(p.prefix) && name.length > p.prefix.length
  );
  // Listed by listxattr, found by no getxattr: a name the kernel cannot ask for.
  if (name.includes("\0")) return `xattr name ${JSON.stringify(name)} holds a NUL byte`;
  if (!match) return `xattr ${name} has a prefix EROFS cannot store`;
  const suffix = encoder.encode(match.exact ? "" : name.slice(match.prefix.length));
  if (suffix.length > 255) return `xattr name ${name.slice(0, 40)}… longer than 255 bytes`;
  if (value.length > MAX_VALUE_BYTES) {
    // value_size is 16 bits (erofs_xattr_entry): 64 KiB itself is one byte too many.
    return `xattr ${name} value of ${value.length} bytes; EROFS holds at most ${MAX_VALUE_BYTES}`;
  }
  if (isAclXattr(name)) {
    const problem = aclProblem(value);
    if (problem) return `xattr ${name}: ${problem}`;
  }
  return undefined;
}

/** One entry, padded to 4 bytes. Throws FormatError for names or values EROFS cannot hold. */
export function encodeXattrEntry(name: string, value: Uint8Array): Uint8Array {
  const problem = xattrProblem(name, value);
  if (problem) throw new FormatError(problem);
  const match = PREFIXES.find((p) =>
    p.exact ? name === p.prefix : name.startsWith(p.prefix) && name.length > p.prefix.length
  )!;
  const suffix = encoder.encode(match.exact ? "" : name.slice(match.prefix.length));
  const bytes = new Uint8Array(align4(4 + suffix.length + value.length));
  const view = new DataView(bytes.buffer);
  view.setUint8(0, suffix.length);
  view.setUint8(1, match.index);
  view.setUint16(2, value.length, true);
  bytes.set(suffix, 4);
  bytes.set(value, 4 + suffix.length);
  return bytes;
}

/** A stable key for an (name, value) pair, to find pairs worth sharing. */
export function xattrKey(name: string, value: Uint8Array): string {
  let text = name + "\0";
  for (let i = 0; i < value.length; i += 8192) {
    text += String.fromCharCode(...value.subarray(i, i + 8192));
  }
  return text;
}

/**
 * The xattr body of one inode: header, shared ids, then its own entries (sorted by name so the
 * bytes do not depend on insertion order). Returns undefined when there are none.
 */
export function encodeXattrBody(
  sharedIds: number[],
  inline: [string, Uint8Array][],
): Uint8Array | undefined {
  if (sharedIds.length === 0 && inline.length === 0) return undefined;
  const shared = sharedIds.slice(0, MAX_SHARED_PER_INODE);
  if (sharedIds.length > MAX_SHARED_PER_INODE) {
    throw new FormatError(`more than ${MAX_SHARED_PER_INODE} shared xattrs on one inode`);
  }
  const entries = inline.map(([n, v]) => encodeXattrEntry(n, v));
  const size = XATTR_IBODY_HEADER_BYTES + shared.length * 4 +
    entries.reduce((n, e) => n + e.length, 0);
  if (xattrCount(size) > MAX_XATTR_COUNT) {
    throw new FormatError(
      `its xattrs take ${size} bytes, more than EROFS holds for one inode ` +
        `(${XATTR_IBODY_HEADER_BYTES + (MAX_XATTR_COUNT - 1) * 4})`,
    );
  }
  const body = new Uint8Array(size);
  const view = new DataView(body.buffer);
  view.setUint8(4, shared.length);
  let at = XATTR_IBODY_HEADER_BYTES;
  for (const id of shared) {
    view.setUint32(at, id, true);
    at += 4;
  }
  for (const entry of entries) {
    body.set(entry, at);
    at += entry.length;
  }
  return body;
}

/** i_xattr_icount for a body of `bytes` (0 when there is no body). */
export function xattrCount(bytes: number): number {
  return bytes === 0 ? 0 : (bytes - XATTR_IBODY_HEADER_BYTES) / 4 + 1;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}
