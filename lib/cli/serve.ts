import type { Command } from "./command.ts";
import { onInterrupt } from "./interrupt.ts";
import {
  expectPositionals,
  parseBlobDigest,
  parseCommandArgs,
  parseLayerIndex,
} from "./command.ts";
import { openImage, REGISTRY_OPTIONS, REGISTRY_OPTIONS_HELP } from "./registry_options.ts";
import type { RegistryOptionValues } from "./registry_options.ts";
import { parseDurationMs, parseSize } from "./size.ts";
import { checkDiskCacheOptions } from "./disk_cache_options.ts";
import { debug, info, isDebug, throttledWarning, warn } from "../log.ts";
import { formatBytes } from "./table.ts";
import { checkErofsSuperblock, EROFS_SUPER_END } from "../erofs/superblock.ts";
import { isLocalImage } from "../mount/local_image.ts";
import { selectLayers } from "../oci/layers.ts";
import { tarLayerKind } from "../mount/tar_layers.ts";
import { refetchFromRegistry, RegistryBlob } from "../oci/registry_blob.ts";
import { CachedSource, DEFAULT_CACHE_BYTES } from "../source/cached.ts";
import { PrefetchedSource } from "../source/prefetched.ts";
import { prefetchErofsMetadata } from "../source/metadata_prefetch.ts";
import { LocalFile } from "../source/local_file.ts";
import { realPathTrusted, UntrustedSymlinkError } from "../../ffi/path_resolve.ts";
import { Errno, SysError } from "../../ffi/libc.ts";
import { DEFAULT_DISK_CACHE_BYTES, DiskCache } from "../source/disk_cache.ts";
import { registryOrigin } from "../source/disk_cache_names.ts";
import type { Source } from "../source/source.ts";
import { verifyServedLayer } from "../verify/layer_tables.ts";
import { startServeMetrics } from "../metrics/server_metrics.ts";
import {
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_INFLIGHT_BYTES,
  parseListenAddress,
  startNbdServer,
} from "../nbd/listen.ts";
import { commandName, READ_ONLY_EXPORT_FLAGS } from "../nbd/protocol.ts";
import { FormatError, UsageError, UserError } from "../errors.ts";
import { layerList } from "../text.ts";

/** How often a repeating failure (an accept, a client's read) is said. */
const WARN_EVERY_MS = 10_000;
/** The NBD errors a READ is answered with (protocol.ts). */
const NBD_ERROR_NAMES: Record<number, string> = {
  1: "EPERM",
  5: "EIO",
  12: "ENOMEM",
  22: "EINVAL",
};

/** The longest string the NBD protocol lets a server send (an export name, a description). */
const MAX_NBD_STRING = 4096;

