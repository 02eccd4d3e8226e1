import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs, parseLayerIndex } from "./command.ts";
import { MountError, UsageError } from "../errors.ts";
import { parseReference } from "../oci/reference.ts";
import { openRegistry, REGISTRY_OPTIONS_HELP } from "./registry_options.ts";
import { MOUNT_OPTIONS } from "./mount_option_specs.ts";
import { discardManifestAhead, takeManifestAhead } from "./manifest_ahead.ts";
import { parseSize } from "./size.ts";
import { info } from "../log.ts";
import { chooseBackend } from "../mount/backend_choice.ts";
import {
  checkMountTarget,
  checkOverlayDirs,
  checkRoot,
  checkUpperClosed,
  type MountTarget,
  releaseMountTarget,
} from "../mount/target_dir.ts";
import { mountImage } from "../daemon/mount_image.ts";
import { diskCacheSettings, useDiskCacheSettings } from "../mount/layer_source.ts";
import { spawnServer, takeServerSpawnedAhead } from "../daemon/server_process.ts";
import { DEFAULT_MOUNT_CACHE_BYTES, MIN_LAYER_CACHE_BYTES } from "../state/mount_spec.ts";
import { type MountState, readStates, serverOf } from "../state/mount_record.ts";
import { serverAlive } from "../state/server_liveness.ts";
import { type MountTrust, parseMountTrust } from "../mount/mount_options.ts";
import { claimSocketPath, parseListenAddress } from "../nbd/address.ts";
import { metricsListenRefusal } from "../metrics/listen_refusal.ts";
import { withLocalPathHint } from "./local_path_hint.ts";
import { foreignIndexNotices } from "../mount/tar_indexes.ts";
import { overlayLayerLimit, upperWorkBytes } from "../mount/overlay.ts";
import {
  isLocalImage,
  type ResolvedLayers,
  resolveLayoutImage,
  resolveLocalImage,
  resolveRegistryImage,
  type TarIndexSources,
} from "../mount/resolve_layers.ts";
import { attachChunkTables, type EarlyTable, fetchBoundTables } from "../verify/layer_tables.ts";
import { INDEX_CACHE_DIR, RUNTIME_ROOT, STATE_ROOT } from "../state/runtime_dirs.ts";
import {
  forgetTracePrefetch,
  lookUpTrace,
  prepareTracePrefetch,
  type TraceLookup,
} from "../trace/mount_lookup.ts";
import {
  type EarlyMetadata,
  fetchMetadataEarly,
  fetchMetadataForServer,
  type HandedMetadata,
} from "../daemon/handed_metadata.ts";
import { mark } from "../timing.ts";
import { realPathTrusted, UntrustedSymlinkError } from "../../ffi/path_resolve.ts";
import { LayerProgress } from "./progress.ts";
import { catchInterrupts, onInterrupt, takeInterruptsAhead } from "./interrupt.ts";
import { abortable } from "../source/abortable.ts";

function parseMountArgs(argv: string[]) {
  return parseCommandArgs("mount", argv, MOUNT_OPTIONS);
}

type MountValues = ReturnType<typeof parseMountArgs>["values"];

