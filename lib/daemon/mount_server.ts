/**
 * The detached server behind one mount: builds a cached source per layer, exports each to the
 * kernel (NBD device or FUSE file), reports readiness to the `mount` process on stdout, then
 * serves until told to stop. Started as `erofs-oci __mount-server` with the MountSpec on stdin.
 */
import { QUIET_START } from "../source/background_windows.ts";
import { after, waitAtMost } from "../timers.ts";
import type { Source } from "../source/source.ts";
import {
  controlSocketPath,
  keepFailedServerLog,
  logPath,
  removeMountDir,
  RUNTIME_ROOT,
} from "../state/runtime_dirs.ts";
import { notePendingServer } from "../state/pending_mount.ts";
import type { MountSpec } from "../state/mount_spec.ts";
import { type Adoption, recordedAsServer, watchForAdoption, watchForRecord } from "./adoption.ts";
import { testHold } from "../test_pause.ts";
import { ServedLayers } from "./server_layers.ts";
import { discardSpareFuseReaders, prestartFuseReaders } from "../fuse/blob.ts";
import { type HandedSpec, takeHandedSettings } from "./server_process.ts";
import { NEW_SESSION_ENV, PRESTART_READER_ENV, SPAWNED_BY_ENV } from "./server_spawn.ts";
import { discardSpareNbdReaders, prestartNbdReaders } from "../nbd/direct_conns.ts";
import {
  diskCacheTurnedOff,
  type HandedSidecar,
  readListedMetadataAhead,
  sharedDiskCache,
  useDiskCacheSettings,
} from "../mount/layer_source.ts";
import { ServerTraceHooks } from "../trace/server_hooks.ts";
import { type ControlReply, serveControl } from "./control.ts";
import { bindPrivately } from "../nbd/address.ts";
import { redirectConsoleToFile } from "./log_file.ts";
import { EROFS_SUPER_END } from "../erofs/superblock.ts";
import { startServerMetrics } from "../metrics/server_metrics.ts";
import { setLogFormat, warn } from "../log.ts";
import {
  Errno,
  hostRefusal,
  OUT_OF_DESCRIPTORS_HINT,
  plainOsErrors,
  UserError,
} from "../errors.ts";
import { statFs } from "../../ffi/files.ts";
import { ownMemory } from "../metrics/server_memory.ts";
import { errno, libc, strerror } from "../../ffi/libc.ts";
import { readableNow, setPipeCapacity } from "../../ffi/io.ts";
import { layerFetchMetrics } from "../metrics/layer_metrics.ts";
import { mark, markHeldEventLoop } from "../timing.ts";
import { loadNodeCrypto } from "../node_builtins.ts";
import { readSpecAndMetadata } from "./handed_metadata.ts";
import { sidecarPackDigest } from "../verify/load_metadata_ranges.ts";
import {
  forgetFuseRecovery,
  fuseRecoveryStatus,
  protectFuseMount,
  readFuseRecovery,
  stopFuseKeeper,
} from "./fuse_recovery.ts";

/** First line the server writes on stdout: success with the exported paths, or the error. */
export type ReadyMessage =
  | {
    ok: true;
    pid: number;
    /** Reattach of an unreachable registry: devices are taken over once it answers. */
    waiting?: boolean;
    layers: {
      blockPath: string;
      device: string;
      recoveryFile?: string;
      /** base64 of the layer's first EROFS_SUPER_END bytes (what `mount` checks first). */
      head?: string;
    }[];
  }
  | { ok: false; error: string; hint?: string };

function writeReady(message: ReadyMessage): void {
  const bytes = new TextEncoder().encode(JSON.stringify(message) + "\n");
  try {
    Deno.stdout.writeSync(bytes);
  } catch { /* the mount process is gone; it cleans up on its side */ }
}

/**
 * How long `mount` waits for the directory metadata prefetch before saying ready; past it the
 * prefetch goes on in the background (the kernel's early reads then go through the cache).
 */
const PREFETCH_DEADLINE_MS = 10_000;

/**
 * base64 of the first EROFS_SUPER_END bytes `source` serves (pinned by the metadata prefetch
 * by now), or undefined if they cannot be read: `mount` then reads them through the export.
 */