export const serveCommand: Command = {
  name: "serve",
  summary: "export an EROFS image read-only over NBD (unix socket or TCP)",
  help: `Usage: erofs-oci serve IMAGE --listen ADDR [options]

Serves one EROFS image read-only to NBD clients such as nbdcopy, nbdinfo, nbdfuse, qemu
or nbd-client, without downloading it: every client read becomes a cached ranged read.
IMAGE is a local EROFS file, a registry reference ([registry[:port]/]name[:tag][@digest])
or oci:PATH[:TAG]; for an image with several EROFS layers pick one with --layer or --blob.
Every client gets its own connection; all share one read cache. Prints the NBD URI on
stdout, then runs until SIGINT, SIGTERM or SIGHUP (which remove the unix socket).

Options:
  --listen ADDR        unix:PATH or tcp:HOST:PORT (tcp:127.0.0.1:10809, tcp:[::1]:0).
                       A unix socket is root's only (mode 0600); over TCP every local
                       user, and every host that reaches HOST:PORT, reads the whole
                       image, files only root may read inside it included
  --cache-size SIZE    read cache bound, e.g. 256M (default ${formatBytes(DEFAULT_CACHE_BYTES)})
  --disk-cache-size SIZE  bound of the host's disk cache of registry blobs, shared with
                       mounts, in $EROFS_OCI_CACHE_DIR (default /var/cache/erofs-oci, ${
    formatBytes(DEFAULT_DISK_CACHE_BYTES)
  }; 0: none)
  --disk-cache-keep-free SIZE  free space the disk cache leaves on its file system,
                       evicting to keep it (default 10% of it, at most 4G; 0: none)
  --no-disk-cache      keep fetched bytes in memory only
  --require-verified   refuse a layer without a chunk-digest table (see mount --help)
  --metrics-listen ADDR  answer Prometheus scrapes at GET /metrics (unix:PATH or
                       tcp:HOST:PORT): the layer's counters and registry GET times
  --fetch-all          fetch the rest of the layer into the disk cache while clients
                       are quiet
  --max-inflight SIZE  memory for READ replies of all clients together (default ${
    formatBytes(DEFAULT_MAX_INFLIGHT_BYTES)
  });
                       each of the 64 connection slots is guaranteed 1/128 of it, the
                       rest is shared, at most 1/8 of the whole to one client (the
                       largest READ: 8.5 MiB by default); beyond it requests wait
                       unread (min 16M: the largest READ is then 2 MiB, what nbdcopy
                       and the kernel's NBD client send)
  --idle-timeout TIME  close a client that stalls this long — does not collect its
                       replies, or leaves its handshake or a request half sent: 90s,
                       5m, 0 = never (default ${
    DEFAULT_IDLE_TIMEOUT_MS / 60_000
  }m). A quiet client owed nothing
                       keeps its connection (nbd-client and qemu hold one, silent,
                       while attached); with all 64 slots taken a newcomer replaces
                       the client stalled longest, or one quiet this long, or is
                       refused
  --export-name NAME   name shown by \`nbdinfo --list\` (default: the file name or the
                       layer digest); clients may also ask for the default export ""
  --layer N            serve layer N of a registry image (0 = bottom)
  --blob DIGEST        serve the layer with this digest
  --any-media-type     accept a layer whose media type is not application/vnd.erofs
${REGISTRY_OPTIONS_HELP}
  -h, --help

Example:
  erofs-oci serve app.erofs --listen unix:/tmp/app.sock &
  nbdinfo 'nbd+unix:///?socket=/tmp/app.sock'`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("serve", argv, {
      ...REGISTRY_OPTIONS,
      listen: { type: "string" },
      "cache-size": { type: "string" },
      "disk-cache-size": { type: "string" },
      "disk-cache-keep-free": { type: "string" },
      "no-disk-cache": { type: "boolean" },
      "require-verified": { type: "boolean" },
      "metrics-listen": { type: "string" },
      "fetch-all": { type: "boolean" },
      "max-inflight": { type: "string" },
      "idle-timeout": { type: "string" },
      "export-name": { type: "string" },
      layer: { type: "string" },
      blob: { type: "string" },
      "any-media-type": { type: "boolean" },
    });
    const [image] = expectPositionals("serve", positionals, ["IMAGE"]);
    if (!values.listen) {
      throw new UsageError("serve: --listen is required", "e.g. --listen unix:/tmp/erofs.sock");
    }
    const listen = parseListenAddress(values.listen);
    const metricsListen = values["metrics-listen"] === undefined
      ? undefined
      : parseListenAddress(values["metrics-listen"], "--metrics-listen");
    const diskCacheSizes = checkDiskCacheOptions("serve", values);
    const cacheBytes = values["cache-size"] !== undefined
      ? parseSize(values["cache-size"], "--cache-size")
      : DEFAULT_CACHE_BYTES;
    const maxInflightBytes = values["max-inflight"] !== undefined
      ? parseSize(values["max-inflight"], "--max-inflight")
      : DEFAULT_MAX_INFLIGHT_BYTES;
    if (maxInflightBytes < MIN_INFLIGHT_BYTES) {
      throw new UsageError(
        `serve: --max-inflight ${values["max-inflight"]} is below 16M`,
        "clients need room for their reads, e.g. --max-inflight 64M",
      );
    }
    const idleTimeoutMs = values["idle-timeout"] !== undefined
      ? parseDurationMs(values["idle-timeout"], "--idle-timeout", {
        maxMs: 2 ** 31 - 1,
        hint: "use seconds or a unit: 90s, 500ms, 5m, 1h; 0 disables",
      })
      : DEFAULT_IDLE_TIMEOUT_MS;
    const layer = parseLayerIndex("serve", values.layer);
    parseBlobDigest("serve", values.blob);
    const givenName = values["export-name"];
    if (
      givenName !== undefined &&
      (givenName.includes("\0") || new TextEncoder().encode(givenName).length > MAX_NBD_STRING)
    ) {
      // Clients refuse the export list or the export itself (libnbd: "invalid export length").
      throw new UsageError(
        `serve: --export-name must be at most ${MAX_NBD_STRING} bytes of UTF-8 without NUL`,
        "NBD clients accept no longer names; choose a shorter one",
      );
    }

    const { source: raw, name } = await openSource(image, values, layer, diskCacheSizes);
    const exportName = values["export-name"] ?? name;
    let cache: CachedSource;
    let served: PrefetchedSource;
    try {
      await checkImage(raw, image);
      cache = new CachedSource(raw, { cacheBytes });
      served = new PrefetchedSource(cache);
    } catch (error) {
      await raw.close?.();
      if (error instanceof RangeError) {
        throw new UsageError(`serve: --cache-size: ${error.message}`);
      }
      throw error;
    }

    let stopRequested!: () => void;
    const stopped = new Promise<void>((resolve) => stopRequested = resolve);
    // Ctrl-C, SIGTERM or a hangup (the terminal or ssh session gone): the socket goes too.
    const stopWatching = onInterrupt(stopRequested);

    // Directory metadata pinned in the background, as for mounts: a client's cold tree walk
    // then reads no scattered metadata blocks through the chunk cache.
    const prefetchAbort = new AbortController();
    const prefetched = prefetchErofsMetadata(raw, served, { signal: prefetchAbort.signal })
      .then((summary) => debug("metadata prefetch", summary));
    let stopMetrics: (() => Promise<void>) | undefined;
    let uri = values.listen;
    const acceptWarning = throttledWarning(WARN_EVERY_MS, "failed accepts");
    const readWarning = throttledWarning(WARN_EVERY_MS, "failed reads");
    const fullWarning = throttledWarning(WARN_EVERY_MS, "clients refused or replaced");
    try {
      if (metricsListen) {
        // Labelled by the export's NBD URI (a tcp port 0 is known once listening) and digest.
        const digest = name.startsWith("sha256:") ? name : undefined;
        stopMetrics = startServeMetrics(metricsListen, image, () => uri, () => ({
          ...served.stats(),
          ...(digest ? { digest } : {}),
        }));
      }
      const server = await startNbdServer({
        listen,
        source: served,
        export: {
          name: exportName,
          sizeBytes: cache.size,
          flags: READ_ONLY_EXPORT_FLAGS,
          // Every client reads it: a local image by its file name, not where it lies here.
          description: `erofs-oci ${isLocalImage(image) ? image.replace(/^.*\//, "") : image}`,
        },
        maxInflightBytes,
        idleTimeoutMs,
        onConnection: (event) => {
          // Every slot taken: the operator learns that clients are turned away (they are told
          // "too many connections" in the handshake), one line per 10 s.
          if (event.kind === "refused") {
            debug("nbd connection", event);
            return fullWarning("a client was refused: all 64 connection slots are taken");
          }
          if (event.kind === "evicted") {
            debug("nbd connection", event);
            return fullWarning(
              `a stalled client (quiet ${Math.round(event.idleMs / 1000)} s) was closed to ` +
                "make room for a new one",
            );
          }
          if (event.kind === "pool-hostage") {
            debug("nbd connection", event);
            return fullWarning(
              `a client whose replies did not move for ${Math.round(event.idleMs / 1000)} s ` +
                "was closed: it held the shared byte budget another client waited for",
            );
          }
          if (event.kind !== "accept-failed") return debug("nbd connection", event);
          // A flood fails accept again and again: one line per 10 s, with the count since.
          acceptWarning(
            `cannot accept a client (${event.reason}); retrying in ${event.pauseMs} ms`,
          );
        },
        // A client's failed read is the operator's to know of (the registry sent wrong bytes,
        // went away): one line per 10 s with the cause, every one under --debug.
        onRequest: (e) => {
          if (!e.error) return;
          const what = `${commandName(e.type)} ${e.offset}+${e.length} → errno ${e.error}`;
          // A request refused as the client's mistake (a WRITE to this read-only export, a
          // READ past its end) is the client's to see; only a failing source is warned of, so
          // that a client's refusals cannot take the throttled warning's slot from an EIO.
          if (isDebug() || e.cause === undefined) return debug(what, e.cause ?? "");
          const cause = e.cause instanceof Error ? `: ${e.cause.message}` : "";
          readWarning(
            `a client's ${commandName(e.type)} of ${e.length} bytes at ${e.offset} failed ` +
              `(${NBD_ERROR_NAMES[e.error] ?? `error ${e.error}`})${cause}`,
          );
        },
      });
      uri = server.uri;
      console.log(server.uri);
      // NBD has no users: a TCP client reads every block, whatever the image's file modes.
      if (listen.transport === "tcp") {
        warn(
          `serving over TCP: any local user (and any host reaching ${server.uri}) can read ` +
            "the whole image, root-only files in it included; --listen unix:PATH keeps it to root",
        );
      }
      info(`serving ${image} (${formatBytes(cache.size)}) at ${server.uri}; Ctrl-C stops`);
      await stopped;
      await server.close();
      debug("cache stats", served.stats());
    } finally {
      stopWatching();
      await stopMetrics?.();
      prefetchAbort.abort();
      await prefetched;
      await served.close();
    }
    return 0;
  },
};

