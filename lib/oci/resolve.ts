import { OciError } from "../errors.ts";
import { blobStatusError } from "./blob_range.ts";
import type { RegistryClient } from "./client.ts";
import { pullScope } from "./scope.ts";
import { digestOfAsync } from "./digest.ts";
import type { LayerDescriptor } from "./layers.ts";
import {
  type Descriptor,
  type ManifestDocument,
  MAX_MANIFEST_BYTES,
  parseConfigPlatform,
  parseManifestDocument,
} from "./manifest.ts";
import {
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  MANIFEST_ACCEPT,
  OCI_INDEX,
  OCI_MANIFEST,
} from "./media_types.ts";
import {
  bestPlatformMatch,
  formatPlatform,
  hostPlatform,
  parsePlatform,
  type Platform,
  platformMatches,
} from "./platform.ts";
import {
  formatReference,
  type ImageReference,
  manifestReference,
  validateDigest,
} from "./reference.ts";

/** One platform's manifest of an image, with its layers bottom first. */
export interface ResolvedImage {
  /** Digest of the platform manifest (pin this, not the tag). */
  manifestDigest: string;
  /** Digest of the index the manifest was chosen from, when the reference named an index. */
  indexDigest?: string;
  /** The manifest's platform `os/arch[/variant]` (`unknown` if the config does not say). */
  platform: string;
  /** Every platform the index offers (just `platform` for a single manifest). */
  platforms: string[];
  /** Media type of the chosen manifest. */
  mediaType: string;
  /** Config blob descriptor of the chosen manifest. */
  config: { digest: string; sizeBytes: number; mediaType: string };
  layers: LayerDescriptor[];
  /** The chosen manifest's own annotations (convert carries them over). */
  annotations?: Record<string, string>;
}

/** A fetched, digest-checked and parsed manifest document. */
export interface FetchedManifest {
  digest: string;
  bytes: Uint8Array;
  document: ManifestDocument;
}

/** GET a manifest by tag or digest; a digest reference is verified against the body. */
export async function fetchManifest(
  client: RegistryClient,
  repository: string,
  reference: string,
  signal?: AbortSignal,
): Promise<FetchedManifest> {
  const where = `${client.registry}/${repository}${
    reference.includes(":") ? "@" : ":"
  }${reference}`;
  const { response, bytes } = await client.getDocument({
    method: "GET",
    path: `/v2/${repository}/manifests/${reference}`,
    scope: pullScope(repository),
    headers: { accept: MANIFEST_ACCEPT },
    signal,
    // A tag is a claim only hosts trusted to `resolve` may answer; a digest checks itself.
    route: reference.includes(":") ? "pull" : "resolve",
  }, MAX_MANIFEST_BYTES);
  if (bytes === undefined) {
    await response.body?.cancel();
    const error = response.status === 404
      ? new OciError(`manifest not found: ${where} (404)`, "check the repository name and tag")
      : new OciError(`registry ${client.host} answered ${response.status} for manifest ${where}`);
    error.status = response.status;
    throw error;
  }
  const isDigest = reference.includes(":");
  const digest = await digestOfAsync(bytes, isDigest ? reference : "sha256:");
  if (isDigest && digest !== reference) {
    throw new OciError(`manifest ${where} does not match its digest (got ${digest})`);
  }
  const document = parseManifestDocument(
    bytes,
    response.headers.get("content-type") ?? undefined,
    `manifest ${where}`,
  );
  return { digest, bytes, document };
}

/**
 * Config blobs kept by earlier resolutions (a mount's state dir): read back instead of fetched
 * (each read checked against its digest), and kept when fetched.
 */
export interface KeptConfigs {
  read(digest: string): Promise<Uint8Array | undefined>;
  keep(digest: string, bytes: Uint8Array): Promise<unknown>;
}

async function fetchConfigPlatform(
  client: RegistryClient,
  repository: string,
  config: Descriptor,
  signal?: AbortSignal,
  kept?: KeptConfigs,
): Promise<Platform | undefined> {
  if (config.size > MAX_MANIFEST_BYTES) return undefined;
  const keptBytes = await kept?.read(config.digest);
  if (keptBytes) return parseConfigPlatform(keptBytes);
  const { response, bytes } = await client.getDocument({
    method: "GET",
    path: `/v2/${repository}/blobs/${config.digest}`,
    scope: pullScope(repository),
    signal,
    route: "pull",
  }, MAX_MANIFEST_BYTES);
  if (bytes === undefined) {
    return await blobStatusError(client, response, repository, config.digest);
  }
  if (await digestOfAsync(bytes, config.digest) !== config.digest) {
    throw new OciError(`config blob ${config.digest} does not match its digest`);
  }
  // Best effort, and not waited for: the next resolution fetches it again.
  kept?.keep(config.digest, bytes).catch(() => {});
  return parseConfigPlatform(bytes);
}

function isAttestation(d: Descriptor): boolean {
  return d.platform?.os === "unknown" ||
    d.annotations?.["vnd.docker.reference.type"] === "attestation-manifest";
}

