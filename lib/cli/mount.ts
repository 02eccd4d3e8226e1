import { plural, printable } from "../text.ts";
import type { Command } from "./command.ts";
import { MountError } from "../errors.ts";
import { REGISTRY_OPTIONS_HELP } from "./registry_options.ts";
import { discardManifestAhead } from "./manifest_ahead.ts";
import { info } from "../log.ts";
import { testHold } from "../test_pause.ts";
import { chooseBackend } from "../mount/backend_choice.ts";
import {
  checkMountTarget,
  checkOverlayDirs,
  checkRoot,
  checkUpperClosed,
  type MountTarget,
  refuseTargetInOverlayDirs,
  releaseMountTarget,
} from "../mount/target_dir.ts";
import { mountImage } from "../daemon/mount_image.ts";
import { diskCacheSettings, useDiskCacheSettings } from "../mount/layer_source.ts";
import { spawnServer, takeServerSpawnedAhead } from "../daemon/server_process.ts";
import { DEFAULT_MOUNT_CACHE_BYTES, MIN_LAYER_CACHE_BYTES } from "../state/mount_spec.ts";
import type { MountTrust } from "../mount/mount_options.ts";
import { foreignIndexNotices } from "../mount/tar_indexes.ts";
import { overlayLayerLimit, upperWorkBytes } from "../mount/overlay.ts";
import { forgetTracePrefetch } from "../trace/mount_lookup.ts";
import { mark } from "../timing.ts";
import { catchInterrupts, takeInterruptsAhead } from "./interrupt.ts";
import { checkOpenFileLimit } from "../daemon/open_file_budget.ts";
import { abortable } from "../source/abortable.ts";
import {
  type MountValues,
  readMountArgs,
  refuseOurMountPoint,
  refuseSwappedArguments,
} from "./mount_args.ts";
import { resolveForMount } from "./mount_resolve.ts";
import { watchForeground } from "./mount_foreground.ts";

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
  const { image, dir, values, layer, cacheBytes, trust, disk } = readMountArgs(argv);
  useDiskCacheSettings(disk);
  checkRoot();
  if (values.upper !== undefined) {
    ({ upper: values.upper, work: values.work } = checkOverlayDirs(values.upper, values.work!));
    if (!trust.suid) checkUpperClosed(values.upper);
  }
  refuseSwappedArguments(image, dir);
  refuseOurMountPoint(dir);
  const target = checkMountTarget(dir);
  if (values.upper !== undefined) {
    refuseTargetInOverlayDirs(target.path, { upper: values.upper, work: values.work! });
  }
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
      // --foreground's watch takes the signals over; otherwise one that comes once DIR is
      // mounted and recorded undoes nothing: the mount stays, it is said so, and the command
      // ends as a mount that succeeded (it was killed half-way through saying so, exit 130).
      mounted: () =>
        values.foreground ? interrupt.close() : interrupt.settle(() =>
          info(
            `the interrupt came after ${dir} was mounted: it stays mounted ` +
              `(\`erofs-oci umount ${dir}\` removes it)`,
          )
        ),
    });
  } finally {
    interrupt.close();
    releaseMountTarget(target);
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
  if (resolved.layers.length > limit && resolved.layers.length <= overlayLayerLimit()) {
    // The --upper/--work paths take the room (it said "stacks at most 0" and to flatten).
    throw new MountError(
      `--upper and --work are too long for an overlay of ${
        plural(resolved.layers.length, "layer")
      }: ` +
        "mount(2) takes one page of overlay options",
      "use directories with shorter paths (their real paths count: symlinks are resolved)",
    );
  }
  if (resolved.layers.length > limit) {
    // Before any layer is exported and mounted (a 1000-layer image took 80 s to fail).
    throw new MountError(
      `${image} has ${resolved.layers.length} layers: an overlay here stacks at most ${limit}`,
      "flatten the image (`erofs-oci convert IMAGE DEST --flatten`) or mount one layer (--layer N)",
    );
  }
  checkOpenFileLimit(backend, resolved.layers.length, "this image");
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
  await testHold("mount-mounted");
  mark("cli: mounted");
  const devices = state.layers.map((l) => l.device ?? l.blockPath).join(", ");
  console.log(
    `mounted ${printable(state.image)} at ${printable(state.target)} (${state.layers.length} layer${
      state.layers.length === 1 ? "" : "s"
    }, ${backend}: ${devices}; ${state.options?.join(",")}; server pid ${state.serverPid})`,
  );
  for (const notice of foreignIndexNotices(resolved.layers)) info(notice);
  if (foreground) await foreground();
  return 0;
}
