/**
 * Small content-addressed blobs a mount keeps in the state directory (chunk tables for its
 * server and reattach, image configs), so a later mount of the same image reads them back
 * instead of fetching them: each is a round trip on the way to a mount's spec. Named by their
 * digest and used only while they still hash to it: a damaged or swapped file costs a fetch,
 * never a wrong answer. Bounded: pruneKeptBlobs keeps the KEPT_MAX_FILES last used of each kind
 * (a read marks a use), and never a file a mount or recovery record still names.
 */
import { digestOfAsync } from "./digest.ts";
import { DIGEST_PATTERN } from "./reference.ts";
import { readRegularFile } from "../../ffi/files.ts";

/** What a state directory keeps, one subdirectory each. */
export type KeptKind = "tables" | "configs";

/** Where `digest` of `kind` is kept (tables keep their `.json` name: specs name the path). */
export function keptBlobPath(stateDir: string, kind: KeptKind, digest: string): string {
  return `${stateDir}/${kind}/${digest.replace(":", "-")}.json`;
}

/** The kept bytes of `digest`, or undefined when missing, unreadable or not matching it. */
export async function readKeptBlob(
  stateDir: string,
  kind: KeptKind,
  digest: string,
): Promise<Uint8Array | undefined> {
  // The digest names a file: only a well-formed one (no path of the registry's choosing).
  if (!DIGEST_PATTERN.test(digest)) return undefined;
  try {
    const path = keptBlobPath(stateDir, kind, digest);
    // A regular file within the bound only: a FIFO or a device there (damage) is a miss too.
    const bytes = await readRegularFile(path, KEPT_MAX_BYTES, "kept blob");
    if (await digestOfAsync(bytes, digest) !== digest) return undefined;
    // A use: pruneKeptBlobs keeps the last used.
    const now = new Date();
    Deno.utime(path, now, now).catch(() => {});
    return bytes;
  } catch {
    return undefined;
  }
}

/** Keeps `bytes` (already checked against `digest`) atomically; resolves with the path. */
export async function keepBlob(
  stateDir: string,
  kind: KeptKind,
  digest: string,
  bytes: Uint8Array,
): Promise<string> {
  if (!DIGEST_PATTERN.test(digest)) throw new RangeError(`malformed digest ${digest}`);
  const path = keptBlobPath(stateDir, kind, digest);
  const dir = `${stateDir}/${kind}`;
  const tmp = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  for (let attempt = 0;; attempt++) {
    try {
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
      await Deno.writeFile(tmp, bytes, { mode: 0o600, createNew: true });
      await Deno.rename(tmp, path);
      return path;
    } catch (error) {
      await Deno.remove(tmp).catch(() => {});
      // Damage in our own directory (a file where the kind's directory goes, a directory where
      // the blob goes): cleared once, then asked again.
      if (attempt > 0 || !clearObstruction(dir, "directory") && !clearObstruction(path, "file")) {
        throw error;
      }
    }
  }
}

/** Removes what is at `path` when it is not a `kind`; true when something was removed. */
function clearObstruction(path: string, kind: "file" | "directory"): boolean {
  try {
    const info = Deno.lstatSync(path);
    if (kind === "file" ? info.isFile : info.isDirectory) return false;
    Deno.removeSync(path, { recursive: true });
    return true;
  } catch {
    return false;
  }
}

/** Largest kept blob read back (a table of a 10 GB image is ~0.4 MB, a config a few KiB). */
const KEPT_MAX_BYTES = 16 << 20;

/** Files kept per kind at most (a table of a 10 GB image is ~0.4 MB, a config a few KiB). */
export const KEPT_MAX_FILES = 256;

/**
 * Removes the least recently used kept files of each kind past `maxFiles`, except those
 * `referenced()` names (a mount's spec or recovery record: its server or reattach reads the
 * table again; asked only when a kind is past the bound). Returns the paths removed; errors
 * leave a file for the next time.
 */
export function pruneKeptBlobs(
  stateDir: string,
  referenced: () => string,
  maxFiles = KEPT_MAX_FILES,
): string[] {
  const removed: string[] = [];
  let named: string | undefined;
  for (const kind of ["tables", "configs"] as const) {
    const dir = `${stateDir}/${kind}`;
    let names: string[];
    try {
      names = [...Deno.readDirSync(dir)].filter((e) => e.isFile).map((e) => e.name);
    } catch {
      continue;
    }
    // Within the bound (every umount but a few): no stat, no reading of the records.
    if (names.length <= maxFiles) continue;
    const files = names.map((name) => {
      const path = `${dir}/${name}`;
      try {
        return { path, usedMs: Deno.statSync(path).mtime?.getTime() ?? 0 };
      } catch {
        return { path, usedMs: 0 };
      }
    });
    files.sort((a, b) => b.usedMs - a.usedMs);
    named ??= referenced();
    for (const { path } of files.slice(maxFiles)) {
      if (named.includes(path)) continue;
      try {
        Deno.removeSync(path);
        removed.push(path);
      } catch { /* next time */ }
    }
  }
  return removed;
}
