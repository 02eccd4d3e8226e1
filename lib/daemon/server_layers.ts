/**
 * The layers one mount server serves: per layer its source (opened, cached, prefetched), its
 * export to the kernel (NBD device or FUSE file) and when its listed metadata is pinned.
 */
import { CachedSource } from "../source/cached.ts";
import { PrefetchedSource } from "../source/prefetched.ts";
import { prefetchErofsMetadata, type PrefetchOptions } from "../source/metadata_prefetch.ts";
import { QUIET_START } from "../source/background_windows.ts";
import type { Source } from "../source/source.ts";
import { MIN_LAYER_CACHE_BYTES, type MountSpec } from "../state/mount_spec.ts";
import { mountDir } from "../state/runtime_dirs.ts";
import { exportLayer, type LayerExport } from "../mount/exports.ts";
import {
  type HandedSidecar,
  listHoldsHead,
  type MetadataLoader,
  metadataLoaderOf,
  openLayerSource,
  sharedDiskCache,
} from "../mount/layer_source.ts";
import type { ServerTraceHooks } from "../trace/server_hooks.ts";
import { fetchUnitBytes, pinningPrefetchTarget } from "../trace/pinned_target.ts";
import type { TarIndexedSource } from "../mount/tar_index_source.ts";
import type { TarDeviceLayout } from "../mount/tar_layout.ts";
import { checkErofsSuperblock, EROFS_SUPER_END } from "../erofs/superblock.ts";
import { FormatError } from "../errors.ts";
import { recordForLayer } from "../recovery/layer_record.ts";
import { writeRecoveryFile } from "../state/recovery_store.ts";
import { warn } from "../log.ts";
import { lowerThreadPriority } from "../../ffi/process.ts";
import { mark } from "../timing.ts";
import { checkServable, FUSE_TAKEOVER_ID, takeFuseDescriptors } from "./fuse_recovery.ts";
import { sleep } from "../timers.ts";
import { Errno, SysError } from "../../ffi/libc.ts";

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
      await sleep(delayMs);
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

