/**
 * Extended attributes carried in pax records. Two spellings exist: `SCHILY.xattr.NAME=raw bytes`
 * (star, GNU tar --xattrs, Go archive/tar, Docker) and `LIBARCHIVE.xattr.NAME=base64` where NAME
 * is URL-encoded (bsdtar).
 */
import { FormatError } from "../errors.ts";
import type { PaxRecord } from "./pax.ts";

const SCHILY = "SCHILY.xattr.";
const LIBARCHIVE = "LIBARCHIVE.xattr.";

/** Adds the xattr a record carries (later records replace earlier ones); ignores other keys. */
export function applyXattrRecord(
  xattrs: Map<string, Uint8Array>,
  record: PaxRecord,
  offset: number,
): void {
  if (record.key.startsWith(SCHILY)) {
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
