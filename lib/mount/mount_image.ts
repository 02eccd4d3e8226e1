/**
 * `erofs-oci mount` orchestration: start the detached server for the layers, mount EROFS on
 * what it exports (directly at the target for one layer, as an overlay of private layer
 * mounts for several), record the state; on any failure undo every step taken.
 */
import { MountError, UserError } from "../errors.ts";
import { selfCommand } from "../daemon/self_exec.ts";
import type { ReadyMessage } from "../daemon/mount_server.ts";
import { controlRequest } from "../daemon/control.ts";
import { mountErofsFile, unmountErofs } from "./erofs_file.ts";
import { mountOverlay } from "./overlay.ts";
import {
  controlSocketPath,
  createMountDir,
  killServer,
  logPath,
  mountDir,
  type MountSpec,
  type MountState,
  processStartTicks,
  removeMountDir,
  SERVER_COMMAND,
  serverAlive,
  type ServerProcess,
  writeState,
} from "../state/runtime.ts";
import { describeMountFlags, mountFlags, type MountTrust } from "./mount_options.ts";
import {
  currentMountIds,
  type MountTarget,
  newMountOn,
  pinnedPath,
  recheckMountTarget,
} from "./target_dir.ts";

/** How long `mount` waits for the server to attach every layer. */
const READY_TIMEOUT_MS = 120_000;

export interface MountRequest extends Omit<MountSpec, "id"> {
  /** Keep the server in this process's foreground (debugging, systemd). */
  foreground?: boolean;
  /**
   * The checked target, held open: the mount goes onto this directory (or is refused when
   * the path no longer leads to it), never to where a swapped-in symlink points.
   */
  pinnedTarget?: MountTarget;
  /** setuid bits and device nodes are ignored (nosuid, nodev) unless this says otherwise. */
  trust?: MountTrust;
}

/** Mounts the layers at `request.target`; returns the recorded state. */
export async function mountImage(request: MountRequest): Promise<MountState> {
  const id = createMountDir();
  // Only the MountSpec goes to the server (as JSON): not the descriptor, not the options.
  const { foreground: _foreground, pinnedTarget: _pinned, trust: _trust, ...specFields } = request;
  const spec: MountSpec = { ...specFields, id };
  const undo: (() => Promise<void> | void)[] = [() => removeMountDir(id)];
  try {
    const ready = await startServer(spec, request.foreground ?? false);
    const server = { pid: ready.pid, startTicks: ready.startTicks };
    undo.push(() => stopServer(id, server));

    const trust = request.trust ?? {};
    const pinned = request.pinnedTarget;
    const layerDirs: string[] = [];
    let targetMountId: number | undefined;
    const multi = ready.layers.length > 1 || spec.upper !== undefined;
    for (const [index, layer] of ready.layers.entries()) {
      const dir = multi ? `${mountDir(id)}/layer-${index}` : spec.target;
      if (multi) Deno.mkdirSync(dir, { mode: 0o700 });
      const atTarget = !multi && pinned !== undefined;
      const before = currentMountIds();
      if (atTarget) recheckMountTarget(pinned);
      await mountErofsFile(layer.blockPath, dir, {
        flags: mountFlags(trust),
        mountAt: atTarget ? pinnedPath(pinned) : undefined,
        devicesMapped: spec.layers[index].kind === "registry" &&
          (spec.layers[index] as { tarIndex?: unknown }).tarIndex !== undefined,
      });
      const mountId = atTarget ? newMountOn(pinned, "erofs", before) : undefined;
      targetMountId ??= mountId;
      undo.push(() => unmountErofs(dir, { lazy: true, mountId, fsType: "erofs" }));
      layerDirs.push(dir);
    }
    const writable = spec.upper !== undefined;
    if (multi) {
      const before = currentMountIds();
      if (pinned) recheckMountTarget(pinned);
      // overlayfs wants the top layer first; OCI manifests list the bottom layer first.
      await mountOverlay(spec.target, [...layerDirs].reverse(), {
        upper: spec.upper,
        work: spec.work,
        flags: mountFlags(trust, writable),
        mountAt: pinned ? pinnedPath(pinned) : undefined,
      });
      const mountId = pinned ? newMountOn(pinned, "overlay", before) : undefined;
      targetMountId = mountId;
      undo.push(() => unmountErofs(spec.target, { lazy: true, mountId, fsType: "overlay" }));
    }

    const state: MountState = {
      id,
      target: spec.target,
      image: spec.image,
      manifestDigest: spec.manifestDigest,
      backend: spec.backend,
      serverPid: ready.pid,
      serverStart: ready.startTicks ? { pid: ready.pid, ticks: ready.startTicks } : undefined,
      createdAt: new Date().toISOString(),
      options: describeMountFlags(trust, writable),
      mountId: targetMountId,
      cacheBytes: spec.cacheBytes,
      layers: ready.layers.map((layer, index) => ({
        digest: spec.layers[index].kind === "registry"
          ? (spec.layers[index] as { digest: string }).digest
          : undefined,
        blockPath: layer.blockPath,
        device: layer.device,
        recoveryFile: layer.recoveryFile,
        layerDir: layerDirs[index],
      })),
      overlay: multi,
    };
    writeState(state);
    return state;
  } catch (error) {
    for (const step of undo.reverse()) {
      try {
        await step();
      } catch { /* keep undoing the rest */ }
    }
    throw error;
  }
}