export const mountCommand: Command = {
  name: "mount",
  summary: "mount an EROFS image from a registry (or a local file) without pulling it",
  help: `Usage: erofs-oci mount IMAGE DIR [options]

Makes IMAGE readable at DIR (an existing, empty directory), fetching data on demand.
IMAGE is a registry reference
([registry[:port]/]name[:tag][@sha256:…]), an OCI image layout directory
(oci:PATH[:TAG]), a local EROFS image file, or a local tar or tar.gz file (through an
index, as a tar layer).
Ordinary tar+gzip layers mount lazily through a tar index: one made on this host
(--index-missing, once per layer: kept in /var/lib/erofs-oci/indexed-here, its pieces
checked against the layer digest), else one in --index DIR, else the one pushed with
\`erofs-oci index IMAGE --push\` (found through the referrers API or its fallback tag);
a copy of the index in use is kept in /var/lib/erofs-oci/index. An OCI layout's tar
layers take an index from --index DIR (\`erofs-oci index oci:PATH -o DIR\`) or
--index-missing.
One EROFS layer is mounted read-only at DIR; several are each mounted privately and
stacked with overlayfs at DIR (top layer first), so whiteouts and opaque directories of
upper layers hide lower content as a container runtime would.
The command returns once DIR is mounted and readable; on failure nothing is left behind.
Every mount (EROFS, overlay, loop) is nosuid,nodev: a setuid-root file or a device node in
an image gives no privilege. --suid/--dev (-o suid,dev) lift that for a container rootfs.

Options:
      --layer N          mount only layer N (0 = bottom, see \`erofs-oci inspect\`)
      --blob DIGEST      mount only the layer with this digest
      --any-media-type   accept layers whose media type is not application/vnd.erofs
      --backend B        auto (default: nbd when the module is loaded, else fuse), nbd, fuse
      --cache-size SIZE  memory cache per mount (default ${
    DEFAULT_MOUNT_CACHE_BYTES >> 20
  }M, at least ${MIN_LAYER_CACHE_BYTES >> 20}M; e.g. 256M, 1G)
      --disk-cache-size SIZE  bound of the host's shared disk cache of fetched layer
                         bytes in $EROFS_OCI_CACHE_DIR (default /var/cache/erofs-oci, 4G;
                         0: none, as --no-disk-cache)
      --disk-cache-keep-free SIZE  free space the disk cache leaves on its file
                         system, evicting to keep it (default 10% of it, at most 4G; 0: none)
      --no-disk-cache    keep fetched bytes in memory only
      --metrics-listen ADDR  the server answers Prometheus scrapes of this mount at
                         GET /metrics on unix:PATH or tcp:HOST:PORT while it runs
      --fetch-all        once mounted, fetch the rest of each layer into the disk cache
                         while readers are quiet (a long-running mount ends up local)
      --require-verified refuse layers without a chunk-digest table (their bytes could
                         not be checked; tables are written by push, build --push,
                         convert and \`erofs-oci checksums IMAGE --push\`), and tar
                         indexes not made on this host (with --index-missing: made here)
      --no-prefetch      do not prefetch what the image's trace (\`erofs-oci trace\`) lists
      --upper DIR        writable overlay: upper directory (needs --work); closed to other
                         users (0700, or under a root directory that is), or on a nosuid
                         file system: files copied up keep their setuid bits and capabilities
      --work DIR         overlay work directory on the same file system as --upper
      --suid             honour setuid/setgid bits of the image (default: nosuid)
      --dev              honour device nodes of the image (default: nodev)
  -o, --options LIST     mount options: suid, nosuid, dev, nodev (comma-separated)
      --index DIR        tar indexes made by \`erofs-oci index … -o DIR\` (used for tar+gzip
                         layers with no index made on this host)
      --index-missing    index a tar/tar+gzip layer that has no index on this host: the
                         layer is read once (verified, kept in the disk cache, so reads
                         fetch nothing more); later mounts of it need no flag
      --tarindex FILE    tar-index meta image of the selected layer made by
      --zinfo FILE         \`mkfs.erofs --tar=i --gzinfo\` (erofs-utils; reads unverified)
      --foreground       keep the server attached to this terminal (debugging, systemd);
                         Ctrl-C or SIGTERM then unmounts DIR and stops it
${REGISTRY_OPTIONS_HELP}

Crash recovery (NBD backend): each device gets a recovery file in
/var/run/erofsmount/nbd (directory 0700, file 0600; erofs-utils 1.9 format) so
\`erofs-oci reattach\` can bring a killed server back. It records the resolved layer digest.
A password given with --password/--password-stdin is stored in it (base64, as erofs-utils
does) because reattach needs it; credentials from Docker's config or a credential helper
are not written and are looked up again at reattach. The file is removed by umount.`,
  async run(argv) {
    try {
      return await runMount(argv);
    } finally {
      discardManifestAhead(); // a no-op once resolution took it
    }
  },
};

