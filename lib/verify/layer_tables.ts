/**
 * Mount side of verified reads: finds each registry layer's chunk-digest table (bound by the
 * manifest's layer annotation, else through the referrers list), keeps a copy for the server
 * (and reattach) in the state directory, and wraps the layer's registry blob in a
 * VerifiedSource.
 */
import { OciError, UserError } from "../errors.ts";
import type { RegistryClient } from "../oci/client.ts";
import { digestOfAsync } from "../oci/digest.ts";
import { keepBlob, keptBlobPath, readKeptBlob } from "../oci/kept_blobs.ts";
import { type FetchedManifest, fetchManifest } from "../oci/resolve.ts";
import { debug, info, warn } from "../log.ts";
import { DIGEST_PATTERN } from "../oci/reference.ts";
import { makeOwnedWorkDir } from "../../ffi/work_dir.ts";
import { mark } from "../timing.ts";
import type { Source } from "../source/source.ts";
import {
  CHUNK_TABLE_ANNOTATION,
  type ChunkTable,
  MAX_TABLE_BYTES,
  parseChunkTable,
} from "./chunk_table.ts";
import { readRegularFile } from "../../ffi/files.ts";
import { annotatedPack, fetchTable, findTablesByReferrer } from "./table_artifact.ts";
import { VerifiedSource, type VerifiedSourceOptions } from "./verified_source.ts";
import { clipped, layerList } from "../text.ts";
import { registryOrigin, tableCacheOrigin } from "../source/disk_cache_names.ts";

/** A layer's table as the mount spec carries it to the server. */
export interface ChunkTableSpec {
  /** Digest of the table blob (the file is re-checked against it when opened). */
  digest: string;
  path: string;
  /** Named by the layer's annotation in the digest-pinned manifest (else: only by referrer). */
  bound: boolean;
}

interface TableLayer {
  kind: string;
  digest?: string;
  sizeBytes: number;
  layerIndex?: number;
  chunkTable?: ChunkTableSpec;
  /** A tar layer served through its index: `pieces` (sha256 per MiB of tar) verify its reads. */
  tarIndex?: { pieces?: string };
}

/** A bound table (named by its layer's annotation) whose GET started early. */
export interface EarlyTable {
  /** The table blob's digest, from the manifest's layer annotation. */
  digest: string;
  /** The metadata pack the layer's annotations name (checked against the table before use). */
  pack?: { digest: string; sizeBytes: number };
  /**
   * The table, already kept in the state directory (`path`); rejects as fetchTable does (a
   * tampered table is an error of the mount).
   */
  fetched: Promise<{ table: ChunkTable; bytes: Uint8Array; path: string }>;
}

/**
 * Starts the GET of each table `manifest` binds to one of `layers` (by the layer annotation),
 * as soon as the manifest is there: the mount's metadata prefetch waits for the table, and the
 * table needs nothing but the manifest. Each is kept in `stateDir` as soon as it is there,
 * before anything is fetched after it (the metadata GET makes a registry on this host read
 * ~100 MB of a cold disk, and a file created meanwhile waits behind those reads).
 * attachChunkTables then takes these (`early`) instead of fetching the manifest and the
 * tables again. Keyed by layer digest.
 */
export function fetchBoundTables(
  client: RegistryClient,
  repository: string,
  manifest: FetchedManifest,
  layers: { digest: string; sizeBytes: number }[],
  stateDir: string,
  spareDir?: string,
): Map<string, EarlyTable> {
  const early = new Map<string, EarlyTable>();
  if (manifest.document.kind !== "manifest") return early;
  for (const d of manifest.document.layers) {
    const table = d.annotations?.[CHUNK_TABLE_ANNOTATION];
    const layer = layers.find((l) => l.digest === d.digest && l.sizeBytes === d.size);
    if (!table || !layer || early.has(d.digest)) continue;
    const fetched = keptOrFetchedTable(client, repository, table, layer, stateDir, spareDir).then(
      (got) => {
        mark("cli: table fetched");
        return got;
      },
    );
    fetched.catch(() => {}); // awaited (and reported) by attachChunkTables, or dropped
    const pack = annotatedPack(d.annotations);
    early.set(d.digest, { digest: table, fetched, ...(pack ? { pack } : {}) });
  }
  return early;
}