/**
 * The server's memory settings, unless the caller set them: V8's young generation at 1 MiB
 * per semispace instead of growing to 16 (the server's garbage is short-lived request
 * buffers), and glibc's mmap threshold fixed at 128 KiB, so freed fetch buffers go back to
 * the kernel instead of raising the threshold and staying in malloc arenas. Host benchmark,
 * cold read of the 136 MB image: server peak RSS 181-198 -> 157 MB, RSS after it 181 -> 117 MB.
 */
const SERVER_MEMORY_ENV: Record<string, string> = Object.fromEntries(
  [["DENO_V8_FLAGS", "--max-semi-space-size=1"], ["MALLOC_MMAP_THRESHOLD_", "131072"]]
    .filter(([name]) => Deno.env.get(name) === undefined),
);

/** A server that reported ready; `startTicks` identifies the process beyond its pid. */
export type ReadyServer = Extract<ReadyMessage, { ok: true }> & { startTicks?: string };

/**
 * Starts the detached server for `spec` and waits until it reports its exports. Record
 * `startTicks` with the pid (MountState.serverStart) so a reused pid is never taken for it.
 */
export async function startServer(
  spec: MountSpec,
  foreground: boolean,
): Promise<ReadyServer> {
  const [program, ...args] = selfCommand([SERVER_COMMAND]);
  const child = new Deno.Command(program, {
    args,
    env: SERVER_MEMORY_ENV,
    stdin: "piped",
    stdout: "piped",
    stderr: foreground ? "inherit" : "null",
    detached: !foreground,
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(spec)));
  await writer.close();

  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new MountError(
            `the mount server did not get ready in ${READY_TIMEOUT_MS / 1000} s`,
            `see ${logPath(spec.id)}`,
          ),
        ),
      READY_TIMEOUT_MS,
    );
  });
  try {
    while (!text.includes("\n")) {
      const { value, done } = await Promise.race([reader.read(), timeout]);
      if (done) break;
      text += value;
    }
  } catch (error) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    throw error;
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
  if (!foreground) child.unref();
  const line = text.split("\n")[0];
  let ready: ReadyMessage;
  try {
    ready = JSON.parse(line) as ReadyMessage;
  } catch {
    const status = await child.status;
    throw new MountError(
      `the mount server exited (code ${status.code}) before it was ready`,
      `see ${logPath(spec.id)} or run with --foreground`,
    );
  }
  if (!ready.ok) {
    await child.status;
    throw new UserError(ready.error, ready.hint);
  }
  // Our child until this process exits (a zombie at worst), so the pid cannot be reused yet.
  return { ...ready, startTicks: processStartTicks(ready.pid) };
}

/**
 * Asks the server to release its exports and exit; kills it (through a pidfd, only if it is
 * still that process) if it does not.
 */
export async function stopServer(
  id: string,
  server: ServerProcess,
  timeoutMs = 15_000,
): Promise<void> {
  await controlRequest(controlSocketPath(id), { command: "stop" });
  const deadline = Date.now() + timeoutMs;
  while (serverAlive(server) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  killServer(server);
}
