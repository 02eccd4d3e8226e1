/**
 * Extended attributes carried in pax records. Two spellings exist: `SCHILY.xattr.NAME=raw bytes`
 * (star, GNU tar --xattrs, Go archive/tar, Docker) and `LIBARCHIVE.xattr.NAME=base64` where NAME
 * is URL-encoded (bsdtar). POSIX ACLs may come as text instead (`SCHILY.acl.access` and
 * `SCHILY.acl.default`, from `--acls`): stored as the ACL xattrs, unless one is given as such.
 */
import { FormatError } from "../errors.ts";
import type { PaxRecord } from "./pax.ts";
import { ACL_ACCESS, ACL_DEFAULT, aclFromText } from "./acl.ts";

const TEXT_ACLS: Record<string, string> = {
  "SCHILY.acl.access": ACL_ACCESS,
  "SCHILY.acl.default": ACL_DEFAULT,
};

const SCHILY = "SCHILY.xattr.";
const LIBARCHIVE = "LIBARCHIVE.xattr.";

/** Whether a record with this key carries an xattr (or a text ACL) applyXattrRecord adds. */
export function isXattrKey(key: string): boolean {
  return isTextAclKey(key) || key.startsWith(SCHILY) || key.startsWith(LIBARCHIVE);
}

/** Whether a record with this key is a text ACL (`--acls`), to apply after the binary xattrs. */
export function isTextAclKey(key: string): boolean {
  return key in TEXT_ACLS;
}

/**
 * Adds the xattr a record carries (later records replace earlier ones); ignores other keys. A
 * text ACL is left out when its binary xattr is there already: apply those records last.
 */
export function applyXattrRecord(
  xattrs: Map<string, Uint8Array>,
  record: PaxRecord,
  offset: number,
): void {
  const aclName = TEXT_ACLS[record.key];
  if (aclName !== undefined) {
    if (xattrs.has(aclName)) return; // the binary xattr, given too, is the writer's own copy
    try {
      const acl = aclFromText(new TextDecoder("utf-8", { fatal: true }).decode(record.value));
      if (acl) xattrs.set(aclName, acl);
    } catch (error) {
      const why = error instanceof FormatError ? error.message : "is not UTF-8";
      throw new FormatError(`tar pax header at byte ${offset}: ${record.key}: ${why}`);
    }
  } else if (record.key.startsWith(SCHILY)) {
    const name = record.key.slice(SCHILY.length);
    if (name !== "") xattrs.set(name, record.value.slice());
  } else if (record.key.startsWith(LIBARCHIVE)) {
    let name: string;
    let value: Uint8Array;
    try {
      name = decodeURIComponent(record.key.slice(LIBARCHIVE.length));
      value = Uint8Array.from(atob(new TextDecoder().decode(record.value)), (c) => c.charCodeAt(0));
    } catch {
      throw new FormatError(`tar pax header at byte ${offset}: bad ${record.key} record`);
    }
    if (name !== "") xattrs.set(name, value);
  }
}