/**
 * The largest READ a client may send is 1/128 + 1/8 of --max-inflight: below 16M that is under
 * the 2 MiB nbdcopy and the kernel's NBD client send, whose READs were then refused (EINVAL;
 * with 1M, even nbdcopy's default 256 KiB ones).
 */
const MIN_INFLIGHT_BYTES = 16 * 1024 * 1024;
interface ServeValues extends RegistryOptionValues {
  "disk-cache-size"?: string;
  "disk-cache-keep-free"?: string;
  "no-disk-cache"?: boolean;
  "require-verified"?: boolean;
  "fetch-all"?: boolean;
  layer?: string;
  blob?: string;
  "any-media-type"?: boolean;
}

/** The raw (uncached) source of IMAGE and a default export name for it. */
async function openSource(
  image: string,
  values: ServeValues,
  layer: number | undefined,
  diskCacheSizes: DiskCacheSizes,
): Promise<{ source: Source; name: string }> {
  if (isLocalImage(image)) {
    if (values.layer !== undefined || values.blob !== undefined) {
      throw new UsageError("serve: --layer and --blob apply to registry images only");
    }
    return { source: await openLocalFile(image), name: image.split("/").pop()! };
  }
  const opened = await openImage("serve", image, values);
  try {
    const resolved = await opened.resolve();
    const layers = selectLayers(resolved, {
      layer,
      blob: values.blob,
      anyMediaType: values["any-media-type"],
      // A tar layer's bytes are no file system: --any-media-type only failed later on its magic.
      notErofsHint: (types) =>
        types.every((type) => tarLayerKind(type) !== undefined)
          ? "serve exports EROFS layers; a tar layer mounts lazily with `erofs-oci mount " +
            "--index-missing IMAGE DIR`, or becomes EROFS with `erofs-oci convert IMAGE NEWREF`"
          : undefined,
    });
    if (layers.length !== 1) {
      throw new UsageError(
        `serve: ${opened.name} has ${layers.length} EROFS layers; serve exports one`,
        `pick one with --layer N (${layerList(layers.map((l) => l.index))}) or --blob DIGEST`,
      );
    }
    debug(`serving layer ${layers[0].index} ${layers[0].digest} of ${opened.name}`);
    // The blob owns the client from here on (RegistryBlob.close closes it).
    const blob = new RegistryBlob(opened.store, opened.repository, layers[0]);
    const verified = opened.registry
      ? await verifyServedLayer(opened.registry, resolved.manifestDigest, layers[0], blob, {
        requireVerified: values["require-verified"],
        refetch: refetchFromRegistry(blob),
      })
      : undefined;
    return {
      source: withDiskCache(
        verified?.source ?? blob,
        layers[0].digest,
        opened,
        values,
        diskCacheSizes,
        verified?.cacheOrigin,
      ),
      name: layers[0].digest,
    };
  } catch (error) {
    opened.close();
    throw error;
  }
}