async function headOf(source: Source): Promise<string | undefined> {
  try {
    const bytes = await source.read(0, Math.min(EROFS_SUPER_END, source.size));
    let text = "";
    for (const byte of bytes) text += String.fromCharCode(byte);
    return btoa(text);
  } catch {
    return undefined;
  }
}

/** stdin's capacity: the listed metadata of most images. */
const HANDED_PIPE_BYTES = 4 << 20;

function discardSpareReaders(): void {
  discardSpareFuseReaders();
  discardSpareNbdReaders();
}

/** The pid SPAWNED_BY_ENV names (else our parent's), removed from what children inherit. */
function spawnedBy(): number {
  const named = Number(Deno.env.get(SPAWNED_BY_ENV));
  Deno.env.delete(SPAWNED_BY_ENV);
  return Number.isSafeInteger(named) && named > 1 ? named : Deno.ppid;
}

/** Entry of the hidden `__mount-server` command. */
export async function runMountServer(): Promise<number> {
  mark("server: main");
  keepServingAfterUnhandledRejections();
  await testHold("server-main");
  // The `mount` (or `reattach`) that started us: watched until it has recorded the mount.
  const cliPid = spawnedBy();
  markHeldEventLoop("server");
  const inCliSession = !leaveCliSession();
  // The spec and the listed metadata `mount` fetched (2.2 MB for the benchmark image) come on
  // stdin: with room for all of it the CLI writes it in one go, instead of 64 KiB at a time,
  // each waiting until this process (busy opening its layers) has read the last.
  setPipeCapacity(0, HANDED_PIPE_BYTES);
  // A reader thread's start holds this thread 35-45 ms (Deno waits for the new runtime): while
  // the spec is still coming, that costs nothing. A spec already here (a remount, where `mount`
  // needs no GET before it) is read first, so the disk reads it starts run meanwhile.
  const prestart = readableNow(0) ? undefined : Deno.env.get(PRESTART_READER_ENV);
  if (prestart === "fuse") prestartFuseReaders(1);
  if (prestart === "nbd") prestartNbdReaders(1);
  if (prestart) mark("server: reader thread started ahead");
  let spec: MountSpec;
  let handedMetadata: Promise<(HandedSidecar | undefined)[]>;
  try {
    const handed = await readSpecAndMetadata(Deno.stdin);
    // Each layer's check starts as soon as its bytes are in, while the layers open.
    handedMetadata = handed.metadata.then((all) => {
      if (all.some(Boolean)) mark("server: handed metadata read");
      return all.map((bytes) => bytes && { bytes, packDigest: sidecarPackDigest(bytes) });
    });
    spec = takeHandedSettings(JSON.parse(handed.specText) as HandedSpec);
    // The mount's own, also when `reattach` (run with any settings) starts this server.
    if (spec.diskCache) useDiskCacheSettings(spec.diskCache);
  } catch (error) {
    discardSpareReaders();
    throw error;
  }
  mark("server: spec");
  if (!spec.reattach) notePendingServer(spec.id);
  readListedMetadataAhead(spec.layers);
  if (spec.backend === "fuse") prestartFuseReaders(spec.layers.length);
  // NBD reader threads serve direct reads only: registry EROFS layers on the disk cache.
  else if (!diskCacheTurnedOff()) {
    prestartNbdReaders(spec.layers.filter((l) => l.kind === "registry" && !l.tarIndex).length);
  }
  // The mount's own format, also when `reattach` (run with any format) starts this server.
  if (spec.logFormat) setLogFormat(spec.logFormat);
  try {
    redirectConsoleToFile(logPath(spec.id));
  } catch (error) {
    // Its start said nothing before: "exited (code 1) before it was ready", the cause unseen.
    writeReady({
      ok: false,
      ...startFailure(
        new Error(`cannot open the server log ${logPath(spec.id)}: ${(error as Error).message}`),
      ),
      hint: noRoomHint(error, RUNTIME_ROOT),
    });
    discardSpareReaders();
    return 1;
  }
  console.log(`server ${Deno.pid} starting for ${spec.image} at ${spec.target}`);

  let listener: Deno.Listener | undefined;
  let stopping: Promise<void> | undefined;
  const traceHooks = new ServerTraceHooks(spec.layers);
  const layers = new ServedLayers(spec, handedMetadata, traceHooks);
  const { sources, exports } = layers;
  let fuseTakeoverFailed = false;
  const layerStats = () =>
    sources.map((s, i) => ({
      ...s.stats(),
      directReads: exports[i]?.directReads(),
      ...layerFetchMetrics(spec.layers[i]),
      tracePrefetch: traceHooks.progress(i),
    }));

  // Each step is tried whatever the others did: a step that fails (out of descriptors, the
  // keeper step could not even list /proc) must not leave the layers exported. The layers go
  // first, which also gives back most of the descriptors the keeper step needs.
  // A signal (not `umount`, which unmounts DIR first and asks over the control socket) may
  // come while DIR's mounts still use the exports: FUSE files stay with the keeper, NBD devices
  // stay connected, each with its record, as after a crash, so `reattach` (and `reattach
  // --watch`) serve DIR again; a server does not own DIR's mounts, and releasing the exports
  // under them would leave DIR failing (ENOTCONN, EIO) for good.
  /** The watch for `mount`'s record (a server `mount` started, once ready). */
  let adoption: Adoption | undefined;
  const stop = (by?: "signal") =>
    stopping ??= (async () => {
      console.log("stopping");
      await stopStep("control socket", () => listener?.close());
      let kept = false;
      await stopStep("layers", async () => {
        // Left in place only for a recorded mount whose CLI is not there to unmount it: in
        // the CLI's session (`mount --foreground`) a signal for the whole group (a service's
        // stop) reaches both, and the CLI unmounts DIR and then stops us; before the record, a
        // mount left in place would be known to nobody.
        // A server reattach started serves a recorded mount even before reattach has written
        // its pid there: a signal in between must not undo the mount's crash recovery.
        const keepInUse = by === "signal" && !inCliSession &&
          (spec.reattach !== undefined || recordedAsServer(spec.id));
        if (by === "signal" && !inCliSession && !keepInUse && await adoption?.undoUnrecorded()) {
          console.error("stopped before the mount command recorded the mount: it is undone");
        }
        kept = await layers.close({ keepInUse }) === "kept";
      });
      await stopStep("spare readers", discardSpareReaders);
      if (kept) {
        console.error(
          spec.backend === "nbd"
            ? nbdLeftForReattach(spec, exports.map((e) => e.device))
            : leftForReattach(spec),
        );
      } else if (spec.backend === "fuse" && !fuseTakeoverFailed) {
        // A takeover that failed leaves the keeper and its record to the next attempt.
        await stopStep("FUSE keeper", async () => {
          await stopFuseKeeper(spec.id);
          forgetFuseRecovery(spec.id);
        });
      }
      await stopStep("trace", () => traceHooks.finish());
      console.log("stopped");
    })();

  try {
    try {
      Deno.removeSync(controlSocketPath(spec.id));
    } catch { /* not there */ }
    try {
      listener = bindPrivately(controlSocketPath(spec.id));
    } catch (error) {
      throw new UserError(
        `cannot create the control socket ${controlSocketPath(spec.id)}: ${
          (error as Error).message
        }`,
        noRoomHint(error, RUNTIME_ROOT),
      );
    }
    if (spec.awaitSource && spec.reattach) {
      // The devices exist already and their readers wait in the kernel: say so now, attach
      // once the registry answers.
      writeReady({
        ok: true,
        pid: Deno.pid,
        waiting: true,
        layers: spec.reattach.map((r) => ({
          blockPath: `/dev/nbd${r.index}`,
          device: `nbd${r.index}`,
          recoveryFile: r.backendId,
        })),
      });
      layers.attachAll().then(
        () => {
          layers.attached.resolve();
          console.log("registry is back: devices reattached");
        },
        async (error) => {
          console.error("reattach gave up:", error);
          await stop();
          Deno.exit(1);
        },
      );
    } else {
      await layers.attachAll();
      discardSpareReaders(); // layers without direct reads took none
      mark("server: exported");
      // The keeper starts while the listed metadata is still being checked and pinned.
      const keeper = spec.backend === "fuse" && !layers.fuseTakeoverWanted
        ? protectFuseMount(layers.specAsServed(), exports).then((pid) => {
          console.log(`FUSE keeper pid ${pid}`);
          mark("server: keeper");
        })
        : undefined;
      await Promise.all([
        keeper,
        waitAtMost(Promise.all(layers.metadataPinned), PREFETCH_DEADLINE_MS),
      ]);
      // A memory-only cache would evict the start of a trace longer than half of it.
      const budget = sharedDiskCache() ? undefined : Math.floor(layers.cachePerLayer / 2);
      traceHooks.startPrefetch(
        layers.prefetchAbort.signal,
        spec.layers.map(() => budget),
        layers.prefetchGroupBytes,
      );
    }
    await testHold("server-metrics-listen");
    // Before ready: an address taken since the CLI checked it fails a new mount here.
    startServerMetrics(spec, layerStats);
  } catch (error) {
    console.error("start failed:", error);
    fuseTakeoverFailed = layers.fuseTakeoverWanted;
    // Said before the clean-up: a clean-up that fails as well (out of descriptors, as the
    // start was) must not hide why the start failed. The CLI waits for this process to exit
    // before it undoes its own side.
    writeReady({ ok: false, ...startFailure(error) });
    await stop();
    return 1;
  }

  const startedAt = new Date().toISOString();
  const handle = (request: { command: string }): Promise<ControlReply> => {
    if (request.command === "stats") {
      return Promise.resolve({
        ok: true,
        stats: {
          pid: Deno.pid,
          startedAt,
          layers: layerStats(),
          memory: ownMemory(),
        },
      });
    }
    if (request.command === "stop") {
      // Reply first, then tear down: the caller waits for the process to exit.
      after(10, () => stop().then(() => Deno.exit(0)));
      return Promise.resolve({ ok: true });
    }
    return Promise.resolve({ ok: false, error: `unknown command ${request.command}` });
  };
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    // In the CLI's session (`mount --foreground`) the terminal's Ctrl-C and hangup reach us
    // too, but they are the CLI's: it unmounts DIR and then stops us. Stopping here first
    // would leave DIR mounted on a FUSE file nobody serves.
    if (inCliSession && signal !== "SIGTERM") Deno.addSignalListener(signal, () => {});
    else Deno.addSignalListener(signal, () => stop("signal").then(() => Deno.exit(0)));
  }

  // Also while it waits for the registry (ready said already): unrecorded, it went on for good
  // and attached once the registry was back, next to the server the next reattach started.
  if (spec.reattach) {
    watchForRecord(spec.id, cliPid, () => {
      console.error(
        `the reattach command (pid ${cliPid}) ended before it recorded this server: ending ` +
          "as a crashed server would, for the next reattach",
      );
      // As kill -9 would: nothing undone (no keeper ended, no device disconnected, no record
      // touched), the state every reattach starts from.
      Deno.kill(Deno.pid, "SIGKILL");
    });
  }
  if (!spec.awaitSource) {
    const heads = await Promise.all(sources.map(headOf));
    writeReady({
      ok: true,
      pid: Deno.pid,
      layers: exports.map((e, index) => ({
        blockPath: e.blockPath,
        device: e.device,
        recoveryFile: e.recoveryFile,
        head: heads[index],
      })),
    });
    mark("server: ready");
    layers.attached.resolve();
    console.log("ready:", exports.map((e) => e.blockPath).join(", "));
    if (!spec.reattach) {
      const exported = exports.map((e) => e.blockPath);
      adoption = watchForAdoption(spec.id, spec.target, cliPid, exported, async () => {
        console.error(
          `the mount command (pid ${cliPid}) ended before it recorded this mount: undoing it`,
        );
        await stop();
        keepFailedServerLog(spec.id);
        removeMountDir(spec.id);
        Deno.exit(1);
      });
    }
    // FUSE hashes fetched chunks on the event loop once node:crypto is there (openLayerSource's
    // hashOnEventLoop). Loaded when the windows may start in the quiet after ready (they are
    // its first users), not at ready: it holds the event loop ~22 ms, which delayed the CLI's
    // mount(2) right after ready by 10-15 ms.
    if (spec.backend === "fuse") after(QUIET_START.quietMs, loadNodeCrypto);
  }
  await serveControl(listener, handle);
  await stop();
  return 0;
}

