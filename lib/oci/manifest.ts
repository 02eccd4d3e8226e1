import { OciError } from "../errors.ts";
import {
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  DOCKER_SCHEMA1,
  OCI_INDEX,
  OCI_MANIFEST,
} from "./media_types.ts";
import type { Platform } from "./platform.ts";
import { DIGEST_PATTERN } from "./reference.ts";
import { notJsonBecause, parseJson } from "../json.ts";

/** A content descriptor (OCI image spec, descriptor.md), as much of it as we use. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
}

/** A parsed image index (or Docker manifest list). */
export interface ImageIndex {
  kind: "index";
  mediaType: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

/** A parsed image manifest (OCI or Docker schema 2). */
export interface ImageManifest {
  kind: "manifest";
  mediaType: string;
  config: Descriptor;
  /** Bottom layer first. */
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

/** What a manifest GET can return. */
export type ManifestDocument = ImageIndex | ImageManifest;

/** Upper bound for manifest and config bodies; real ones are a few KiB (the spec suggests 4 MiB). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

class ManifestFormatError extends Error {}

function fail(why: string): never {
  throw new ManifestFormatError(why);
}

function parseJsonObject(body: Uint8Array | string): Json {
  if (typeof body !== "string" && body.byteLength > MAX_MANIFEST_BYTES) {
    fail(`larger than ${MAX_MANIFEST_BYTES} bytes`);
  }
  let text: string;
  try {
    text = typeof body === "string" ? body : new TextDecoder("utf-8", { fatal: true }).decode(body);
  } catch {
    fail("not UTF-8");
  }
  let value: unknown;
  try {
    value = parseJson(text);
  } catch (error) {
    fail(notJsonBecause(error));
  }
  if (!isObject(value)) fail("not a JSON object");
  return value;
}

function parsePlatformObject(value: unknown, where: string): Platform | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value)) fail(`${where}.platform is not an object`);
  const { os, architecture, variant } = value;
  if (typeof os !== "string" || typeof architecture !== "string") {
    fail(`${where}.platform needs string os and architecture`);
  }
  const platform: Platform = { os, architecture };
  if (typeof variant === "string" && variant !== "") platform.variant = variant;
  const version = value["os.version"], features = value["os.features"];
  if (typeof version === "string" && version !== "") platform["os.version"] = version;
  if (Array.isArray(features) && features.every((f) => typeof f === "string")) {
    platform["os.features"] = features;
  }
  return platform;
}

/** A document's or descriptor's string annotations (others left out); undefined without. */
function stringAnnotations(value: unknown): Record<string, string> | undefined {
  if (!isObject(value)) return undefined;
  const strings: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) if (typeof v === "string") strings[k] = v;
  return strings;
}

function parseDescriptor(value: unknown, where: string): Descriptor {
  if (!isObject(value)) fail(`${where} is not an object`);
  const { mediaType, digest, size, annotations } = value;
  if (typeof mediaType !== "string" || mediaType === "") fail(`${where}.mediaType is missing`);
  if (typeof digest !== "string" || !DIGEST_PATTERN.test(digest)) {
    fail(`${where}.digest is not a sha256/sha512 digest`);
  }
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    fail(`${where}.size is not a non-negative integer`);
  }
  const descriptor: Descriptor = { mediaType, digest, size };
  const platform = parsePlatformObject(value.platform, where);
  if (platform) descriptor.platform = platform;
  const strings = stringAnnotations(annotations);
  if (strings) descriptor.annotations = strings;
  return descriptor;
}

function parseDescriptorList(value: unknown, where: string): Descriptor[] {
  if (!Array.isArray(value)) fail(`${where} is not an array`);
  return value.map((item, i) => parseDescriptor(item, `${where}[${i}]`));
}

function kindOf(doc: Json, contentType: string | undefined): "index" | "manifest" {
  const declared = typeof doc.mediaType === "string" ? doc.mediaType : undefined;
  const header = contentType?.split(";")[0].trim().toLowerCase();
  const mediaType = declared ?? header;
  if (doc.schemaVersion === 1 || (mediaType && DOCKER_SCHEMA1.includes(mediaType))) {
    fail("Docker schema 1 manifests are not supported");
  }
  if (doc.schemaVersion !== 2) fail("schemaVersion is not 2");
  if (mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST) return "index";
  if (mediaType === OCI_MANIFEST || mediaType === DOCKER_MANIFEST) return "manifest";
  // OCI allows mediaType to be absent; the Content-Type header may be generic JSON then.
  if (declared === undefined) {
    if (Array.isArray(doc.manifests) && doc.layers === undefined) return "index";
    if (Array.isArray(doc.layers) && doc.manifests === undefined) return "manifest";
  }
  fail(`unsupported media type '${String(mediaType ?? "none").slice(0, 100)}'`);
}

/**
 * Parses a manifest GET body: OCI index / manifest or Docker schema 2 list / manifest. The kind
 * comes from the body's `mediaType`, else the Content-Type header, else the shape. Throws a
 * one-line OciError naming the offending field for anything malformed.
 *
 * @example
 * const doc = parseManifestDocument(bytes, response.headers.get("content-type") ?? undefined);
 * if (doc.kind === "manifest") console.log(doc.layers.length);
 */
export function parseManifestDocument(
  body: Uint8Array | string,
  contentType?: string,
  what = "manifest",
): ManifestDocument {
  try {
    const doc = parseJsonObject(body);
    const kind = kindOf(doc, contentType);
    const mediaType = typeof doc.mediaType === "string"
      ? doc.mediaType
      : kind === "index"
      ? OCI_INDEX
      : OCI_MANIFEST;
    const annotations = stringAnnotations(doc.annotations);
    if (kind === "index") {
      return {
        kind,
        mediaType,
        manifests: parseDescriptorList(doc.manifests, "manifests"),
        ...(annotations ? { annotations } : {}),
      };
    }
    return {
      kind,
      mediaType,
      config: parseDescriptor(doc.config, "config"),
      layers: parseDescriptorList(doc.layers, "layers"),
      ...(annotations ? { annotations } : {}),
    };
  } catch (error) {
    if (error instanceof ManifestFormatError) {
      throw new OciError(`invalid ${what}: ${error.message}`);
    }
    throw error;
  }
}

/** The platform recorded in an image config blob (`os`, `architecture`, `variant`), if any. */
export function parseConfigPlatform(body: Uint8Array | string): Platform | undefined {
  try {
    const doc = parseJsonObject(body);
    const { os, architecture, variant } = doc;
    if (typeof os !== "string" || typeof architecture !== "string" || !os || !architecture) {
      return undefined;
    }
    const platform: Platform = { os, architecture };
    if (typeof variant === "string" && variant !== "") platform.variant = variant;
    return platform;
  } catch (error) {
    if (error instanceof ManifestFormatError) return undefined;
    throw error;
  }
}