/**
 * Sets `chunkTable` on each registry layer that has one and says once what is not verified;
 * `requireVerified` turns a layer without a table into an error. `early`: tables of the same
 * manifest already on their way (fetchBoundTables).
 */
export async function attachChunkTables(
  client: RegistryClient,
  repository: string,
  manifestDigest: string | undefined,
  layers: TableLayer[],
  options: {
    requireVerified?: boolean;
    stateDir: string;
    /** Where a table goes when the state dir cannot take it (full, read-only). */
    spareDir?: string;
    early?: Map<string, EarlyTable>;
  },
): Promise<void> {
  const registryLayers = layers.filter((l) => l.kind === "registry" && l.digest);
  if (registryLayers.length === 0 || !manifestDigest) return;
  const early = options.early ?? new Map<string, EarlyTable>();
  // The early tables came from this manifest's own annotations: no second GET of it for them.
  const found = registryLayers.every((l) => early.has(l.digest!))
    ? new Map(
      registryLayers.map((l) => [l.digest!, { digest: early.get(l.digest!)!.digest, bound: true }]),
    )
    : await findLayerTableDigests(client, repository, manifestDigest);
  const unbound: number[] = [];
  const missing: number[] = [];
  for (const layer of registryLayers) {
    const digest = layer.digest!;
    const table = found.get(digest);
    if (!table) {
      // A tar layer indexed by `erofs-oci index` is checked piece by piece already.
      if (!layer.tarIndex?.pieces) missing.push(layer.layerIndex ?? 0);
      continue;
    }
    const started = early.get(digest);
    let path: string;
    if (started?.digest === table.digest && table.bound) path = (await started.fetched).path;
    else {
      ({ path } = await keptOrFetchedTable(
        client,
        repository,
        table.digest,
        {
          digest,
          sizeBytes: layer.sizeBytes,
        },
        options.stateDir,
        options.spareDir,
      ));
    }
    layer.chunkTable = { digest: table.digest, path, bound: table.bound };
    // Not said of a tar layer whose index checks it piece by piece (as for one without a table):
    // a --require-verified mount through an index made here said its reads were unverifiable.
    if (!table.bound && !layer.tarIndex?.pieces) unbound.push(layer.layerIndex ?? 0);
  }
  if (missing.length && options.requireVerified) {
    throw new UserError(
      `--require-verified: ${layerList(missing)} of this image ha${
        missing.length === 1 ? "s" : "ve"
      } no chunk-digest table`,
      "push the image with erofs-oci (push, build --push, convert), or make tables: `erofs-oci checksums IMAGE --push`",
    );
  }
  if (missing.length) {
    info(
      `${
        layerList(missing)
      }: no chunk-digest table, bytes read from the registry are not verified ` +
        "(make one: `erofs-oci checksums IMAGE --push`; refuse such images: --require-verified)",
    );
  }
  if (unbound.length) {
    info(
      `${
        layerList(unbound)
      }: chunk-digest table not bound by the manifest (found by referrer only; ` +
        "a registry could swap both data and table)",
    );
  }
}

/**
 * The table digest of each layer of the image `manifestDigest`: from the layer annotations of
 * the manifest (bound), else from a tables artifact referring to it (unbound).
 */