/**
 * The log line of a stop that left DIR's FUSE connections to the keeper: what now holds them
 * and what to run (a keeper gone since means no reattach: only umount is left).
 */
function leftForReattach(spec: MountSpec): string {
  let keeper: number | undefined;
  try {
    keeper = fuseRecoveryStatus(spec.id) === "ok"
      ? readFuseRecovery(spec.id)?.keeper.pid
      : undefined;
  } catch { /* damaged since: said as no keeper */ }
  return keeper !== undefined
    ? `${spec.target} is still mounted and in use: its FUSE connections stay with the keeper ` +
      `(pid ${keeper}) and its record, as after a crash; \`erofs-oci reattach ${spec.target}\` ` +
      `serves it again (\`reattach --watch\` does it by itself), \`erofs-oci umount ` +
      `${spec.target}\` removes it`
    : `${spec.target} is still mounted and in use, and its FUSE keeper is gone: nothing can ` +
      `serve it again; \`erofs-oci umount --lazy ${spec.target}\` removes it`;
}

/**
 * The log line of a stop that left DIR's NBD devices connected (no server: their readers
 * wait, as after a crash) and what to run.
 */
function nbdLeftForReattach(spec: MountSpec, devices: string[]): string {
  return `${spec.target} is still mounted: its NBD device(s) ${devices.join(", ")} stay ` +
    `connected with their recovery files and its record, readers waiting, as after a crash; ` +
    `\`erofs-oci reattach ${spec.target}\` serves it again (\`reattach --watch\` does it by ` +
    `itself), \`erofs-oci umount ${spec.target}\` removes it`;
}