async function runMount(argv: string[]): Promise<number> {
  const { values, positionals } = parseMountArgs(argv);
  const [image, dir] = expectPositionals("mount", positionals, ["IMAGE", "DIR"]);
  const layer = parseLayerIndex("mount", values.layer);
  if ((values.upper === undefined) !== (values.work === undefined)) {
    throw new UsageError("mount: --upper and --work go together");
  }
  const cacheBytes = values["cache-size"] === undefined
    ? DEFAULT_MOUNT_CACHE_BYTES
    : parseSize(values["cache-size"], "--cache-size");
  if (cacheBytes < MIN_LAYER_CACHE_BYTES) {
    // Each layer's cache holds at least that much whatever was asked (server_layers.ts).
    throw new UsageError(
      `mount: --cache-size ${values["cache-size"]} is below the least a mount uses (` +
        `${MIN_LAYER_CACHE_BYTES >> 20}M)`,
    );
  }
  const trust = parseMountTrust(values, values.options);
  if (values["fetch-all"] && values["no-disk-cache"]) {
    throw new UsageError("mount: --fetch-all fetches into the disk cache: drop --no-disk-cache");
  }
  if (values["metrics-listen"] !== undefined) checkMetricsListen(values["metrics-listen"]);
  // The options over what the environment says; the detached server inherits the result.
  const disk = diskCacheSettings();
  if (values["fetch-all"]) disk.fetchAll = true;
  if (values["no-disk-cache"]) disk.maxBytes = 0;
  else if (values["disk-cache-size"] !== undefined) {
    disk.maxBytes = parseSize(values["disk-cache-size"], "--disk-cache-size");
    if (disk.maxBytes === 0 && values["fetch-all"]) {
      throw new UsageError(
        "mount: --fetch-all fetches into the disk cache: drop --disk-cache-size 0",
      );
    }
  }
  if (values["disk-cache-keep-free"] !== undefined) {
    disk.keepFreeBytes = parseSize(values["disk-cache-keep-free"], "--disk-cache-keep-free");
  }
  useDiskCacheSettings(disk);
  checkRoot();
  if (values.upper !== undefined) {
    ({ upper: values.upper, work: values.work } = checkOverlayDirs(values.upper, values.work!));
    if (!trust.suid) checkUpperClosed(values.upper);
  }
  refuseSwappedArguments(image, dir);
  refuseOurMountPoint(dir);
  const target = checkMountTarget(dir);
  // Ctrl-C from here on undoes what was done (server, FUSE mounts, keeper, layer mounts)
  // instead of leaving it running, unrecorded, where neither list nor umount finds it.
  const said = `mount interrupted: nothing is left mounted at ${dir}`;
  const interrupt = takeInterruptsAhead() ?? catchInterrupts(said);
  interrupt.say(said);
  try {
    return await mountAt(target, image, values, {
      cacheBytes,
      layer,
      trust,
      signal: interrupt.signal,
      mounted: () => interrupt.close(),
    });
  } finally {
    interrupt.close();
    releaseMountTarget(target);
  }
}

/**
 * --metrics-listen checked where the user sees the answer: a bad address is a usage error, and
 * one that cannot be taken (a port in use, a missing directory, a path that is not a socket or
 * is another server's) a refusal before anything starts. Binding and closing leaves the address
 * free for another process meanwhile (a concurrent mount with the same one): the server's own
 * bind then fails the mount before it is ready (startServerMetrics); this is the fast case.
 */
function checkMetricsListen(spec: string): void {
  const addr = parseListenAddress(spec, "--metrics-listen");
  const where = addr.transport === "tcp" ? `${addr.hostname}:${addr.port}` : addr.path;
  try {
    if (addr.transport === "tcp") {
      if (addr.port !== 0) Deno.listen({ hostname: addr.hostname, port: addr.port }).close();
    } else {
      const slash = addr.path.lastIndexOf("/");
      const dir = slash < 0 ? "." : slash === 0 ? "/" : addr.path.slice(0, slash);
      // The runtime dir and those below it are made by the mount itself.
      const made = dir === RUNTIME_ROOT || dir.startsWith(`${RUNTIME_ROOT}/`);
      if (!made && !Deno.statSync(dir).isDirectory) throw new Error(`${dir} is not a directory`);
      // A file or directory there, or another server's socket (a leftover one goes).
      claimSocketPath(addr.path);
    }
  } catch (error) {
    throw metricsListenRefusal(spec, `cannot listen on ${where}: ${(error as Error).message}`);
  }
}

/**
 * `mount DIR IMAGE`, the order swapped: said so, instead of "DIR does not exist: mkdir -p" (a
 * directory named like the reference, then "a directory, not an image").
 */
