/**
 * `reattach` of a FUSE mount whose server died: its keeper still holds the /dev/fuse
 * descriptors (so the mounts stayed and readers wait), and a new server takes them over. The
 * layers come from the record the first server wrote: the same digests, so the same bytes.
 */
import { FUSE_TAKEOVER_ID, fuseRecoverable, readFuseRecovery } from "./fuse_recovery.ts";
import { startServer } from "./server_process.ts";
import {
  type MountSpec,
  type MountState,
  serverAlive,
  serverOf,
  writeState,
} from "../state/runtime.ts";
import type { ReattachOutcome } from "./reattach.ts";
import { failureDetail } from "./reattach_detail.ts";

export async function reattachFuseMount(state: MountState): Promise<ReattachOutcome> {
  const device = state.target;
  const server = serverOf(state);
  if (serverAlive(server)) {
    return { device, result: "alive", detail: `served by pid ${server.pid}, left alone` };
  }
  const record = fuseRecoverable(state.id) ? readFuseRecovery(state.id) : undefined;
  if (!record) {
    return {
      device,
      result: "failed",
      detail: "its FUSE connection is gone (no keeper): unmount it and mount again",
    };
  }
  const spec: MountSpec = {
    ...record.spec,
    id: state.id,
    backend: "fuse",
    reattach: record.spec.layers.map((_, index) => ({ index, backendId: FUSE_TAKEOVER_ID })),
    awaitSource: undefined,
    // States written before these fields existed: what the first server was given.
    metricsListen: state.metricsListen ?? record.spec.metricsListen,
    logFormat: state.logFormat ?? record.spec.logFormat,
    diskCache: state.diskCache ?? record.spec.diskCache,
  };
  try {
    const ready = await startServer(spec, false);
    writeState({
      ...state,
      serverPid: ready.pid,
      serverStart: ready.startTicks ? { pid: ready.pid, ticks: ready.startTicks } : undefined,
      reattachedAt: new Date().toISOString(),
    });
    return { device, result: "reattached", detail: `new server pid ${ready.pid}` };
  } catch (error) {
    return {
      device,
      result: "failed",
      detail: failureDetail(error),
    };
  }
}