/** One step of a server's stop; its failure is logged, and the stop goes on. */
async function stopStep(what: string, step: () => unknown): Promise<void> {
  try {
    await step();
  } catch (error) {
    console.error(`stopping: ${what} failed:`, error);
  }
}

/**
 * A failed start as the CLI shows it: one line, with the hint of our errors or, for a refusal
 * of the host's (a full disk), what to change there. Out of descriptors, whatever call said so
 * (a socket of --metrics-listen: its own hint is about the address), the limit is the hint.
 */
function startFailure(error: unknown): { error: string; hint?: string } {
  const host = hostRefusal(error);
  if (host) return { error: host.message, hint: host.hint };
  const message = plainOsErrors(error instanceof Error ? error.message : String(error)).text;
  const outOfDescriptors = (error as { errno?: unknown }).errno === Errno.EMFILE ||
    message.includes(strerror(Errno.EMFILE));
  const hint = outOfDescriptors ? OUT_OF_DESCRIPTORS_HINT : (error as { hint?: string }).hint;
  return { error: message, hint };
}

/**
 * A rejection nobody handled ends a Deno process by default: for this server that is the mount
 * going dead (its readers wait on it until a reattach). Such a rejection is a bug; it is logged
 * and the server goes on serving the reads that do not depend on it.
 */