function isManifestEntry(d: Descriptor): boolean {
  return d.mediaType === OCI_MANIFEST || d.mediaType === DOCKER_MANIFEST;
}

/** An index's entries that are images to choose from: manifests, attestations left out. */
export function imageManifestEntries(manifests: readonly Descriptor[]): Descriptor[] {
  return manifests.filter((d) => isManifestEntry(d) && !isAttestation(d));
}

/** Where resolveDocument gets the documents an index or manifest points to. */
export interface DocumentFetcher {
  /** A manifest or index by digest, verified. */
  manifest(digest: string): Promise<FetchedManifest>;
  /** The platform in a manifest's config blob, if it says. */
  configPlatform(config: Descriptor): Promise<Platform | undefined>;
}

/**
 * Called with the platform manifest as soon as it is fetched (digest-checked, parsed), before
 * its config blob is: `mount` starts the round trips that need only the manifest (the layers'
 * chunk tables, then their metadata) side by side with the rest of the resolution. Not called
 * when the resolution fails before; its result still may (the caller cancels what it started).
 */
export type ManifestListener = (manifest: FetchedManifest) => void;

/**
 * Resolves `ref` to one platform's manifest: an index (or Docker list) is narrowed to `platform`
 * (default: the host's; a missing one is an error listing those available), a single manifest is
 * taken as is (EROFS layers are architecture-neutral) unless an explicit `platform` contradicts
 * its config. `top`: fetchManifest of `ref` through `client`, started earlier (mount).
 */
export async function resolveImage(
  client: RegistryClient,
  ref: ImageReference,
  platform?: string,
  signal?: AbortSignal,
  onManifest?: ManifestListener,
  top?: Promise<FetchedManifest>,
  keptConfigs?: KeptConfigs,
): Promise<ResolvedImage> {
  if (ref.registry !== client.registry) {
    throw new OciError(`reference ${formatReference(ref)} is not on registry ${client.registry}`);
  }
  if (ref.digest) validateDigest(ref.digest);
  const wanted = parsePlatform(platform ?? hostPlatform());
  const fetched =
    await (top ?? fetchManifest(client, ref.repository, manifestReference(ref), signal));
  return await resolveDocument(
    fetched,
    {
      manifest: (digest) => fetchManifest(client, ref.repository, digest, signal),
      configPlatform: (config) =>
        fetchConfigPlatform(client, ref.repository, config, signal, keptConfigs),
    },
    wanted,
    platform !== undefined,
    formatReference(ref),
    onManifest,
  );
}

/**
 * The platform selection behind resolveImage, for any source of documents (a registry, an OCI
 * layout on disk): `top` is what the reference named; `explicit` says the platform was asked for.
 */
export async function resolveDocument(
  top: FetchedManifest,
  fetcher: DocumentFetcher,
  wanted: Platform,
  explicit: boolean,
  name: string,
  onManifest?: ManifestListener,
): Promise<ResolvedImage> {
  let manifest = top;
  let indexDigest: string | undefined;
  let chosenPlatform: string;
  let platforms: string[];
  if (top.document.kind === "index") {
    indexDigest = top.digest;
    const candidates = imageManifestEntries(top.document.manifests);
    if (candidates.length === 0) throw noImageInIndex(top.document, name);
    platforms = [
      ...new Set(candidates.map((d) => (d.platform ? formatPlatform(d.platform) : "unknown"))),
    ];
    // One entry without a platform (an OCI layout skopeo wrote): its config says which. It was
    // "unknown", and --platform for it refused with only "unknown" to choose from.
    const sole = candidates.length === 1 && !candidates[0].platform ? candidates[0] : undefined;
    let match = bestPlatformMatch(wanted, candidates) ?? sole;
    let matchPlatform: Platform | undefined;
    if (!match) {
      // Several without one (the field is optional): their configs say, as containerd reads them.
      const { best, seen } = await platformFromConfigs(candidates, fetcher, wanted);
      if (best) [match, matchPlatform, manifest] = [best.entry, best.platform, best.manifest];
      // What they said, for the refusal: "available: unknown" asked for a --platform none met.
      const named = candidates.flatMap((d) => d.platform ? [formatPlatform(d.platform)] : []);
      if (seen.length) platforms = [...new Set([...named, ...seen.map(formatPlatform)])];
    }
    const noMatch = () =>
      new OciError(
        `no manifest for platform ${formatPlatform(wanted)} in ${name}; available: ${
          listPlatforms(platforms)
        }`,
        "choose one with --platform os/arch[/variant]",
      );
    if (!match) throw noMatch();
    if (!matchPlatform) manifest = await fetcher.manifest(match.digest);
    if (manifest.document.kind !== "manifest") {
      throw new OciError(`index entry ${match.digest} of ${name} is not a manifest`);
    }
    let platform = match.platform ?? matchPlatform;
    if (matchPlatform) onManifest?.(manifest);
    if (match === sole) {
      // Asked for a platform: the config decides before anyone is told of the manifest. Else
      // the listener goes first, as for any manifest (before its config blob).
      if (!explicit) onManifest?.(manifest);
      platform = await fetcher.configPlatform(manifest.document.config);
      if (platform) platforms = [formatPlatform(platform)];
      if (explicit && !(platform && platformMatches(wanted, platform))) throw noMatch();
      if (explicit) onManifest?.(manifest);
    } else if (!matchPlatform) {
      onManifest?.(manifest);
    }
    chosenPlatform = platform ? formatPlatform(platform) : "unknown";
  } else {
    onManifest?.(top);
    const configPlatform = await fetcher.configPlatform(top.document.config);
    chosenPlatform = configPlatform ? formatPlatform(configPlatform) : "unknown";
    platforms = [chosenPlatform];
    if (explicit && configPlatform && !platformMatches(wanted, configPlatform)) {
      throw new OciError(
        `no manifest for platform ${formatPlatform(wanted)} in ${name}; available: ${
          listPlatforms([chosenPlatform])
        }`,
        "choose one with --platform os/arch[/variant]",
      );
    }
  }
  const document = manifest.document as Extract<ManifestDocument, { kind: "manifest" }>;
  const resolved: ResolvedImage = {
    manifestDigest: manifest.digest,
    platform: chosenPlatform,
    platforms,
    mediaType: document.mediaType,
    config: {
      digest: document.config.digest,
      sizeBytes: document.config.size,
      mediaType: document.config.mediaType,
    },
    layers: layerDescriptorsOf(document),
  };
  if (indexDigest) resolved.indexDigest = indexDigest;
  if (document.annotations) resolved.annotations = document.annotations;
  return resolved;
}

