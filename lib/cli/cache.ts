import { plural, printable } from "../text.ts";
import type { Command } from "./command.ts";
import { warn } from "../log.ts";
import { nearestOption, parseCommandArgs } from "./command.ts";
import { UsageError, UserError } from "../errors.ts";
import { DEFAULT_DISK_CACHE_BYTES, DiskCache } from "../source/disk_cache.ts";
import { DEFAULT_DISK_CACHE_DIR, diskCacheDir } from "../source/disk_cache_dir.ts";
import { blobTotals, type CachedBlob } from "../source/disk_cache_contents.ts";
import { availableBytesOf } from "../source/disk_cache_fs.ts";
import { shownOrigin } from "../source/disk_cache_names.ts";
import { parseDurationMs, parseSize } from "./size.ts";
import { indexedHereRoot } from "../state/runtime_dirs.ts";
import { readStates } from "../state/mount_record.ts";
import { formatBytes, printTable } from "./table.ts";

const DEFAULT_SIZE = formatBytes(DEFAULT_DISK_CACHE_BYTES);

export const cacheCommand: Command = {
  name: "cache",
  summary: "show what the host's disk cache holds, or prune it",
  help: `Usage: erofs-oci cache [--json]
       erofs-oci cache prune [--keep SIZE] [--older-than TIME] [--json]

Shows the host's disk cache of fetched layer bytes ($EROFS_OCI_CACHE_DIR, default
${DEFAULT_DISK_CACHE_DIR}), shared by every mount and \`serve\`: per layer blob its digest,
the registry its bytes came from ("(checked)": each chunk was checked against the layer's
chunk-digest table before it was kept), how much of it is here, the bytes on disk, which
mount (or a \`serve\`: "yes") has it open (IN USE) and when it was last used. Each mount
keeps the cache under its --disk-cache-size (default ${DEFAULT_SIZE}), evicting blobs no
process has open and chunks of its own (give every mount the same bound), and leaves
its --disk-cache-keep-free on the cache's file system (default 10% of it, at most 4 GiB),
evicting least recently used blobs first, then least recently read parts of those it has
open.

prune removes the blobs no process has open, least recently used first, until at most
--keep SIZE is left (default: every unused blob), with --older-than only those last used
longer ago than that (e.g. 30d, from a daily timer). Blobs in use are left whole, so no mount
notices; a removed blob is fetched again when a later mount reads it. The indexes
\`mount --index-missing\` made are shown too, never pruned: they are their only copy.

Options:
  --keep SIZE         prune: stop once the cache holds at most SIZE (e.g. 1G)
  --older-than TIME   prune: only blobs last used longer ago (90m, 12h, 30d)
  --json              print JSON instead of a table
  -h, --help`,
  run(argv) {
    const { values, positionals } = parseCommandArgs("cache", argv, {
      keep: { type: "string" },
      "older-than": { type: "string" },
      json: { type: "boolean" },
    });
    const action = positionals[0] ?? "list";
    if (action !== "list" && action !== "prune") {
      // A typo of an action (`prne`): said as such, as a typo of an option is.
      const near = nearestOption(action, ["list", "prune"]);
      throw new UsageError(
        `cache: unknown action '${action}'${near ? ` (did you mean ${near}?)` : ""}`,
        "usage: erofs-oci cache [prune] [options]",
      );
    }
    if (positionals.length > 1) {
      throw new UsageError(
        `cache: unexpected argument '${positionals[1]}'`,
        "usage: erofs-oci cache [prune] [options]",
      );
    }
    if (action === "list" && (values.keep ?? values["older-than"]) !== undefined) {
      throw new UsageError(
        `cache: ${values.keep !== undefined ? "--keep" : "--older-than"} goes with prune`,
        values.keep !== undefined
          ? "e.g. erofs-oci cache prune --keep 1G"
          : "e.g. erofs-oci cache prune --older-than 30d",
      );
    }
    const keepBytes = values.keep === undefined ? 0 : parseSize(values.keep, "--keep");
    const olderThan = values["older-than"];
    const usedBeforeMs = olderThan === undefined ? Infinity : Date.now() -
      parseDurationMs(olderThan, "--older-than", {
        maxMs: 100 * 365 * 86_400_000,
        hint: "use a number with a unit: 90m, 12h, 30d",
        // A bare number was seconds: `--older-than 30` pruned nearly everything.
        unitRequired: true,
      });
    // First: a state dir refused is said before a prune removed anything.
    const hereDir = indexedHereRoot({ create: false });
    const dir = diskCacheDir();
    const cache = openExisting(dir);
    const pruned = cache && action === "prune" ? cache.prune(keepBytes, usedBeforeMs) : undefined;
    if (pruned?.failed) {
      const { blobs: count, first } = pruned.failed;
      throw new UserError(
        `cache prune: cannot remove ${plural(count, "blob")} of ${
          printable(dir)
        } (${first.message})` +
          (pruned.removedBlobs ? `; removed ${plural(pruned.removedBlobs, "blob")}` : ""),
        "the cache's directory must be writable: remount its file system read-write, and " +
          "prune as root",
      );
    }
    const blobs = cache?.blobs() ?? [];
    const { bytesOnDisk, blobsInUse } = blobTotals(blobs);
    const indexedHere = indexesMadeHere(hereDir);
    const fileSystemFreeBytes = cache ? availableBytesOf(dir) : undefined;
    if (values.json) {
      console.log(
        JSON.stringify(
          { dir, bytesOnDisk, fileSystemFreeBytes, ...pruned, blobs, indexedHere },
          null,
          2,
        ),
      );
      return Promise.resolve(0);
    }
    if (pruned) {
      console.log(
        `removed ${plural(pruned.removedBlobs, "blob")} (${formatBytes(pruned.freedBytes)} freed)`,
      );
      // A --keep the cache is still above: said, with why (blobs in use are never removed).
      if (keepBytes > 0 && bytesOnDisk > keepBytes) {
        warn(
          `${formatBytes(bytesOnDisk)} remain, above --keep ${formatBytes(keepBytes)}` +
            (blobsInUse ? ` (${plural(blobsInUse, "blob")} in use by mounts)` : "") +
            (olderThan === undefined
              ? ": blobs in use are kept"
              : ": blobs in use, or used within --older-than, are kept"),
        );
      }
    }
    console.log(
      `${printable(dir)}: ${plural(blobs.length, "blob")}, ${formatBytes(bytesOnDisk)} on disk` +
        (blobsInUse ? `, ${blobsInUse} in use` : "") +
        (fileSystemFreeBytes === undefined
          ? ""
          : `; ${formatBytes(fileSystemFreeBytes)} free on its file system`),
    );
    if (blobs.length && action === "list") printBlobs(blobs);
    if (indexedHere.layers) {
      console.log(
        `${printable(indexedHere.dir)}: indexes of ${
          plural(indexedHere.layers, "tar layer")
        } made by ` +
          `mount --index-missing, ${formatBytes(indexedHere.bytes)} (kept; not pruned)`,
      );
    }
    return Promise.resolve(0);
  },
};