function keepServingAfterUnhandledRejections(): void {
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    console.error("unhandled rejection (a bug; the server goes on):", event.reason);
  });
}

/**
 * A detached server's own session (server_spawn.ts spawns it without one): the terminal's
 * hangup and Ctrl-C of the `mount` that started it no longer reach it. Before this call it
 * shares the CLI's process group, which only matters while the mount is still starting.
 * False for a server that stays in the CLI's session (`mount --foreground`).
 */
function leaveCliSession(): boolean {
  if (Deno.env.get(NEW_SESSION_ENV) !== "1") return false;
  Deno.env.delete(NEW_SESSION_ENV); // not for the processes this server starts
  // Fails only for a process group leader, which a spawned child is not.
  if (libc().setsid() < 0) warn(`setsid failed: ${strerror(errno())}`);
  return true;
}

/** What to do when the runtime dir refused a file: room, inodes, or a read-only mount. */
function noRoomHint(error: unknown, dir: string): string | undefined {
  if (/read-only/i.test(String(error))) {
    return `${dir} is read-only: give EROFS_OCI_RUNTIME_DIR a writable tmpfs`;
  }
  if (!/no space left/i.test(String(error))) return undefined;
  try {
    if (statFs(dir).freeFiles === 0n) return `${dir} has no free inodes: free some there`;
  } catch { /* cannot tell */ }
  return `free space in ${dir}`;
}