/**
 * An index without one image manifest to choose from: what it holds instead (no --platform can
 * help; the error said "available: none" and hinted at one).
 */
function noImageInIndex(index: Extract<ManifestDocument, { kind: "index" }>, name: string) {
  const nested = index.manifests.filter((d) =>
    d.mediaType === OCI_INDEX || d.mediaType === DOCKER_MANIFEST_LIST
  );
  // No image among them: every manifest entry is an attestation.
  const attestations = index.manifests.filter(isManifestEntry).length;
  const other = index.manifests.length - nested.length - attestations;
  const held = [
    nested.length ? `${nested.length} nested index${nested.length === 1 ? "" : "es"}` : "",
    attestations ? `${attestations} attestation${attestations === 1 ? "" : "s"}` : "",
    other ? `${other} entr${other === 1 ? "y" : "ies"} of other media types` : "",
  ].filter(Boolean);
  return new OciError(
    `${name} is an index with no image manifest${
      held.length ? ` (${held.join(", ")})` : " (empty)"
    }`,
    nested.length
      ? `name a nested index by its digest: ${name.replace(/@.*$/, "").replace(/:[^/:]*$/, "")}@${
        nested[0].digest
      }`
      : undefined,
  );
}

/** How many platforms a "no manifest for platform" error lists before "… and N more". */
const MAX_LISTED_PLATFORMS = 20;
/** How much of one platform's name it shows (an index's platform fields are the registry's). */
const MAX_PLATFORM_CHARS = 64;

/**
 * The platforms an error offers, bounded: an index with 15,000 entries made the one-line error
 * 229 KB long.
 */
export function listPlatforms(platforms: readonly string[]): string {
  if (platforms.length === 0) return "none";
  const shown = platforms.slice(0, MAX_LISTED_PLATFORMS).map((p) =>
    p.length > MAX_PLATFORM_CHARS ? `${p.slice(0, MAX_PLATFORM_CHARS)}…` : p
  );
  const more = platforms.length - shown.length;
  return shown.join(", ") + (more > 0 ? ` … and ${more} more` : "");
}

/** A platform manifest's layers, bottom first, as the mount and pull code takes them. */
export function layerDescriptorsOf(
  document: Extract<ManifestDocument, { kind: "manifest" }>,
): LayerDescriptor[] {
  return document.layers.map((l, index) => ({
    index,
    digest: l.digest,
    sizeBytes: l.size,
    mediaType: l.mediaType,
  }));
}

/** How many index entries without a platform have their configs read to find one. */
const MAX_CONFIGS_READ = 16;

/**
 * Of the index entries without a platform, the first (of MAX_CONFIGS_READ) whose config says a
 * platform that serves `wanted` best, with its manifest; undefined when none does.
 */
async function platformFromConfigs(
  candidates: readonly Descriptor[],
  fetcher: DocumentFetcher,
  wanted: Platform,
): Promise<{
  best?: { entry: Descriptor; platform: Platform; manifest: FetchedManifest };
  seen: Platform[];
}> {
  const read = [];
  for (const entry of candidates.filter((d) => !d.platform).slice(0, MAX_CONFIGS_READ)) {
    const manifest = await fetcher.manifest(entry.digest);
    if (manifest.document.kind !== "manifest") continue;
    const platform = await fetcher.configPlatform(manifest.document.config);
    if (platform) read.push({ entry, platform, manifest });
  }
  return { best: bestPlatformMatch(wanted, read), seen: read.map((r) => r.platform) };
}
