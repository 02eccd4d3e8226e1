/**
 * `mount`'s image resolved to the layers it mounts, with what the server is handed along: the
 * registry's credentials, the pinned metadata fetched early, and the trace to prefetch.
 */
import { Errno, UsageError, UserError } from "../errors.ts";
import { openRegistry } from "./registry_options.ts";
import { takeManifestAhead } from "./manifest_ahead.ts";
import { withLocalPathHint } from "./local_path_hint.ts";
import { TablesNotCopiedError } from "../verify/table_artifact.ts";
import {
  isLocalImage,
  type ResolvedLayers,
  resolveLayoutImage,
  resolveLocalImage,
  resolveRegistryImage,
  type TarIndexSources,
} from "../mount/resolve_layers.ts";
import { attachChunkTables, type EarlyTable, fetchBoundTables } from "../verify/layer_tables.ts";
import { indexCacheDir, RUNTIME_ROOT, stateRoot } from "../state/runtime_dirs.ts";
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
import { strerror, SysError } from "../../ffi/libc.ts";
import { LayerProgress } from "./progress.ts";
import type { MountValues } from "./mount_args.ts";

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
  // Named as --upper/--work are (target_dir.ts checkOverlayDirs): missing or of the wrong
  // kind, before anything starts.
  const absolute = (path: string, what: string, kind: "directory" | "file") => {
    let real: string;
    try {
      real = realPathTrusted(path); // another user's symlink would pick a file of root's
    } catch (error) {
      if (error instanceof UntrustedSymlinkError) throw error;
      if (error instanceof SysError && error.errno === Errno.ENOENT) {
        throw new UserError(`${what} ${path} does not exist`);
      }
      const why = error instanceof SysError ? strerror(error.errno) : (error as Error).message;
      throw new UserError(`cannot use ${what} ${path}: ${why}`);
    }
    const info = Deno.statSync(real);
    if (kind === "directory" && !info.isDirectory) {
      throw new UserError(
        `${what} ${path} is not a directory`,
        "give the directory `erofs-oci index IMAGE -o DIR` wrote",
      );
    }
    if (kind === "file" && !info.isFile) {
      throw new UserError(`${what} ${path} is not a regular file`);
    }
    return real;
  };
  return {
    cacheDir: indexCacheDir(),
    indexMissing: values["index-missing"] ?? false,
    requireVerified: values["require-verified"] ?? false,
    signal,
    ...indexProgress(),
    dir: values.index === undefined ? undefined : absolute(values.index, "--index", "directory"),
    files: values.tarindex === undefined ? undefined : {
      meta: absolute(values.tarindex, "--tarindex", "file"),
      zinfo: values.zinfo === undefined ? undefined : absolute(values.zinfo, "--zinfo", "file"),
    },
  };
}

/** The image's layers and what the server is handed with them (credentials, metadata, trace). */
export async function resolveForMount(
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
          earlyTables = fetchBoundTables(
            client,
            repository,
            manifest,
            chosen,
            stateRoot(),
            RUNTIME_ROOT,
          );
          earlyMetadata = fetchMetadataEarly(client, repository, earlyTables, chosen, {
            signal: abortEarly.signal,
          });
        },
        ahead?.top,
        stateRoot(),
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
          stateDir: stateRoot(),
          spareDir: RUNTIME_ROOT,
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
      if (error instanceof TablesNotCopiedError) throw error.forImage(image);
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
