/**
 * A tar member's fields on its inode (from_tar.ts): the checks of what Linux and EROFS cannot
 * hold (owners past 32 bits, device numbers past new_encode_dev, unusable symlink targets,
 * xattrs EROFS refuses), and the mode, owner, mtime and storable xattrs set as an extraction
 * would leave them. Apart from from_tar.ts, which builds the tree from the members' paths.
 */
import { ACL_ACCESS, ACL_DEFAULT, aclIsMode, aclWithMode } from "../../tar/acl.ts";
import { FormatError } from "../../errors.ts";
import type { TarEntry } from "../../tar/entry.ts";
import { NO_XATTRS } from "./tree.ts";
import type { NodeTable } from "./node_table.ts";
import {
  isOverlayXattr,
  NOT_STORABLE,
  type SkippedXattr,
  xattrNameSupported,
  xattrProblem,
} from "./xattrs.ts";

const encoder = new TextEncoder();

/**
 * The member's mode, owner, mtime and storable xattrs on inode `i`. `literalWhiteouts`: the
 * layer's overlayfs xattrs are kept (TarScanOptions.literalWhiteouts).
 */
export function setMemberAttributes(
  table: NodeTable,
  i: number,
  entry: TarEntry,
  options: { literalWhiteouts?: boolean },
  onSkippedXattr: SkippedXattr,
) {
  let xattrs = NO_XATTRS;
  for (const [name, value] of entry.xattrs) {
    if (!xattrNameSupported(name)) onSkippedXattr(entry.path, name, NOT_STORABLE);
    else if (!options.literalWhiteouts && isOverlayXattr(name)) {
      onSkippedXattr(
        entry.path,
        name,
        "is overlayfs's own (a layer deletes files by .wh. members)",
      );
    } else if (name === ACL_DEFAULT && entry.kind !== "dir") {
      onSkippedXattr(entry.path, name, "is a default ACL on a non-directory");
    } else if (name === ACL_ACCESS && aclIsMode(value)) {
      // `tar --acls` writes one for every file; extracted, only the mode is left of it.
      continue;
    } else {
      // As an extraction leaves it: the ACL set, then the member's mode (chmod).
      const stored = name === ACL_ACCESS ? aclWithMode(value, entry.mode) : value;
      if (xattrs === NO_XATTRS) xattrs = new Map([[name, stored]]);
      else (xattrs as Map<string, Uint8Array>).set(name, stored);
    }
  }
  // A symlink's own mode is 0777 on Linux whatever the tar says (no lchmod: extractions and
  // container runtimes leave it so).
  table.setMode(i, entry.kind === "symlink" ? 0o777 : entry.mode & 0o7777);
  table.uid.set(i, entry.uid);
  table.gid.set(i, entry.gid);
  table.mtimeSec.set(i, entry.mtimeSec);
  table.mtimeNsec.set(i, entry.mtimeNsec);
  table.setXattrs(i, xattrs);
}

/** Linux limits (PATH_MAX, new_encode_dev, 32-bit ids) a member must fit, else EROFS lies. */
const MAX_SYMLINK_BYTES = 4095;

export function checkMemberFields(entry: TarEntry): void {
  const where = `tar member "${entry.path}"`;
  if (entry.uid > 0xffffffff || entry.gid > 0xffffffff || entry.uid < 0 || entry.gid < 0) {
    throw new FormatError(`${where}: owner ${entry.uid}:${entry.gid} beyond 32 bits`);
  }
  if (entry.kind === "char" || entry.kind === "block") {
    if (entry.devMajor > 0xfff || entry.devMinor > 0xfffff) {
      throw new FormatError(`${where}: device ${entry.devMajor}:${entry.devMinor} too large`);
    }
  }
  for (const [name, value] of entry.xattrs) {
    if (!xattrNameSupported(name)) continue; // left out with a warning where it is applied
    const problem = xattrProblem(name, value);
    if (problem) throw new FormatError(`${where}: ${problem}`);
  }
  if (entry.kind === "symlink") {
    const length = encoder.encode(entry.linkname).length;
    if (length === 0 || length > MAX_SYMLINK_BYTES || entry.linkname.includes("\0")) {
      throw new FormatError(`${where}: symlink target of ${length} bytes is not a usable path`);
    }
  }
}