/** DiskCache.openExisting, its refusal as a user error: mounts would not use it either. */
function openExisting(dir: string): DiskCache | undefined {
  try {
    return DiskCache.openExisting(dir);
  } catch (error) {
    const message = (error as Error).message;
    // Not damage: a user's look at root's cache (mounts, run as root, read it fine).
    if (Deno.uid() !== 0 && /permission denied/i.test(message)) {
      throw new UserError(message, "the disk cache is root's: run erofs-oci cache as root (sudo)");
    }
    throw new UserError(
      message,
      "mounts do not use it either; make it root's and 0700, the directories above it " +
        "writable by root only, or remove it",
    );
  }
}

function printBlobs(blobs: CachedBlob[]): void {
  const layers = mountStates().flatMap((state) =>
    state.layers.map((layer) => ({ ...layer, target: state.target }))
  );
  /** The targets of the mounts reading `blob`: the file set of its digest and origin. */
  const mountedAt = (blob: CachedBlob) => {
    const targets = layers.filter((layer) =>
      layer.digest === blob.digest && keptUnder(blob, layer.cacheOrigin)
    ).map((layer) => layer.target);
    return targets.length ? [...new Set(targets)].join(",") : undefined;
  };
  printTable(
    ["DIGEST", "FROM", "CACHED", "ON DISK", "IN USE", "LAST USED"],
    blobs.map((blob) => [
      blob.digest.slice(0, 19),
      blob.origin === "verified" || !blob.tableChecked ? blob.origin : `${blob.origin} (checked)`,
      blob.chunks
        // Floored: 100% only when every chunk is here.
        ? `${Math.floor(blob.chunksPresent * 100 / blob.chunks)}% of ${formatBytes(blob.sizeBytes)}`
        : "-",
      formatBytes(blob.bytesOnDisk),
      // A blob open with no mount of it is a `serve` (or a mount of another runtime dir).
      blob.inUse ? (mountedAt(blob) ?? "yes") : "no",
      new Date(blob.lastUsedMs).toISOString().slice(0, 19) + "Z",
    ]),
  );
}

/**
 * Whether a mount layer's bytes are kept in `blob`'s file set. A blob fetched from two
 * registries has a file set per origin; a record without the origin (written before it was
 * recorded) matches each, and "verified" bytes are shared by every origin.
 */
function keptUnder(blob: CachedBlob, cacheOrigin: string | undefined): boolean {
  if (cacheOrigin === undefined || blob.origin === "verified") return true;
  const kept = shownOrigin(cacheOrigin);
  return kept.origin === blob.origin && kept.tableChecked === blob.tableChecked;
}

/**
 * The indexes `mount --index-missing` made here: the only copy of them (a later mount of any
 * image with such a layer is lazy from the start), so shown, never pruned.
 */
function indexesMadeHere(dir: string): { dir: string; layers: number; bytes: number } {
  let layers = 0, bytes = 0;
  try {
    for (const layer of Deno.readDirSync(dir)) {
      if (!layer.isDirectory) continue;
      layers++;
      for (const file of Deno.readDirSync(`${dir}/${layer.name}`)) {
        bytes += (Deno.lstatSync(`${dir}/${layer.name}/${file.name}`).blocks ?? 0) * 512;
      }
    }
  } catch { /* none yet, or unreadable: nothing to show */ }
  return { dir, layers, bytes };
}

/** The recorded mounts, or none when they cannot be read (the table then says "yes"). */
function mountStates() {
  try {
    return readStates();
  } catch {
    return [];
  }
}
