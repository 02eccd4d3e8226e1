/**
 * A mount being set up, before its record (state.json) is written: `mount` notes itself in the
 * mount's runtime dir when it makes it (pending.json) and the server notes itself when it gets
 * its spec (server.json). When both are gone and no record was written — killed together, say a
 * service's whole cgroup stopped while it mounted — nothing else would ever clear what they
 * left (layers mounted, maybe at DIR, a FUSE keeper, NBD devices): list showed nothing, umount
 * said DIR was not mounted by erofs-oci and a new mount said it was. These notes let umount
 * find such leftovers (lib/daemon/orphaned_mounts.ts).
 */
import { processStartTicks } from "./server_liveness.ts";
import { mountDir, MOUNTS_DIR, writeRuntimeFile } from "./runtime_dirs.ts";
import { statePath } from "./mount_record.ts";
import { parseJson } from "../json.ts";
import { pathExists, readRegularFileSync } from "../../ffi/files.ts";

/** A process as noted: pid and start time (a pid alone may be reused). */
interface NotedProcess {
  pid: number;
  startTicks: string;
}

/** A mount whose command and server are gone without a record: its id and target. */
export interface OrphanedMount {
  id: string;
  target: string;
}

const PENDING = "pending.json";
const SERVER = "server.json";

/** `mount`: notes this process and the target in the new mount's runtime dir. */
export function notePendingMount(id: string, target: string): void {
  writeNote(id, PENDING, { ...thisProcess(), target });
}

/** The mount's record is written: its notes go (they describe a mount in progress). */
export function forgetPendingMount(id: string): void {
  for (const name of [PENDING, SERVER]) {
    try {
      Deno.removeSync(`${mountDir(id)}/${name}`);
    } catch { /* not there */ }
  }
}

/** The mount server: notes itself in its mount's runtime dir (when there is one). */
export function notePendingServer(id: string): void {
  try {
    writeNote(id, SERVER, thisProcess());
  } catch { /* no such dir (a reattach of an unrecorded device): nothing to note */ }
}

/**
 * The mounts whose runtime dir has no record and whose command and server (as noted) are both
 * gone. A dir without a note (being made right now, or made by a version without notes) is
 * left alone.
 */
export function orphanedMounts(): OrphanedMount[] {
  let names: string[];
  try {
    names = [...Deno.readDirSync(MOUNTS_DIR)].filter((e) => e.isDirectory).map((e) => e.name);
  } catch {
    return [];
  }
  const orphans: OrphanedMount[] = [];
  for (const id of names) {
    if (pathExists(statePath(id))) continue;
    const pending = readNote(id, PENDING);
    if (!pending || typeof pending.target !== "string" || alive(pending)) continue;
    const server = readNote(id, SERVER);
    if (server && alive(server)) continue; // it undoes the mount itself (watchForRecord)
    // Written meanwhile (the command finished between the looks): not an orphan.
    if (pathExists(statePath(id))) continue;
    orphans.push({ id, target: pending.target });
  }
  return orphans;
}

function thisProcess(): NotedProcess {
  return { pid: Deno.pid, startTicks: processStartTicks(Deno.pid) ?? "" };
}

function alive(noted: Record<string, unknown>): boolean {
  if (typeof noted.pid !== "number" || typeof noted.startTicks !== "string") return true;
  const ticks = processStartTicks(noted.pid);
  return ticks !== undefined && ticks === noted.startTicks;
}

function writeNote(id: string, name: string, value: unknown): void {
  writeRuntimeFile(`${mountDir(id)}/${name}`, JSON.stringify(value));
}

/** A note is a pid, a start time and a path: a few KiB at most. */
const MAX_NOTE_BYTES = 64 << 10;

function readNote(id: string, name: string): Record<string, unknown> | undefined {
  try {
    const bytes = readRegularFileSync(`${mountDir(id)}/${name}`, MAX_NOTE_BYTES, "mount note");
    const value = parseJson(new TextDecoder().decode(bytes));
    return value && typeof value === "object" ? value as Record<string, unknown> : undefined;
  } catch {
    return undefined;
  }
}