function refuseSwappedArguments(image: string, dir: string): void {
  try {
    Deno.statSync(dir);
    return; // DIR exists: whatever it is, checkMountTarget judges it
  } catch { /* missing: maybe a reference */ }
  try {
    if (!Deno.statSync(image).isDirectory) return;
    parseReference(dir);
  } catch {
    return;
  }
  throw new UsageError(
    `mount: ${image} is a directory and ${dir} an image reference: IMAGE comes first`,
    `erofs-oci mount ${dir} ${image}`,
  );
}

/** DIR holding one of our mounts: said so (it was "not empty", which hid why). */
function refuseOurMountPoint(dir: string): void {
  let real: string;
  try {
    real = Deno.realPathSync(dir);
  } catch {
    return; // checkMountTarget says what is wrong with it
  }
  const ours = readStates().find((state) => state.target === real);
  if (ours) {
    throw new MountError(
      `${dir} is already mounted by erofs-oci (${ours.image})`,
      `unmount it first: erofs-oci umount ${dir}`,
    );
  }
}

interface MountAtOptions {
  cacheBytes: number;
  layer?: number;
  trust: MountTrust;
  /** Aborted when the user interrupts the mount. */
  signal?: AbortSignal;
  /** Called once the mount is complete (an interrupt no longer undoes it). */
  mounted?: () => void;
}

/** A progress line per layer `--index-missing` reads whole (on a terminal only). */
function indexProgress(): Pick<TarIndexSources, "onIndexBytes" | "onIndexed"> {
  const progress = new LayerProgress("indexing");
  return {
    onIndexBytes: (layer, doneBytes) => progress.update(layer, doneBytes),
    onIndexed: () => progress.finish(),
  };
}

function tarIndexSources(values: MountValues, signal?: AbortSignal): TarIndexSources {
  if (values.zinfo !== undefined && values.tarindex === undefined) {
    throw new UsageError("mount: --zinfo goes with --tarindex");
  }
  const absolute = (path: string, what: string) => {
    try {
      return realPathTrusted(path); // another user's symlink would pick a file of root's
    } catch (error) {
      if (error instanceof UntrustedSymlinkError) throw error;
      throw new UsageError(`mount: cannot open ${what} ${path}: ${(error as Error).message}`);
    }
  };
  return {
    cacheDir: INDEX_CACHE_DIR,
    indexMissing: values["index-missing"] ?? false,
    requireVerified: values["require-verified"] ?? false,
    signal,
    ...indexProgress(),
    dir: values.index === undefined ? undefined : absolute(values.index, "--index"),
    files: values.tarindex === undefined ? undefined : {
      meta: absolute(values.tarindex, "--tarindex"),
      zinfo: values.zinfo === undefined ? undefined : absolute(values.zinfo, "--zinfo"),
    },
  };
}

async function mountAt(
  target: MountTarget,
  image: string,
  values: MountValues,
  opts: MountAtOptions,
): Promise<number> {
  const { backend, reason } = chooseBackend(values.backend!);
  // The server (a second Deno: runtime and modules, ~0.1 s of CPU) starts up while the image
  // is resolved; it waits for its spec on stdin. Everything it reads from the environment
  // (disk cache, --fetch-all) is set by now.
  const foreground = values.foreground ?? false;
  const server = await takeServerSpawnedAhead(foreground, backend) ??
    spawnServer(foreground, backend);
  mark("cli: server spawned");
  try {
    return await resolveAndMount(target, image, values, opts, backend, reason, server);
  } finally {
    await server.discard(); // a no-op once the server got its spec
  }
}