export async function findLayerTableDigests(
  client: RegistryClient,
  repository: string,
  manifestDigest: string,
): Promise<Map<string, { digest: string; bound: boolean }>> {
  const manifest = await fetchManifest(client, repository, manifestDigest);
  const descriptors = "layers" in manifest.document ? manifest.document.layers : [];
  const found = new Map<string, { digest: string; bound: boolean }>();
  for (const d of descriptors) {
    const table = d.annotations?.[CHUNK_TABLE_ANNOTATION];
    if (table === undefined) continue;
    // Bound to the layer by the pinned manifest: a malformed one is the image's fault, not a
    // table to go without (nor a blob path to ask the registry for).
    if (!DIGEST_PATTERN.test(table)) {
      throw new OciError(
        `layer ${d.digest}: its ${CHUNK_TABLE_ANNOTATION} annotation is not a digest: ` +
          `'${clipped(table)}'`,
        "the image is damaged: push it again, or ask its publisher",
      );
    }
    found.set(d.digest, { digest: table, bound: true });
  }
  if (descriptors.every((d) => found.has(d.digest))) return found;
  const byReferrer = await findTablesByReferrer(client, repository, manifestDigest);
  for (const d of descriptors) {
    const table = byReferrer.get(d.digest);
    if (table && !found.has(d.digest)) found.set(d.digest, { digest: table, bound: false });
  }
  return found;
}

/**
 * The table `digest` as a mount (or reattach) kept it before, else fetched and kept: a remount
 * saves the GET, a round trip on the way to the metadata (63 ms of a 0.55 s host remount). Used
 * only when it still hashes to `digest` and describes `layer`; else fetched again.
 */
async function keptOrFetchedTable(
  client: RegistryClient,
  repository: string,
  digest: string,
  layer: { digest: string; sizeBytes: number },
  stateDir: string,
  spareDir?: string,
): Promise<{ table: ChunkTable; bytes: Uint8Array; path: string }> {
  const kept = await readKeptBlob(stateDir, "tables", digest);
  if (kept) {
    try {
      const table = parseChunkTable(kept, layer);
      return { table, bytes: kept, path: keptBlobPath(stateDir, "tables", digest) };
    } catch { /* another layer's: fetched below */ }
  }
  const got = await fetchTable(client, repository, digest, layer);
  return { ...got, path: await keepTable(stateDir, spareDir, digest, got.bytes) };
}

/** What a full or read-only file system answers a write with, in words. */
const NO_ROOM: Record<string, string> = {
  ENOSPC: "no space left",
  EDQUOT: "disk quota exceeded",
  EROFS: "read-only file system",
};

/** State dirs already said to be unable to keep tables (once per process, not per layer). */
const unableToKeep = new Set<string>();

/**
 * Keeps a fetched table in the state dir, or, when that cannot take it (full, read-only), in
 * `spareDir` (the runtime dir: a tmpfs, gone at reboot with the mounts): the server is handed
 * the table as a file, and a full /var/lib failed every verified mount.
 */
async function keepTable(
  stateDir: string,
  spareDir: string | undefined,
  digest: string,
  bytes: Uint8Array,
): Promise<string> {
  try {
    return await keepBlob(stateDir, "tables", digest, bytes);
  } catch (error) {
    const code = (error as { code?: string }).code ?? "";
    if (spareDir === undefined || !Object.hasOwn(NO_ROOM, code)) throw error;
    const path = await keepBlob(spareDir, "tables", digest, bytes);
    if (!unableToKeep.has(stateDir)) {
      unableToKeep.add(stateDir);
      warn(
        `${stateDir} cannot keep chunk tables (${NO_ROOM[code]}): kept in ${spareDir} until ` +
          `reboot; ${code === "EROFS" ? "make it writable" : "free space there"} for ` +
          "remounts to reuse them",
      );
    }
    return path;
  }
}

/** Reads a kept table again, re-checking its digest and that it describes `layer`. */
export async function loadTable(
  spec: ChunkTableSpec,
  layer: { digest: string; sizeBytes: number },
): Promise<ChunkTable> {
  let bytes: Uint8Array;
  try {
    bytes = await readRegularFile(spec.path, MAX_TABLE_BYTES, "kept chunk table");
  } catch (error) {
    throw new OciError(
      `the kept chunk table ${spec.path} cannot be read: ${(error as Error).message}`,
      "unmount and mount again (the table is fetched again)",
    );
  }
  if (await digestOfAsync(bytes, spec.digest) !== spec.digest) {
    throw new OciError(`the kept chunk table ${spec.path} no longer matches ${spec.digest}`);
  }
  const table = parseChunkTable(bytes, layer);
  return spec.bound ? table : table.withoutMetadataPack();
}

