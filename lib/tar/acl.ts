/**
 * POSIX ACLs as xattrs (system.posix_acl_access, system.posix_acl_default) in the kernel's
 * binary form (uapi linux/posix_acl_xattr.h): le32 version 2, then 8-byte entries
 * `{le16 tag, le16 perm, le32 id}`. A file system can only hold ACLs the kernel's setxattr
 * accepted; a tar can carry any bytes, and EROFS serves them as they are: an ACL the kernel
 * refuses when it reads it made every permission check on the file fail, root's included
 * (EINVAL, EOPNOTSUPP), so they are refused at build time. Tars written with `--acls` (GNU tar,
 * star, bsdtar) carry the text form instead (SCHILY.acl.access / .default), turned into this one.
 */
import { FormatError } from "../errors.ts";

export const ACL_ACCESS = "system.posix_acl_access";
export const ACL_DEFAULT = "system.posix_acl_default";

const VERSION = 2;
const ENTRY_BYTES = 8;
export const ACL_TAG = {
  USER_OBJ: 0x01,
  USER: 0x02,
  GROUP_OBJ: 0x04,
  GROUP: 0x08,
  MASK: 0x10,
  OTHER: 0x20,
} as const;
export const ACL_UNDEFINED_ID = 0xffffffff;

export interface AclEntry {
  tag: number;
  perm: number;
  id: number;
}

/** True for the two ACL xattr names. */
export function isAclXattr(name: string): boolean {
  return name === ACL_ACCESS || name === ACL_DEFAULT;
}

/**
 * Why the kernel would refuse this ACL (a phrase), or undefined: the order and uniqueness rules
 * of posix_acl_valid — owner, named users, owning group, named groups, a mask (required when
 * there are named entries), other; permissions within rwx; named ids that map.
 */
export function aclProblem(value: Uint8Array): string | undefined {
  if (value.length < 4 || (value.length - 4) % ENTRY_BYTES !== 0) {
    return `ACL of ${value.length} bytes is not a header and whole 8-byte entries`;
  }
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  const version = view.getUint32(0, true);
  if (version !== VERSION) return `ACL has version ${version}, not ${VERSION}`;
  const entries = decodeAcl(value);
  if (entries.length === 0) return "ACL has no entries";
  // posix_acl_valid's states: the next tags allowed.
  let state: number = ACL_TAG.USER_OBJ;
  let needsMask = false;
  for (const [index, { tag, perm, id }] of entries.entries()) {
    const bad = (why: string) => `ACL entry ${index} (tag 0x${tag.toString(16)}) ${why}`;
    if (perm & ~7) return bad(`has permissions 0x${perm.toString(16)} beyond rwx`);
    switch (tag) {
      case ACL_TAG.USER_OBJ:
        if (state !== ACL_TAG.USER_OBJ) return bad("is out of order");
        state = ACL_TAG.USER;
        break;
      case ACL_TAG.USER:
      case ACL_TAG.GROUP:
        // Named users only right after the owner, named groups right after the owning group.
        if (state !== tag) return bad("is out of order");
        if (id === ACL_UNDEFINED_ID) return bad("names no id");
        needsMask = true;
        break;
      case ACL_TAG.GROUP_OBJ:
        if (state !== ACL_TAG.USER) return bad("is out of order");
        state = ACL_TAG.GROUP;
        break;
      case ACL_TAG.MASK:
        if (state !== ACL_TAG.GROUP) return bad("is out of order");
        state = ACL_TAG.OTHER;
        break;
      case ACL_TAG.OTHER:
        if (state !== ACL_TAG.OTHER && !(state === ACL_TAG.GROUP && !needsMask)) {
          return bad(
            state === ACL_TAG.GROUP
              ? "comes without the mask named entries need"
              : "is out of order",
          );
        }
        state = 0;
        break;
      default:
        return bad("has an unknown tag");
    }
  }
  return state === 0 ? undefined : "ACL lacks its owner, owning group or other entry";
}

export function decodeAcl(value: Uint8Array): AclEntry[] {
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  const entries: AclEntry[] = [];
  for (let at = 4; at + ENTRY_BYTES <= value.length; at += ENTRY_BYTES) {
    entries.push({
      tag: view.getUint16(at, true),
      perm: view.getUint16(at + 2, true),
      id: view.getUint32(at + 4, true),
    });
  }
  return entries;
}

export function encodeAcl(entries: readonly AclEntry[]): Uint8Array {
  const value = new Uint8Array(4 + entries.length * ENTRY_BYTES);
  const view = new DataView(value.buffer);
  view.setUint32(0, VERSION, true);
  entries.forEach(({ tag, perm, id }, i) => {
    view.setUint16(4 + i * ENTRY_BYTES, tag, true);
    view.setUint16(6 + i * ENTRY_BYTES, perm, true);
    view.setUint32(8 + i * ENTRY_BYTES, id, true);
  });
  return value;
}