async function resolveAndMount(
  target: MountTarget,
  image: string,
  values: MountValues,
  opts: MountAtOptions,
  backend: "nbd" | "fuse",
  reason: string,
  server: ReturnType<typeof spawnServer>,
): Promise<number> {
  const { cacheBytes, layer } = opts;
  // Resolving leaves nothing to undo (indexing here removes its work at the signal itself):
  // an interrupt abandons it at once.
  const { resolved, credentials, prefetchFile, metadata } = await abortable(
    resolveForMount(image, values, layer, opts.signal),
    opts.signal,
    (late) => forgetTracePrefetch(late.prefetchFile),
  );
  const absolute = (dir?: string) =>
    dir === undefined || dir.startsWith("/") ? dir : `${Deno.cwd()}/${dir}`;
  const limit = overlayLayerLimit(upperWorkBytes(absolute(values.upper), absolute(values.work)));
  if (resolved.layers.length > limit) {
    // Before any layer is exported and mounted (a 1000-layer image took 80 s to fail).
    throw new MountError(
      `${image} has ${resolved.layers.length} layers: an overlay here stacks at most ${limit}`,
      "flatten the image (`erofs-oci convert IMAGE DEST --flatten`) or mount one layer (--layer N)",
    );
  }
  if (values.backend === "auto") info(`backend: ${backend} (${reason})`);

  const state = await mountImage({
    target: target.path,
    pinnedTarget: target,
    trust: opts.trust,
    image: resolved.image,
    manifestDigest: resolved.manifestDigest,
    backend,
    cacheBytes,
    layers: resolved.layers,
    credentials,
    upper: values.upper,
    work: values.work,
    metricsListen: values["metrics-listen"],
    diskCache: diskCacheSettings(),
    foreground: values.foreground,
    server,
    metadata,
    signal: opts.signal,
  }).finally(() => forgetTracePrefetch(prefetchFile));
  // Watching starts before the mount's own scope closes, and takes a signal that scope caught
  // after DIR was mounted: in the gap between them a SIGTERM was caught, but nobody acted on
  // it, and the CLI then waited forever with DIR still mounted.
  const foreground = values.foreground ? watchForeground(state, opts.signal) : undefined;
  opts.mounted?.();
  mark("cli: mounted");
  const devices = state.layers.map((l) => l.device ?? l.blockPath).join(", ");
  console.log(
    `mounted ${state.image} at ${state.target} (${state.layers.length} layer${
      state.layers.length === 1 ? "" : "s"
    }, ${backend}: ${devices}; ${state.options?.join(",")}; server pid ${state.serverPid})`,
  );
  for (const notice of foreignIndexNotices(resolved.layers)) info(notice);
  if (foreground) await foreground();
  return 0;
}

/**
 * `mount --foreground` after the mount: waits while the server runs; Ctrl-C, SIGTERM or a
 * hangup unmount DIR and stop the server (umount), as stopping a foreground mount means. Before,
 * the server stopped on the terminal's Ctrl-C by itself and left DIR mounted on a FUSE file
 * nobody served. Watches from the call; the function it returns waits.
 */
function watchForeground(state: MountState, caught?: AbortSignal): () => Promise<void> {
  let unmounting: Promise<void> | undefined;
  const unmount = () => {
    unmounting ??= (async () => {
      const { umountCommand } = await import("./umount.ts");
      try {
        await umountCommand.run([state.target]);
      } catch (error) {
        // Busy (a reader inside): detached now, gone once the last user leaves.
        info(`${(error as Error).message}; detaching it (--lazy)`);
        await umountCommand.run([state.target, "--lazy"]);
      }
    })();
  };
  const stopWatching = onInterrupt(unmount);
  return async () => {
    try {
      if (caught?.aborted) unmount();
      while (!unmounting && serverAlive(serverOf(state))) {
        await new Promise((r) => setTimeout(r, 200));
      }
      await unmounting;
    } finally {
      stopWatching();
    }
  };
}