interface DiskCacheSizes {
  maxBytes?: number;
  keepFreeBytes?: number;
}

/** A registry blob behind the host's disk cache unless --no-disk-cache (layouts are local). */
function withDiskCache(
  blob: Source,
  digest: string,
  opened: Awaited<ReturnType<typeof openImage>>,
  values: ServeValues,
  sizes: DiskCacheSizes,
  verifiedOrigin?: string,
): Source {
  if (values["no-disk-cache"] || sizes.maxBytes === 0 || !opened.registry) return blob;
  const cache = DiskCache.open({
    ...sizes,
    onWarning: warn,
    onNotice: info,
    completeInBackground: values["fetch-all"],
  });
  if (!cache) return blob;
  const { ref, client } = opened.registry;
  return cache.wrap(blob, {
    digest,
    origin: verifiedOrigin ?? registryOrigin(ref.registry, client.plainHttp),
  });
}

/**
 * Opens the image as `mount` does: a symlink followed only when root or the caller owns it
 * (another user's link to a 0600 image of root's was served to anyone), then only the file a
 * path with no symlink on the way reaches.
 */
async function openLocalFile(image: string): Promise<Source> {
  try {
    return await LocalFile.open(realPathTrusted(image), { noSymlinks: true });
  } catch (error) {
    if (error instanceof UntrustedSymlinkError) throw error;
    if (error instanceof SysError && error.errno === Errno.ENOENT) {
      throw new UserError(`serve: ${image}: no such file`);
    }
    if (
      error instanceof Deno.errors.PermissionDenied ||
      (error instanceof SysError && error.errno === Errno.EACCES)
    ) {
      throw new UserError(`serve: ${image}: permission denied`);
    }
    throw error;
  }
}

/** Refuses anything that is not EROFS before a client sees it. */
async function checkImage(source: Source, image: string): Promise<void> {
  if (source.size < EROFS_SUPER_END) {
    throw new FormatError(`not an EROFS image: ${image} has only ${source.size} bytes`);
  }
  checkErofsSuperblock(await source.read(0, EROFS_SUPER_END), image);
}
