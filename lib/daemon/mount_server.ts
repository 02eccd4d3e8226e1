/**
 * The detached server behind one mount: builds a cached source per layer, exports each to the
 * kernel (NBD device or FUSE file), reports readiness to the `mount` process on stdout, then
 * serves until told to stop. Started as `erofs-oci __mount-server` with the MountSpec on stdin.
 */
import { CachedSource } from "../source/cached.ts";
import { PrefetchedSource } from "../source/prefetched.ts";
import { prefetchErofsMetadata, type PrefetchOptions } from "../source/metadata_prefetch.ts";
import { QUIET_START } from "../source/background_windows.ts";
import { waitAtMost } from "../source/abortable.ts";
import type { Source } from "../source/source.ts";
import {
  controlSocketPath,
  keepFailedServerLog,
  logPath,
  mountDir,
  type MountSpec,
  removeMountDir,
} from "../state/runtime.ts";
import { watchForAdoption } from "./adoption.ts";
import { exportLayer, type LayerExport } from "../mount/exports.ts";
import { discardSpareFuseReaders, prestartFuseReaders } from "../fuse/blob.ts";
import { type HandedSpec, takeHandedSettings } from "./server_process.ts";
import { NEW_SESSION_ENV, PRESTART_READER_ENV } from "./server_spawn.ts";
import { discardSpareNbdReaders, prestartNbdReaders } from "../nbd/direct_conns.ts";
import {
  diskCacheTurnedOff,
  type HandedSidecar,
  listHoldsHead,
  type MetadataLoader,
  metadataLoaderOf,
  openLayerSource,
  readListedMetadataAhead,
  sharedDiskCache,
  useDiskCacheSettings,
} from "../mount/layer_source.ts";
import { ServerTraceHooks } from "../trace/server_hooks.ts";
import { fetchUnitBytes, pinningPrefetchTarget } from "../trace/pinned_target.ts";
import type { TarIndexedSource } from "../mount/tar_index_source.ts";
import { type ControlReply, serveControl } from "./control.ts";
import { redirectConsoleToFile } from "./log_file.ts";
import { checkErofsSuperblock, EROFS_SUPER_END } from "../erofs/superblock.ts";
import { FormatError } from "../errors.ts";
import { recordForLayer } from "../recovery/layer_record.ts";
import { writeRecoveryFile } from "../state/recovery_store.ts";
import { startServerMetrics } from "../metrics/server_metrics.ts";
import { setLogFormat, warn } from "../log.ts";
import { errno, libc, strerror } from "../../ffi/libc.ts";
import { readableNow, setPipeCapacity } from "../../ffi/io.ts";
import { lowerThreadPriority } from "../../ffi/process.ts";
import { layerFetchMetrics } from "../metrics/layer_metrics.ts";
import { mark, markHeldEventLoop } from "../timing.ts";
import { loadNodeCrypto } from "../node_builtins.ts";
import { readSpecAndMetadata } from "./handed_metadata.ts";
import { sidecarPackDigest } from "../verify/load_metadata_ranges.ts";
import {
  checkServable,
  forgetFuseRecovery,
  FUSE_TAKEOVER_ID,
  protectFuseMount,
  stopFuseKeeper,
  takeFuseDescriptors,
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

const WAIT_FIRST_DELAY_MS = 1000;
const WAIT_MAX_DELAY_MS = 30_000;

/**
 * The main thread's nice value once the background windows start (EROFS_OCI_BACKGROUND_NICE,
 * default 10; 0 leaves it as it is). That thread fetches, verifies and writes the rest of the
 * image in the background, and the applications using the mount must not wait behind it for the
 * CPU: in the VM benchmark a cold find that began while the windows were filled waited 0.3-2.0 s
 * for its own first READ (docs/benchmarks.md, session 39). The reader thread, which answers the
 * READs of cached and pinned bytes, started before and keeps its own; Linux applies the value to
 * the calling thread only, and to the threads it starts later.
 */
let backgroundNice: number | undefined;

/** EROFS_OCI_BACKGROUND_NICE read once; a value that is not 0-19 is said once and means 10. */
function backgroundNiceFromEnv(): number {
  if (backgroundNice !== undefined) return backgroundNice;
  const value = Deno.env.get("EROFS_OCI_BACKGROUND_NICE");
  const nice = Number(value ?? 10);
  backgroundNice = Number.isInteger(nice) && nice >= 0 && nice <= 19 ? nice : 10;
  if (backgroundNice !== nice) {
    warn(`EROFS_OCI_BACKGROUND_NICE=${value}: not a nice value 0-19; using 10`);
  }
  return backgroundNice;
}

function lowerPriorityForBackground(): void {
  const nice = backgroundNiceFromEnv();
  if (nice > 0 && !lowerThreadPriority(nice)) {
    warn(`could not lower the priority of the background fetch (nice ${nice})`);
  }
}

/**
 * EROFS_OCI_BACKGROUND_WINDOWS=0: no background windows (the rest of the image around its
 * metadata, fetched while the mount is idle); only what is read is fetched (and the rest with
 * --fetch-all). For a metered link, and for measuring what the windows cost the applications
 * that share the CPU with them (scripts/bench.sh).
 */
const BACKGROUND_WINDOWS = Deno.env.get("EROFS_OCI_BACKGROUND_WINDOWS") !== "0";

/**
 * Retries with exponential backoff (1 s … 30 s, no busy loop) until the source serves its
 * first and last bytes and its superblock is EROFS: the registry is back and the blob is the
 * one the device was made from (a digest names its content; the size must still match).
 */
async function waitUntilServable(source: Source, layerIndex: number): Promise<void> {
  for (let delayMs = WAIT_FIRST_DELAY_MS;; delayMs = Math.min(delayMs * 2, WAIT_MAX_DELAY_MS)) {
    try {
      checkErofsSuperblock(await source.read(0, EROFS_SUPER_END), `layer ${layerIndex}`);
      await source.read(source.size - 1, 1);
      return;
    } catch (error) {
      if (error instanceof FormatError) throw error;
      console.warn(
        `layer ${layerIndex}: source not reachable (${(error as Error).message}); ` +
          `retrying in ${delayMs / 1000} s`,
      );
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }
}

/**
 * `loader`, given the metadata `mount` fetched for layer `index` while this server started
 * (handed_metadata.ts): the loader checks it as it checks its disk-cache sidecar on a remount
 * (and keeps it there), or fetches what does not match.
 */
function withHandedMetadata(
  source: Source,
  loader: MetadataLoader | undefined,
  handed: Promise<(HandedSidecar | undefined)[]>,
  index: number,
): PrefetchOptions["metadata"] {
  if (!loader) return undefined;
  const sidecar = source as Partial<{ writeSidecar(bytes: Uint8Array): void }>;
  if (typeof sidecar.writeSidecar !== "function") {
    return (signal, onHead) => loader(signal, undefined, onHead);
  }
  return async (signal, onHead) => {
    const layerHanded = (await handed)[index];
    if (layerHanded) {
      console.log(
        `layer ${index}: ${layerHanded.bytes.length} bytes of listed metadata from mount`,
      );
      mark(`server: layer ${index} metadata handed`);
    }
    return await loader(signal, layerHanded, onHead);
  };
}

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

/** Entry of the hidden `__mount-server` command. */
export async function runMountServer(): Promise<number> {
  mark("server: main");
  // The `mount` (or `reattach`) that started us: watched until it has recorded the mount.
  const cliPid = Deno.ppid;
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
  readListedMetadataAhead(spec.layers);
  if (spec.backend === "fuse") prestartFuseReaders(spec.layers.length);
  // NBD reader threads serve direct reads only: registry EROFS layers on the disk cache.
  else if (!diskCacheTurnedOff()) {
    prestartNbdReaders(spec.layers.filter((l) => l.kind === "registry" && !l.tarIndex).length);
  }
  // The mount's own format, also when `reattach` (run with any format) starts this server.
  if (spec.logFormat) setLogFormat(spec.logFormat);
  redirectConsoleToFile(logPath(spec.id));
  console.log(`server ${Deno.pid} starting for ${spec.image} at ${spec.target}`);

  const sources: PrefetchedSource[] = [];
  /**
   * One per layer: settles when its listed metadata is pinned (a chunk table's list: the
   * directories then come from pinned pages), else its directories (or the prefetch gave up).
   */
  const metadataPinned: Promise<void>[] = [];
  const prefetchAbort = new AbortController();
  const exports: LayerExport[] = [];
  let listener: Deno.Listener | undefined;
  let stopping: Promise<void> | undefined;
  const traceHooks = new ServerTraceHooks(spec.layers);
  /** Per layer: what its source fetches whole, when the trace prefetch reads it directly. */
  const prefetchGroupBytes: (number | undefined)[] = [];
  /**
   * Settles once the devices are attached (ready, or reattached after waiting for the
   * registry): the background windows' idle start counts from there. From the listed pages on,
   * a TCG guest's windows began before the NBD attach and its partition scan were done (VM
   * bench 12-03: 80 ms before ready), taking the CPU from them.
   */
  const attached = Promise.withResolvers<void>();

  const stop = () =>
    stopping ??= (async () => {
      console.log("stopping");
      // A takeover that failed leaves the keeper and its record to the next attempt.
      if (spec.backend === "fuse" && !fuseTakeoverFailed) {
        await stopFuseKeeper(spec.id);
        forgetFuseRecovery(spec.id);
      }
      prefetchAbort.abort();
      listener?.close();
      for (const exported of exports.reverse()) {
        try {
          await exported.close();
        } catch (error) {
          console.error("release of", exported.blockPath, "failed:", error);
        }
      }
      for (const source of sources) await source.close?.();
      discardSpareReaders();
      traceHooks.finish();
      console.log("stopped");
    })();

  const cachePerLayer = Math.max(
    4 * 1024 * 1024,
    Math.floor(spec.cacheBytes / spec.layers.length),
  );
  // A FUSE server started by reattach serves the existing mounts through the keeper's fds.
  const fuseTakeoverWanted = spec.backend === "fuse" &&
    spec.reattach?.[0]?.backendId === FUSE_TAKEOVER_ID;
  let fuseTakeover: { fd: number; mtimeSec: number }[] | undefined;
  let fuseTakeoverFailed = false;
  const attachLayers = async () => {
    for (const [index, layer] of spec.layers.entries()) {
      const opened: Source = await openLayerSource(layer, spec.credentials, {
        // FUSE's reader thread serves pinned and cached reads without the event loop.
        hashOnEventLoop: spec.backend === "fuse",
      });
      mark(`server: layer ${index} source`);
      const tarIndex = layer.tarIndex;
      // An ordinary tar layer is served as [meta][tar]: its metadata is all in the meta
      // image, held in memory, so there is nothing to prefetch.
      // Imported only for a tar layer: gzip, tar and the EROFS writer are ~40 modules.
      const raw = tarIndex
        ? await (await import("../mount/tar_index_source.ts")).openTarIndexSource(
          opened,
          tarIndex,
          {
            digest: (layer as { digest: string }).digest,
            size: layer.sizeBytes,
          },
          cachePerLayer,
          // A local blob was not hashed whole (openLayerSource): a wrong index shows at open.
          { checkStartOf: layer.kind === "local" ? layer.path : undefined },
        ).catch(async (error) => {
          await opened.close?.();
          throw error;
        })
        : opened;
      if (spec.awaitSource) await waitUntilServable(raw, index);
      if (fuseTakeoverWanted) {
        // Take the connection only from a server that can answer: until the source does, the
        // readers are better off waiting in the kernel (the caller retries) than getting EIO.
        await checkServable(raw, index);
        fuseTakeover ??= takeFuseDescriptors(spec.id);
      }
      const cached = tarIndex
        ? raw as TarIndexedSource
        : new CachedSource(raw, { cacheBytes: cachePerLayer });
      // Where the trace prefetch reads, readahead would only fetch past the traced ranges.
      if (cached instanceof CachedSource) {
        cached.skipReadaheadWhere((offset, length) => traceHooks.prefetched(index, offset, length));
      }
      // Metadata reads are served from pinned pages; the prefetch reads around the cache.
      const served = new PrefetchedSource(cached);
      sources.push(served);
      // The partition scan needs the image head only: pinned ahead of the rest of the list.
      const headPinned = Promise.withResolvers<void>();
      metadataPinned.push(
        tarIndex ? Promise.resolve() : new Promise<void>((resolve) => {
          let last = "";
          const report = (summary: string) => {
            // The directory pass may also be the whole prefetch: log each summary once.
            if (summary !== last) console.log(`layer ${index}: metadata prefetch, ${summary}`);
            mark(`server: layer ${index} ${summary.split(":")[0]}`);
            last = summary;
            resolve();
          };
          mark(`server: layer ${index} prefetch start`);
          prefetchErofsMetadata(raw, served, {
            signal: prefetchAbort.signal,
            metadata: withHandedMetadata(raw, metadataLoaderOf(raw), handedMetadata, index),
            onDirectoriesDone: report,
            // Ready once the list is pinned: the walk after it parses pinned pages (under TCG
            // 0.3-0.8 s of this thread before ready) and reads only what a list lacks.
            onListedPinned: report,
            onHeadPinned: () => {
              mark(`server: layer ${index} head pinned`);
              headPinned.resolve();
            },
            // A trace says what the application reads: the windows (a guess from the metadata's
            // places) would only compete with the trace prefetch and the reads it serves.
            windowsMaxBytes: traceHooks.wantsExactReads ? 0 : undefined,
            backgroundWindows: BACKGROUND_WINDOWS,
            // The windows may use the idle time after ready (NBD too since its partition scan
            // happens in the attach and mount(2) reads only pinned pages).
            windowsWhenQuiet: { ...QUIET_START, after: attached.promise },
            onWindowsStart: lowerPriorityForBackground,
          }).then(report);
        }),
      );
      // Over a memory-only cache a trace prefetch pins its pages (pinned_target.ts: whole
      // chunks would be evicted before the application reads them).
      const prefetchTarget = tarIndex
        ? undefined
        : sharedDiskCache()
        ? served
        : pinningPrefetchTarget(raw, served, served);
      prefetchGroupBytes[index] = prefetchTarget === served ? undefined : fetchUnitBytes(raw);
      exports.push(
        await exportLayer(
          spec.backend,
          traceHooks.wrap(index, served, prefetchTarget),
          {
            runDir: mountDir(spec.id),
            layerIndex: index,
            reattach: spec.reattach?.[index],
            fuseTakeover: fuseTakeover?.[index],
            erofsBlockBytes: layer.kind === "registry" && !tarIndex
              ? layer.erofsBlockBytes
              : undefined,
            // Not while a trace is recorded (the warm's READs would be recorded as the
            // application's) or replayed (the trace says what will be read).
            pinnedPages: tarIndex || traceHooks.wantsExactReads ? undefined : served,
            headPinned: !tarIndex && listHoldsHead(raw)
              ? Promise.race([headPinned.promise, metadataPinned[index]])
              : undefined,
            // Each READ of a tar layer is a main-thread round trip (no direct reads): let the
            // kernel's readahead make them few and large (issue 11's full read). On the disk
            // cache the reader thread answers large READs as it does small ones (issue 12's full
            // read: 8,891 READs -> 1,331). Memory-only EROFS layers keep direct I/O: readahead
            // evicted the memory cache's chunks ahead of the reader (full read 46 -> 100-300 GETs).
            // Nor while a trace is recorded or replayed (ServerTraceHooks.wantsExactReads).
            fusePageCache: Boolean(tarIndex) ||
              (Boolean(sharedDiskCache()) && !traceHooks.wantsExactReads),
            writeRecovery: () => {
              // The layout the source chose goes with it: reattach must serve the same one.
              const recorded = tarIndex
                ? { ...layer, tarIndex: { ...tarIndex, layout: (raw as TarIndexedSource).layout } }
                : layer;
              const { record, extra } = recordForLayer(recorded, spec.credentials, spec.id, index);
              return writeRecoveryFile(record, extra);
            },
          },
        ),
      );
    }
  };

  try {
    try {
      Deno.removeSync(controlSocketPath(spec.id));
    } catch { /* not there */ }
    listener = Deno.listen({ transport: "unix", path: controlSocketPath(spec.id) });
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
      attachLayers().then(
        () => {
          attached.resolve();
          console.log("registry is back: devices reattached");
        },
        async (error) => {
          console.error("reattach gave up:", error);
          await stop();
          Deno.exit(1);
        },
      );
    } else {
      await attachLayers();
      discardSpareReaders(); // layers without direct reads took none
      mark("server: exported");
      // The keeper starts while the listed metadata is still being checked and pinned.
      const keeper = spec.backend === "fuse" && !fuseTakeoverWanted
        ? protectFuseMount(spec, exports).then((pid) => {
          console.log(`FUSE keeper pid ${pid}`);
          mark("server: keeper");
        })
        : undefined;
      await Promise.all([keeper, waitAtMost(Promise.all(metadataPinned), PREFETCH_DEADLINE_MS)]);
      // A memory-only cache would evict the start of a trace longer than half of it.
      const budget = sharedDiskCache() ? undefined : Math.floor(cachePerLayer / 2);
      traceHooks.startPrefetch(
        prefetchAbort.signal,
        spec.layers.map(() => budget),
        prefetchGroupBytes,
      );
    }
  } catch (error) {
    console.error("start failed:", error);
    fuseTakeoverFailed = fuseTakeoverWanted;
    await stop();
    const hint = (error as { hint?: string }).hint;
    writeReady({ ok: false, error: error instanceof Error ? error.message : String(error), hint });
    return 1;
  }

  const startedAt = new Date().toISOString();
  const layerStats = () =>
    sources.map((s, i) => ({
      ...s.stats(),
      directReads: exports[i]?.directReads(),
      ...layerFetchMetrics(spec.layers[i]),
      tracePrefetch: traceHooks.progress(i),
    }));
  const handle = (request: { command: string }): Promise<ControlReply> => {
    if (request.command === "stats") {
      return Promise.resolve({
        ok: true,
        stats: {
          pid: Deno.pid,
          startedAt,
          layers: layerStats(),
        },
      });
    }
    if (request.command === "stop") {
      // Reply first, then tear down: the caller waits for the process to exit.
      setTimeout(() => stop().then(() => Deno.exit(0)), 10);
      return Promise.resolve({ ok: true });
    }
    return Promise.resolve({ ok: false, error: `unknown command ${request.command}` });
  };
  startServerMetrics(spec, layerStats);
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    // In the CLI's session (`mount --foreground`) the terminal's Ctrl-C and hangup reach us
    // too, but they are the CLI's: it unmounts DIR and then stops us. Stopping here first
    // would leave DIR mounted on a FUSE file nobody serves.
    if (inCliSession && signal !== "SIGTERM") Deno.addSignalListener(signal, () => {});
    else Deno.addSignalListener(signal, () => stop().then(() => Deno.exit(0)));
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
    attached.resolve();
    console.log("ready:", exports.map((e) => e.blockPath).join(", "));
    if (!spec.reattach) {
      watchForAdoption(spec.id, spec.target, cliPid, async () => {
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
    if (spec.backend === "fuse") setTimeout(loadNodeCrypto, QUIET_START.quietMs);
  }
  await serveControl(listener, handle);
  await stop();
  return 0;
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