export class ServedLayers {
  readonly sources: PrefetchedSource[] = [];
  readonly exports: LayerExport[] = [];
  /**
   * One per layer: settles when its listed metadata is pinned (a chunk table's list: the
   * directories then come from pinned pages), else its directories (or the prefetch gave up).
   */
  readonly metadataPinned: Promise<void>[] = [];
  /** Per layer: what its source fetches whole, when the trace prefetch reads it directly. */
  readonly prefetchGroupBytes: (number | undefined)[] = [];
  readonly prefetchAbort = new AbortController();
  /**
   * Settles once the devices are attached (ready, or reattached after waiting for the
   * registry): the background windows' idle start counts from there. From the listed pages on,
   * a TCG guest's windows began before the NBD attach and its partition scan were done (VM
   * bench 12-03: 80 ms before ready), taking the CPU from them.
   */
  readonly attached = Promise.withResolvers<void>();
  /** A FUSE server started by reattach serves the existing mounts through the keeper's fds. */
  readonly fuseTakeoverWanted: boolean;
  readonly cachePerLayer: number;
  /** How each tar layer is served: its device layout and meta (chosen at its first mount). */
  readonly #tarServed: (
    { layout: TarDeviceLayout; metaDigest?: string; zinfoDigest?: string } | undefined
  )[] = [];
  #fuseTakeover: { fd: number; mtimeSec: number }[] | undefined;
  readonly #spec: MountSpec;
  readonly #handedMetadata: Promise<(HandedSidecar | undefined)[]>;
  readonly #traceHooks: ServerTraceHooks;

  constructor(
    spec: MountSpec,
    handedMetadata: Promise<(HandedSidecar | undefined)[]>,
    traceHooks: ServerTraceHooks,
  ) {
    this.#spec = spec;
    this.#handedMetadata = handedMetadata;
    this.#traceHooks = traceHooks;
    this.cachePerLayer = Math.max(
      MIN_LAYER_CACHE_BYTES,
      Math.floor(spec.cacheBytes / spec.layers.length),
    );
    this.fuseTakeoverWanted = spec.backend === "fuse" &&
      spec.reattach?.[0]?.backendId === FUSE_TAKEOVER_ID;
  }

  /**
   * The spec as served: each tar layer with the device layout chosen for it and its meta's
   * digest, so a takeover of its FUSE file serves that layout from those bytes again (not
   * whatever this kernel or environment picks, nor a meta file changed since).
   */
  specAsServed(): MountSpec {
    return { ...this.#spec, layers: this.#spec.layers.map((l, i) => this.#layerAsServed(l, i)) };
  }

  #layerAsServed(layer: MountSpec["layers"][number], index: number): MountSpec["layers"][number] {
    const served = this.#tarServed[index];
    return layer.tarIndex && served
      ? { ...layer, tarIndex: { ...layer.tarIndex, ...served } }
      : layer;
  }

  /** Opens and exports every layer in order. */
  async attachAll(): Promise<void> {
    for (const [index, layer] of this.#spec.layers.entries()) await this.#attach(index, layer);
  }

  /**
   * Stops the prefetch, releases the exports (last first) and closes the sources. With
   * `keepInUse`, what a mount still uses is left as a crash leaves it, and "kept" says so:
   * - FUSE: a file still in use (an EROFS mount on it) stops the release there: that export
   *   and the ones before it keep serving, the sources stay open (the caller leaves the
   *   connections to the keeper).
   * - NBD: with any device still mounted from, no device is disconnected: each is abandoned
   *   (our sockets closed, recovery file kept), its readers wait for `reattach`.
   */
  async close(opts: { keepInUse?: boolean } = {}): Promise<"released" | "kept"> {
    this.prefetchAbort.abort();
    if (opts.keepInUse && this.exports.some((e) => e.mounted?.())) {
      for (const exported of this.exports) {
        try {
          await exported.abandon?.();
        } catch (error) {
          console.error("closing the connections of", exported.blockPath, "failed:", error);
        }
      }
      for (const source of this.sources) await source.close?.();
      return "kept";
    }
    while (this.exports.length > 0) {
      const exported = this.exports[this.exports.length - 1];
      try {
        await exported.close();
      } catch (error) {
        if (opts.keepInUse && exported.fuse && fuseBusy(error)) return "kept";
        console.error("release of", exported.blockPath, "failed:", error);
      }
      this.exports.pop();
    }
    for (const source of this.sources) await source.close?.();
    return "released";
  }

  async #attach(index: number, layer: MountSpec["layers"][number]): Promise<void> {
    const opened: Source = await openLayerSource(layer, this.#spec.credentials, {
      // FUSE's reader thread serves pinned and cached reads without the event loop.
      hashOnEventLoop: this.#spec.backend === "fuse",
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
        this.cachePerLayer,
        // A local blob was not hashed whole (openLayerSource): a wrong index shows at open.
        { checkStartOf: layer.kind === "local" ? layer.path : undefined },
      ).catch(async (error) => {
        await opened.close?.();
        throw error;
      })
      : opened;
    if (tarIndex) {
      const { layout, metaDigest, zinfoDigest } = raw as TarIndexedSource;
      this.#tarServed[index] = {
        layout,
        ...(metaDigest ? { metaDigest } : {}),
        ...(zinfoDigest ? { zinfoDigest } : {}),
      };
    }
    if (this.#spec.awaitSource) await waitUntilServable(raw, index);
    if (this.fuseTakeoverWanted) {
      // Take the connection only from a server that can answer: until the source does, the
      // readers are better off waiting in the kernel (the caller retries) than getting EIO.
      await checkServable(raw, index, this.#spec.reattach?.[index]?.expect);
      this.#fuseTakeover ??= takeFuseDescriptors(this.#spec.id);
    }
    const cached = tarIndex
      ? raw as TarIndexedSource
      : new CachedSource(raw, { cacheBytes: this.cachePerLayer });
    // Where the trace prefetch reads, readahead would only fetch past the traced ranges.
    if (cached instanceof CachedSource) {
      cached.skipReadaheadWhere((offset, length) =>
        this.#traceHooks.prefetched(index, offset, length)
      );
    }
    // Metadata reads are served from pinned pages; the prefetch reads around the cache.
    const served = new PrefetchedSource(cached);
    this.sources.push(served);
    // The partition scan needs the image head only: pinned ahead of the rest of the list.
    const headPinned = Promise.withResolvers<void>();
    this.metadataPinned.push(
      tarIndex ? Promise.resolve() : this.#prefetchMetadata(index, raw, served, headPinned),
    );
    // Over a memory-only cache a trace prefetch pins its pages (pinned_target.ts: whole
    // chunks would be evicted before the application reads them).
    const prefetchTarget = tarIndex
      ? undefined
      : sharedDiskCache()
      ? served
      : pinningPrefetchTarget(raw, served, served);
    this.prefetchGroupBytes[index] = prefetchTarget === served ? undefined : fetchUnitBytes(raw);
    this.exports.push(
      await exportLayer(
        this.#spec.backend,
        this.#traceHooks.wrap(index, served, prefetchTarget),
        {
          runDir: mountDir(this.#spec.id),
          layerIndex: index,
          reattach: this.#spec.reattach?.[index],
          fuseTakeover: this.#fuseTakeover?.[index],
          erofsBlockBytes: layer.kind === "registry" && !tarIndex
            ? layer.erofsBlockBytes
            : undefined,
          // Not while a trace is recorded (the warm's READs would be recorded as the
          // application's) or replayed (the trace says what will be read).
          pinnedPages: tarIndex || this.#traceHooks.wantsExactReads ? undefined : served,
          headPinned: !tarIndex && listHoldsHead(raw)
            ? Promise.race([headPinned.promise, this.metadataPinned[index]])
            : undefined,
          // Each READ of a tar layer is a main-thread round trip (no direct reads): let the
          // kernel's readahead make them few and large (issue 11's full read). On the disk
          // cache the reader thread answers large READs as it does small ones (issue 12's full
          // read: 8,891 READs -> 1,331). Memory-only EROFS layers keep direct I/O: readahead
          // evicted the memory cache's chunks ahead of the reader (full read 46 -> 100-300 GETs).
          // Nor while a trace is recorded or replayed (ServerTraceHooks.wantsExactReads).
          fusePageCache: Boolean(tarIndex) ||
            (Boolean(sharedDiskCache()) && !this.#traceHooks.wantsExactReads),
          writeRecovery: () => {
            // The layout the source chose goes with it: reattach must serve the same one.
            const { record, extra } = recordForLayer(
              this.#layerAsServed(layer, index),
              this.#spec.credentials,
              this.#spec.id,
              index,
            );
            return writeRecoveryFile(record, extra);
          },
        },
      ),
    );
  }

  /**
   * Starts the metadata prefetch of layer `index`: settles when its listed metadata is pinned (a
   * chunk table's list: the directories then come from pinned pages), else its directories (or
   * the prefetch gave up).
   */
  #prefetchMetadata(
    index: number,
    raw: Source,
    served: PrefetchedSource,
    headPinned: PromiseWithResolvers<void>,
  ): Promise<void> {
    return new Promise<void>((resolve) => {
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
        signal: this.prefetchAbort.signal,
        metadata: withHandedMetadata(raw, metadataLoaderOf(raw), this.#handedMetadata, index),
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
        windowsMaxBytes: this.#traceHooks.wantsExactReads ? 0 : undefined,
        backgroundWindows: BACKGROUND_WINDOWS,
        // The windows may use the idle time after ready (NBD too since its partition scan
        // happens in the attach and mount(2) reads only pinned pages).
        windowsWhenQuiet: { ...QUIET_START, after: this.attached.promise },
        onWindowsStart: lowerPriorityForBackground,
      }).then(report);
    });
  }
}

/** A FUSE release refused because the file is still in use (FuseBlob.close's EBUSY). */
function fuseBusy(error: unknown): boolean {
  const cause = (error as { cause?: unknown })?.cause;
  return cause instanceof SysError && cause.errno === Errno.EBUSY;
}