/** The layer's blob behind its table; also the disk-cache origin that keeps verified bytes apart. */
export async function verifiedBlob(
  blob: Source,
  spec: ChunkTableSpec,
  layer: { digest: string; sizeBytes: number },
  origin: string,
  options: {
    hashOnEventLoop?: boolean;
    registry?: TableRegistry;
    refetch?: VerifiedSourceOptions["refetch"];
  } = {},
): Promise<{ source: VerifiedSource; cacheOrigin: string }> {
  const { registry, ...sourceOptions } = options;
  const table = await loadTable(spec, layer).catch((error) => {
    if (!registry) throw error;
    return tableAgain(registry, spec, layer, error);
  });
  return {
    source: new VerifiedSource(blob, table, { origin, ...sourceOptions }),
    cacheOrigin: tableCacheOrigin(origin, spec.digest),
  };
}

/** Where a layer's table can be fetched again (the repository its manifest named it in). */
export interface TableRegistry {
  client: RegistryClient;
  repository: string;
}

/**
 * A kept table that can no longer be read or no longer hashes to its digest (damaged between
 * the mount and its server's start, or before a reattach): fetched again by its digest, kept
 * again where it was, and said once. The registry cannot swap it: the digest comes from the
 * record, which took it from the digest-pinned manifest.
 */
async function tableAgain(
  registry: TableRegistry,
  spec: ChunkTableSpec,
  layer: { digest: string; sizeBytes: number },
  cause: Error,
): Promise<ChunkTable> {
  const got = await fetchTable(registry.client, registry.repository, spec.digest, layer);
  const stateDir = spec.path.replace(/\/tables\/[^/]*$/, "");
  if (stateDir !== spec.path && keptBlobPath(stateDir, "tables", spec.digest) === spec.path) {
    await keepBlob(stateDir, "tables", spec.digest, got.bytes).catch(() => {});
  }
  console.warn(`${cause.message}; fetched it again from the registry`);
  return spec.bound ? got.table : got.table.withoutMetadataPack();
}

/**
 * `serve`: the one served layer behind its table (kept in memory only), or undefined when it
 * has none (said once; `requireVerified` refuses).
 */
export async function verifyServedLayer(
  registry: { client: RegistryClient; ref: { registry: string; repository: string } },
  manifestDigest: string,
  layer: { index: number; digest: string; sizeBytes: number },
  blob: Source,
  options: { requireVerified?: boolean; refetch?: VerifiedSourceOptions["refetch"] },
): Promise<{ source: VerifiedSource; cacheOrigin: string } | undefined> {
  const { client, ref } = registry;
  const spec: TableLayer = {
    kind: "registry",
    digest: layer.digest,
    sizeBytes: layer.sizeBytes,
    layerIndex: layer.index,
  };
  // Held for the process's life: what a killed server left the next one removes.
  const workDir = makeOwnedWorkDir(
    Deno.env.get("TMPDIR") ?? "/tmp",
    "erofs-oci-serve-table-",
    debug,
  );
  const stateDir = workDir.path;
  try {
    await attachChunkTables(client, ref.repository, manifestDigest, [spec], {
      requireVerified: options.requireVerified,
      stateDir,
    });
    if (!spec.chunkTable) return undefined;
    return await verifiedBlob(
      blob,
      spec.chunkTable,
      { digest: layer.digest, sizeBytes: layer.sizeBytes },
      registryOrigin(ref.registry, client.plainHttp),
      { refetch: options.refetch },
    );
  } finally {
    workDir.remove();
  }
}
