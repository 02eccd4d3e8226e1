/**
 * `erofs-oci reattach --watch`: holds a pidfd for the server of every mount and reattaches a
 * mount as soon as its server dies (a pidfd becomes readable when its process exits), with
 * backoff while reattaching fails. Only mounts that can still be recovered are touched: an NBD
 * mount with a connected device, a FUSE mount whose keeper runs. A server stopping on purpose
 * (umount) disconnects its devices or drops its FUSE record first, so it is never revived.
 */
import { closeFd } from "../../ffi/libc.ts";
import { pollAsync, pollFds, POLLIN } from "../../ffi/io.ts";
import { pidfdOpen, reapExitedChildren } from "../../ffi/process.ts";
import { layerOnDevice } from "./nbd_ownership.ts";
import { fuseRecoverable } from "./fuse_recovery.ts";
import { type MountState, readStates, serverOf } from "../state/mount_record.ts";
import { serverAlive } from "../state/server_liveness.ts";
import { listNbdDevices } from "../nbd/sysfs.ts";
import { reattach, type ReattachOutcome } from "./reattach.ts";
import { groupOutcomes } from "./reattach_detail.ts";
import { sleep } from "../timers.ts";

/** How often new and removed mounts are noticed (deaths wake the watcher at once). */
const SCAN_MS = 1_000;
const KEEPER_GONE_MS = 2_000;
const BACKOFF_FIRST_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;
/** Pass interval while reattaches are under way. */
const INFLIGHT_PASS_MS = 200;

export interface WatchOptions {
  /** Stops the watch after the attempt in progress. */
  signal?: AbortSignal;
  /** One line per event (reattached, failed, gave up waiting). */
  report?: (line: string) => void;
}

interface Watched {
  pid: number;
  pidfd: number;
}

interface Backoff {
  delayMs: number;
  nextAtMs: number;
}

function recoverable(state: MountState): boolean {
  if (state.backend === "fuse") return fuseRecoverable(state.id);
  return listNbdDevices().some((device) => layerOnDevice(state, device) >= 0);
}

/** Watches until `signal` aborts; never throws for one mount's trouble. */
export async function watchAndReattach(options: WatchOptions = {}): Promise<void> {
  const report = options.report ?? ((line: string) => console.log(line));
  const watched = new Map<string, Watched>();
  const backoff = new Map<string, Backoff>();
  /**
   * When each FUSE mount was first seen without its keeper (-1: reported). Said once it stays
   * so past KEEPER_GONE_MS: an umount ends the keeper a moment before the mount's state goes.
   */
  const keeperGoneSince = new Map<string, number>();
  /** Reattaches under way, by mount: they run side by side (one registry that hangs kept every
   * other mount dead behind it). */
  const inflight = new Map<string, Promise<void>>();
  const unwatch = (id: string) => {
    const entry = watched.get(id);
    if (entry) closeFd(entry.pidfd);
    watched.delete(id);
  };
  try {
    while (!options.signal?.aborted) {
      // Servers started here that ended since (unmounted, or killed) are reaped, not zombies.
      reapExitedChildren();
      const states = readStates();
      const ids = new Set(states.map((s) => s.id));
      for (const id of [...watched.keys()]) {
        if (!ids.has(id)) {
          unwatch(id);
          backoff.delete(id);
        }
      }
      for (const id of [...keeperGoneSince.keys()]) {
        if (!ids.has(id)) keeperGoneSince.delete(id);
      }
      let nextWakeMs = Date.now() + SCAN_MS;
      for (const state of states) {
        if (options.signal?.aborted) break;
        const server = serverOf(state);
        if (state.backend === "fuse" && keeperGoneSince.get(state.id) !== -1) {
          const since = keeperGoneSince.get(state.id);
          if (fuseRecoverable(state.id)) keeperGoneSince.delete(state.id);
          else if (since === undefined) keeperGoneSince.set(state.id, Date.now());
          else if (Date.now() - since >= KEEPER_GONE_MS) {
            keeperGoneSince.set(state.id, -1);
            report(
              `${state.target}: its FUSE keeper is gone: it cannot be reattached after a server ` +
                "crash (umount and mount it again to get that back)",
            );
          }
        }
        if (watched.get(state.id)?.pid === server.pid && serverAlive(server)) continue;
        if (inflight.has(state.id)) continue;
        unwatch(state.id);
        if (watchServer(state, watched)) continue;
        if (!state.target || !recoverable(state)) continue;
        const delay = backoff.get(state.id);
        if (delay && Date.now() < delay.nextAtMs) {
          nextWakeMs = Math.min(nextWakeMs, delay.nextAtMs);
          continue;
        }
        report(`${state.target}: server ${server.pid} is gone, reattaching`);
        const job = reattachOne(state).then((outcomes) => {
          // One line for the devices of the mount with one result and detail (a refusal of
          // all its layers for one reason); a FUSE mount's outcome is named by its directory.
          for (const group of groupOutcomes(outcomes)) {
            const devices = group.devices.filter((d) => d !== state.target);
            const named = devices.length ? `${devices.join(", ")} ` : "";
            report(`${state.target}: ${named}${group.result}: ${group.detail}`);
          }
          if (outcomes.length > 0 && outcomes.every((o) => o.result !== "failed")) {
            backoff.delete(state.id); // the new server is picked up by the next pass
          } else {
            const delayMs = delay ? Math.min(delay.delayMs * 2, BACKOFF_MAX_MS) : BACKOFF_FIRST_MS;
            backoff.set(state.id, { delayMs, nextAtMs: Date.now() + delayMs });
            report(`${state.target}: retrying in ${delayMs / 1000} s`);
          }
        }).finally(() => inflight.delete(state.id));
        inflight.set(state.id, job);
      }
      // While reattaches run, passes come often enough to pick their new servers up.
      const waitMs = Math.max(0, nextWakeMs - Date.now());
      await waitForExit(
        [...watched.values()],
        inflight.size > 0 ? Math.min(waitMs, INFLIGHT_PASS_MS) : waitMs,
      );
    }
  } finally {
    await Promise.allSettled(inflight.values());
    for (const id of [...watched.keys()]) unwatch(id);
  }
}

/** Opens a pidfd for a live server (checked after opening, against pid reuse). */
function watchServer(state: MountState, watched: Map<string, Watched>): boolean {
  const server = serverOf(state);
  if (!serverAlive(server)) return false;
  let pidfd: number;
  try {
    pidfd = pidfdOpen(server.pid);
  } catch {
    return false; // exited just now
  }
  if (!serverAlive(server)) {
    closeFd(pidfd);
    return false;
  }
  watched.set(state.id, { pid: server.pid, pidfd });
  return true;
}

async function reattachOne(state: MountState): Promise<ReattachOutcome[]> {
  try {
    return await reattach({ dir: state.target });
  } catch (error) {
    return [{
      device: state.target,
      result: "failed",
      detail: error instanceof Error ? error.message : String(error),
    }];
  }
}

/** Waits until one of the servers exits or `timeoutMs` passes (POLLIN on a pidfd: exited). */
async function waitForExit(servers: Watched[], timeoutMs: number): Promise<void> {
  if (servers.length === 0) {
    await sleep(timeoutMs);
    return;
  }
  await pollAsync(pollFds(servers.map((s) => s.pidfd), POLLIN), timeoutMs);
}
