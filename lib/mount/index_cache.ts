/**
 * Clean-up of the durable index copies (indexCacheDir()/<layer>/): a mount keeps each tar
 * layer's index there because reattach — ours, or `mount.erofs --reattach` reading a
 * TARINDEX_OCI_BLOB line — must find it after `--index DIR` is gone. A layer's directory is
 * removed once nothing can need it: no recovery file and no mount's runtime files (of every
 * runtime dir that uses this state dir) name a path inside it, and none of its files was
 * written for PRUNE_AFTER_MS (a mount fetching or reusing an index rewrites its index.json
 * first, so a mount still starting is not robbed).
 */
import { indexCacheDir, runtimeDirsUsingState } from "../state/runtime_dirs.ts";
import { recoveryDir } from "../state/recovery_store.ts";
import { UserError } from "../errors.ts";

export const PRUNE_AFTER_MS = 10 * 60 * 1000;
/** Recovery and state files are small; a bigger one is not ours and is not read whole. */
const MAX_REFERENCE_FILE_BYTES = 1 << 20;
/** All of them together: more is not what mounts write (nothing is pruned then). */
const MAX_REFERENCE_BYTES = 64 << 20;

function filesIn(dir: string, depth: number): string[] {
  const out: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir)];
  } catch {
    return out;
  }
  for (const entry of entries) {
    const path = `${dir}/${entry.name}`;
    if (entry.isFile) out.push(path);
    else if (entry.isDirectory && depth > 0) out.push(...filesIn(path, depth - 1));
  }
  return out;
}

/**
 * Everything recovery files and mount runtime files say (where index paths and kept tables
 * are named).
 */
export function referenceText(
  recoveryFilesDir: string = recoveryDir({ create: false }),
  runtimeRoots: string[] = runtimeDirsUsingState(),
): string {
  const texts: string[] = [];
  const files = [
    ...filesIn(recoveryFilesDir, 0),
    ...runtimeRoots.flatMap((root) => filesIn(`${root}/mounts`, 1)),
  ];
  let total = 0;
  for (const file of files) {
    try {
      const info = Deno.lstatSync(file);
      if (!info.isFile || info.size > MAX_REFERENCE_FILE_BYTES) continue;
      total += info.size;
      if (total > MAX_REFERENCE_BYTES) {
        throw new UserError(
          `the mount records name more than ${MAX_REFERENCE_BYTES >> 20} MiB of text`,
          "look at the runtime dirs listed in the state dir's runtime-dirs/",
        );
      }
      texts.push(Deno.readTextFileSync(file));
    } catch (error) {
      if (error instanceof UserError) throw error;
      /* gone meanwhile */
    }
  }
  return texts.join("\n");
}

function newestWriteMs(dir: string): number {
  let newest = 0;
  for (const file of filesIn(dir, 0)) {
    try {
      newest = Math.max(newest, Deno.statSync(file).mtime?.getTime() ?? 0);
    } catch { /* gone meanwhile */ }
  }
  return newest;
}

/**
 * Removes the layer directories nothing refers to and nothing wrote lately; returns their
 * names. Errors on one directory leave it for the next time.
 */
export function pruneIndexCache(options: {
  cacheDir?: string;
  recoveryDir?: string;
  runtimeRoot?: string;
  nowMs?: number;
} = {}): string[] {
  const cacheDir = options.cacheDir ?? indexCacheDir({ create: false });
  const nowMs = options.nowMs ?? Date.now();
  let layers: string[];
  try {
    layers = [...Deno.readDirSync(cacheDir)].filter((e) => e.isDirectory).map((e) => e.name);
  } catch {
    return [];
  }
  if (layers.length === 0) return [];
  const referenced = referenceText(
    options.recoveryDir ?? recoveryDir({ create: false }),
    options.runtimeRoot === undefined ? undefined : [options.runtimeRoot],
  );
  const removed: string[] = [];
  for (const name of layers) {
    const dir = `${cacheDir}/${name}`;
    if (referenced.includes(`${dir}/`)) continue;
    if (nowMs - newestWriteMs(dir) < PRUNE_AFTER_MS) continue;
    try {
      Deno.removeSync(dir, { recursive: true });
      removed.push(name);
    } catch { /* next time */ }
  }
  return removed;
}
