/**
 * `mount`'s side of the recorded prefetch: find the image's trace in the registry, check it
 * against the layers being mounted, and hand it to the server in a private file (named in
 * PREFETCH_FILE_ENV). A missing or refused trace never fails the mount: it only warns.
 */
import type { RegistryClient } from "../oci/client.ts";
import type { LayerSpec } from "../state/mount_spec.ts";
import { warn } from "../log.ts";
import { checkRuntimeRoot, RUNTIME_ROOT } from "../state/runtime_dirs.ts";
import { removeAbandonedTemps } from "../../ffi/new_file_in_dir.ts";
import { openDirNoSymlinks } from "../../ffi/path_resolve.ts";
import { closeFd } from "../../ffi/libc.ts";
import { findTrace } from "./artifact.ts";
import { after } from "../timers.ts";
import { OciError } from "../errors.ts";
import { parseTrace, rangesForLayers } from "./format.ts";
import { PREFETCH_FILE_ENV, PREFETCH_SUBSET_ENV, TRACE_RECORD_ENV } from "./server_hooks.ts";

/** What findTrace found for a manifest, looked up ahead of prepareTracePrefetch. */
export type TraceLookup = Promise<Awaited<ReturnType<typeof findTrace>>>;

/**
 * Starts the trace lookup of `manifestDigest` (mount: as soon as the manifest is fetched, side
 * by side with the rest of the resolution); undefined while a trace is recorded. Its failure
 * is reported by the prepareTracePrefetch it is given to.
 */
export function lookUpTrace(
  client: RegistryClient,
  repository: string,
  manifestDigest: string,
): TraceLookup | undefined {
  if (Deno.env.get(TRACE_RECORD_ENV)) return undefined;
  const lookup = findTraceInTime(client, repository, manifestDigest);
  lookup.catch(() => {}); // awaited (and warned about) by prepareTracePrefetch, or dropped
  return lookup;
}

/**
 * How long a mount waits for its image's trace: an optional speed-up, it must not hold the
 * mount up (a registry that never answered the trace's GET held it for 61 s, two 30 s stalls).
 */
export const TRACE_LOOKUP_MS = 10_000;

/** findTrace, given up after TRACE_LOOKUP_MS (its requests aborted, the error says so). */
async function findTraceInTime(
  client: RegistryClient,
  repository: string,
  manifestDigest: string,
): ReturnType<typeof findTrace> {
  const controller = new AbortController();
  const timer = after(TRACE_LOOKUP_MS, () => controller.abort());
  try {
    return await findTrace(client, repository, manifestDigest, controller.signal);
  } catch (error) {
    if (!controller.signal.aborted) throw error;
    throw new OciError(
      `the registry did not answer the trace lookup in ${TRACE_LOOKUP_MS / 1000} s`,
    );
  } finally {
    timer.cancel();
  }
}

/**
 * Returns the file to remove once the server has started (it reads it at start). `lookup`:
 * lookUpTrace of the same manifest, started earlier.
 */
export async function prepareTracePrefetch(
  client: RegistryClient,
  repository: string,
  manifestDigest: string | undefined,
  layers: LayerSpec[],
  options: { subset?: boolean; lookup?: TraceLookup } = {},
): Promise<string | undefined> {
  // `erofs-oci trace` records on a fresh mount: no prefetch may blur what the app reads.
  if (!manifestDigest || Deno.env.get(TRACE_RECORD_ENV)) return undefined;
  let bytes: Uint8Array;
  try {
    const found = await (options.lookup ?? findTraceInTime(client, repository, manifestDigest));
    if (!found) return undefined;
    bytes = found.bytes;
    const ranges = rangesForLayers(parseTrace(bytes), layers, options);
    if (ranges.length === 0) return undefined;
  } catch (error) {
    warn(`trace refused, mounting without prefetch: ${(error as Error).message}`);
    return undefined;
  }
  // In the runtime dir, root's alone (checked), made new: in TMPDIR another user who could
  // write there swapped a symlink in between, and root's write followed it (any file cut and
  // overwritten; a helper's repro), or a FIFO the server then hung on.
  checkRuntimeRoot();
  Deno.mkdirSync(RUNTIME_ROOT, { recursive: true, mode: 0o700 });
  removeAbandonedPrefetchFiles();
  const path = `${RUNTIME_ROOT}/${PREFETCH_PREFIX}${crypto.randomUUID().slice(0, 8)}.json`;
  try {
    Deno.writeFileSync(path, bytes, { mode: 0o600, createNew: true });
  } catch (error) {
    // A small /run (up to 8 MiB a trace): the mount goes on without it, as for any trace
    // trouble, and leaves no part of it behind.
    try {
      Deno.removeSync(path);
    } catch { /* not made */ }
    warn(`trace not handed to the server, mounting without prefetch: ${(error as Error).message}`);
    return undefined;
  }
  Deno.env.set(PREFETCH_FILE_ENV, path);
  if (options.subset) Deno.env.set(PREFETCH_SUBSET_ENV, "1");
  return path;
}

const PREFETCH_PREFIX = "prefetch-";
/** A handed-over file older than this was left by a mount killed before its server read it. */
const ABANDONED_AFTER_MS = 10 * 60 * 1000;

/** Removes what killed mounts left (nothing else removes them before a reboot empties /run). */
function removeAbandonedPrefetchFiles(): void {
  let dirFd: number;
  try {
    dirFd = openDirNoSymlinks(RUNTIME_ROOT);
  } catch {
    return; // the write below says what is wrong with the directory
  }
  try {
    removeAbandonedTemps(RUNTIME_ROOT, dirFd, PREFETCH_PREFIX, ".json", ABANDONED_AFTER_MS);
  } finally {
    closeFd(dirFd);
  }
}

/** Removes the handed-over file (the server has read it, or failed to start). */
export function forgetTracePrefetch(path: string | undefined): void {
  if (!path) return;
  Deno.env.delete(PREFETCH_FILE_ENV);
  Deno.env.delete(PREFETCH_SUBSET_ENV);
  try {
    Deno.removeSync(path);
  } catch { /* gone */ }
}