/**
 * A valid access ACL with its owner, group class (the mask, else the owning group) and other
 * entries set from `mode`, as chmod(2) leaves a file's ACL (posix_acl_chmod): what a container
 * runtime's extraction gives (the xattr set, then the member's mode), so that an ACL cannot
 * grant what the member's mode, the one every scanner reads, denies.
 */
/**
 * Whether the access ACL `value` says no more than a mode does (owner, group and other only):
 * the kernel keeps no such ACL (posix_acl_equiv_mode), only the mode, and so does a build.
 */
export function aclIsMode(value: Uint8Array): boolean {
  const base: number[] = [ACL_TAG.USER_OBJ, ACL_TAG.GROUP_OBJ, ACL_TAG.OTHER];
  return decodeAcl(value).every((entry) => base.includes(entry.tag));
}

export function aclWithMode(value: Uint8Array, mode: number): Uint8Array {
  const entries = decodeAcl(value);
  const hasMask = entries.some((e) => e.tag === ACL_TAG.MASK);
  return encodeAcl(entries.map((entry) => {
    if (entry.tag === ACL_TAG.USER_OBJ) return { ...entry, perm: (mode >> 6) & 7 };
    if (entry.tag === (hasMask ? ACL_TAG.MASK : ACL_TAG.GROUP_OBJ)) {
      return { ...entry, perm: (mode >> 3) & 7 };
    }
    if (entry.tag === ACL_TAG.OTHER) return { ...entry, perm: mode & 7 };
    return entry;
  }));
}

const TEXT_TAGS: Record<string, { obj: number; named?: number }> = {
  user: { obj: ACL_TAG.USER_OBJ, named: ACL_TAG.USER },
  u: { obj: ACL_TAG.USER_OBJ, named: ACL_TAG.USER },
  group: { obj: ACL_TAG.GROUP_OBJ, named: ACL_TAG.GROUP },
  g: { obj: ACL_TAG.GROUP_OBJ, named: ACL_TAG.GROUP },
  mask: { obj: ACL_TAG.MASK },
  m: { obj: ACL_TAG.MASK },
  other: { obj: ACL_TAG.OTHER },
  o: { obj: ACL_TAG.OTHER },
};

/**
 * An ACL's text form (acl(5): `tag:qualifier:perms[:id]` entries separated by commas or
 * newlines; star adds the numeric id as a fourth field) in the binary form, its entries in the
 * kernel's order. A named entry needs a numeric id (the qualifier or the fourth field): the
 * names are the tar writer's host's, not this one's. Undefined for a text with no entries (no
 * ACL). Throws FormatError saying what is wrong.
 */
export function aclFromText(text: string): Uint8Array | undefined {
  const entries: AclEntry[] = [];
  for (const raw of text.split(/[,\n]/)) {
    const line = raw.replace(/#.*$/, "").trim();
    if (line === "") continue;
    const fields = line.split(":");
    const kind = TEXT_TAGS[fields[0]];
    if (!kind) throw new FormatError(`ACL entry "${line}" has an unknown tag`);
    // mask and other may leave the empty qualifier out ("other:r-x").
    const [qualifier, perms, numericId] = fields.length === 2 && !kind.named
      ? ["", fields[1], undefined]
      : [fields[1], fields[2], fields[3]];
    if (perms === undefined || fields.length > 4) {
      throw new FormatError(`ACL entry "${line}" is not tag:qualifier:perms`);
    }
    let perm = 0;
    for (const c of perms) {
      const bit = ({ r: 4, w: 2, x: 1, "-": 0 } as Record<string, number>)[c];
      if (bit === undefined) throw new FormatError(`ACL entry "${line}" has bad permissions`);
      perm |= bit;
    }
    if (qualifier === "") {
      entries.push({ tag: kind.obj, perm, id: ACL_UNDEFINED_ID });
      continue;
    }
    if (!kind.named) throw new FormatError(`ACL entry "${line}" cannot name a user or group`);
    const id = [numericId, qualifier].find((f) => f !== undefined && /^\d{1,10}$/.test(f));
    if (id === undefined || Number(id) >= ACL_UNDEFINED_ID) {
      throw new FormatError(`ACL entry "${line}" names "${qualifier}" without a numeric id`);
    }
    entries.push({ tag: kind.named, perm, id: Number(id) });
  }
  const order = [ACL_TAG.USER_OBJ, ACL_TAG.USER, ACL_TAG.GROUP_OBJ, ACL_TAG.GROUP, ACL_TAG.MASK];
  const rank = (tag: number) => (order as readonly number[]).indexOf(tag) + 1 || order.length + 1;
  entries.sort((a, b) => rank(a.tag) - rank(b.tag) || a.id - b.id);
  return entries.length === 0 ? undefined : encodeAcl(entries);
}
