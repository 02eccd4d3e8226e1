/**
 * The disk cache's file names, both ways. A blob's files are `<stem>.c<chunk bytes>.<kind>`
 * (kind: map, data, meta, boot, sum), the stem `<algo>-<hex>.verified` for bytes checked against a
 * table bound to the digest, else `<algo>-<hex>.o-<origin, escaped byte by byte>`. DiskCache
 * names its files with these; `erofs-oci cache` reads them back (parseBlobName).
 */

/** Names a registry blob's origin for the disk cache (unverified bytes stay per origin). */
export function registryOrigin(registry: string, plainHttp: boolean): string {
  return `${plainHttp ? "http" : "https"}://${registry}`;
}

/**
 * The disk-cache origin of a layer read from `origin` behind the table `tableDigest`: chunks
 * cached under it were all checked against that table.
 */
export function tableCacheOrigin(origin: string, tableDigest: string): string {
  return `${origin}${TABLE_MARK}${tableDigest.slice(7, 23)}`;
}

const TABLE_MARK = "#t-";

/**
 * A disk-cache origin as `erofs-oci cache` shows it: where the bytes came from, and whether they
 * were read behind a chunk table (tableCacheOrigin).
 */
export function shownOrigin(origin: string): { origin: string; tableChecked: boolean } {
  const table = origin.indexOf(TABLE_MARK);
  return table < 0
    ? { origin, tableChecked: false }
    : { origin: origin.slice(0, table), tableChecked: true };
}

/** The origin in a file name, injectively: every other byte than [A-Za-z0-9.-] as _XX. */
export function originTag(origin: string): string {
  let out = "";
  for (const byte of new TextEncoder().encode(origin)) {
    const ch = String.fromCharCode(byte);
    out += /[A-Za-z0-9.-]/.test(ch) ? ch : `_${byte.toString(16).padStart(2, "0")}`;
  }
  if (out.length > 120) throw new RangeError("origin too long for a file name");
  return out || "_";
}

/** How every file of blob `digest` begins its name (then origin, chunk size and kind). */
export function blobFilePrefix(digest: string): string {
  return `${digest.replace(":", "-")}.`;
}

/**
 * A blob's name up to its chunk size: its digest and where its bytes are shared from (every
 * origin when `verified`). Throws RangeError for an origin too long for a file name.
 */
export function blobNameStem(digest: string, origin: string, verified: boolean): string {
  return `${blobFilePrefix(digest)}${verified ? "verified" : `o-${originTag(origin)}`}`;
}

/** A base file name (without .map/.data…): `<stem>.c<chunk bytes>`. */
const BASE_NAME =
  /^(sha256-[0-9a-f]{64}|sha512-[0-9a-f]{128})\.(verified|o-[A-Za-z0-9._-]+)\.c([0-9]{1,12})$/;

/** Digest, origin and chunk size from a base path's file name, or undefined for another name. */
export function parseBlobName(
  base: string,
): { digest: string; origin: string; tableChecked: boolean; chunkBytes: number } | undefined {
  const match = BASE_NAME.exec(base.slice(base.lastIndexOf("/") + 1));
  if (!match) return undefined;
  const digest = match[1].replace("-", ":"), chunkBytes = Number(match[3]);
  if (chunkBytes <= 0) return undefined;
  if (match[2] === "verified") {
    return { digest, origin: "verified", tableChecked: true, chunkBytes };
  }
  const origin = decodeOriginTag(match[2].slice(2));
  if (origin === undefined) return undefined;
  // Bytes read behind a chunk table (tableCacheOrigin) are kept apart.
  return { digest, ...shownOrigin(origin), chunkBytes };
}

/** originTag backwards; undefined for a tag it cannot have made. */
function decodeOriginTag(tag: string): string | undefined {
  const bytes: number[] = [];
  for (let i = 0; i < tag.length; i++) {
    if (tag[i] !== "_") {
      bytes.push(tag.charCodeAt(i));
      continue;
    }
    const hex = tag.slice(i + 1, i + 3);
    if (!/^[0-9a-f]{2}$/.test(hex)) return tag === "_" ? "" : undefined;
    bytes.push(parseInt(hex, 16));
    i += 2;
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}