/** The image's layers and what the server is handed with them (credentials, metadata, trace). */
async function resolveForMount(
  image: string,
  values: MountValues,
  layer: number | undefined,
  signal?: AbortSignal,
): Promise<{
  resolved: ResolvedLayers;
  credentials?: { username: string; password: string };
  prefetchFile?: string;
  metadata?: Promise<HandedMetadata>;
}> {
  let resolved: ResolvedLayers;
  let credentials: { username: string; password: string } | undefined;
  let prefetchFile: string | undefined;
  let metadata: Promise<HandedMetadata> | undefined;
  const selection = { layer, blob: values.blob, anyMediaType: values["any-media-type"] };
  const indexes = tarIndexSources(values, signal);
  const fromLayout = await resolveLayoutImage(image, values.platform, selection, indexes);
  if (fromLayout) {
    resolved = fromLayout;
  } else if (isLocalImage(image)) {
    // A file is one image: these pick from a registry image or layout, and were ignored (a
    // --blob meant as a pin of the content went unchecked).
    const picked = [
      layer !== undefined && layer !== 0 ? "--layer" : undefined,
      values.blob !== undefined ? "--blob" : undefined,
      values.platform !== undefined ? "--platform" : undefined,
    ].filter((option) => option !== undefined);
    if (picked.length > 0) {
      throw new UsageError(
        `mount: ${picked.join(", ")} picks from a registry image or an oci: layout; ${image} is ` +
          "a local file (one image)",
        "leave it out, or mount the image from its registry or layout",
      );
    }
    resolved = await resolveLocalImage(image, indexes);
  } else {
    const opened = await openRegistry("mount", image, values);
    credentials = opened.credentials;
    // The manifest GET started before mount's modules loaded (manifest_ahead.ts), when it
    // was for this image through a client like this one: its client goes on.
    const ahead = opened.credentials ? undefined : takeManifestAhead({
      image,
      plainHttp: opened.plainHttp,
      insecure: opened.insecure,
    });
    if (ahead) opened.client = ahead.client;
    const client = opened.client;
    const repository = opened.ref.repository;
    // The chain to the server's pinned metadata is manifest -> chunk table -> metadata GET;
    // the table and then the metadata (and the trace lookup the spec waits for) are fetched as
    // soon as the manifest is there, side by side with its config blob and the layers' heads.
    // Cancelled when the mount fails first.
    // The GETs started while resolving (the metadata hand-over's): a Ctrl-C ends them too, or
    // the undo waited for a stalled one (~50 s).
    const abortEarly = new AbortController();
    const abortOnInterrupt = () => abortEarly.abort(signal?.reason);
    signal?.addEventListener("abort", abortOnInterrupt, { once: true });
    let earlyTables: Map<string, EarlyTable> | undefined;
    let earlyMetadata: EarlyMetadata | undefined;
    let traceLookup: TraceLookup | undefined;
    try {
      resolved = await resolveRegistryImage(
        opened,
        selection,
        indexes,
        (manifest, chosen) => {
          mark("cli: manifest fetched");
          if (!values["no-prefetch"]) {
            traceLookup = lookUpTrace(client, repository, manifest.digest);
          }
          earlyTables = fetchBoundTables(client, repository, manifest, chosen, STATE_ROOT);
          earlyMetadata = fetchMetadataEarly(client, repository, earlyTables, chosen, {
            signal: abortEarly.signal,
          });
        },
        ahead?.top,
        STATE_ROOT,
      ).catch((error) => {
        throw withLocalPathHint(image, error);
      });
      mark("cli: image resolved");
      // The table and the trace lookups are independent round trips: side by side.
      const layers = resolved.layers;
      const tablesAttached = attachChunkTables(
        client,
        repository,
        resolved.manifestDigest,
        layers,
        {
          requireVerified: values["require-verified"],
          stateDir: STATE_ROOT,
          early: earlyTables,
        },
      );
      const early = earlyMetadata;
      metadata = tablesAttached.then(
        () => fetchMetadataForServer(client, layers, early),
        () => [], // the table error is reported below
      );
      const [tables, trace] = await Promise.allSettled([
        tablesAttached,
        values["no-prefetch"] ? Promise.resolve(undefined) : prepareTracePrefetch(
          client,
          repository,
          resolved.manifestDigest,
          resolved.layers,
          {
            subset: layer !== undefined || values.blob !== undefined,
            // Looked up for this manifest (the hook's is the one resolved), else looked up now.
            lookup: traceLookup,
          },
        ),
      ]);
      mark("cli: chunk tables, trace lookup");
      if (trace.status === "fulfilled") prefetchFile = trace.value;
      if (tables.status === "rejected" || trace.status === "rejected") {
        forgetTracePrefetch(prefetchFile);
        throw tables.status === "rejected"
          ? tables.reason
          : (trace as PromiseRejectedResult).reason;
      }
    } catch (error) {
      abortEarly.abort();
      throw error;
    } finally {
      signal?.removeEventListener("abort", abortOnInterrupt);
      // The client closes once nothing started on it is still running.
      const running = [...(earlyMetadata?.values() ?? [])].map((m) => m.bytes as Promise<unknown>);
      if (traceLookup) running.push(traceLookup);
      Promise.allSettled([metadata, ...running]).finally(() => client.close());
    }
  }
  return { resolved, credentials, prefetchFile, metadata };
}
