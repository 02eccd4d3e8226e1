/**
 * A recorded access trace: which byte ranges of each layer an application read, in the order
 * it first read them. Stored as one JSON blob (TRACE_MEDIA_TYPE):
 *
 *   { "version": 1, "layers": [{ "digest": "sha256:…", "size": N }, …],
 *     "ranges": [[layerIndex, offset, length], …] }
 *
 * Ranges of one layer are merged (no two overlap or touch) and listed in first-access order.
 * A trace comes from a registry: everything in it is checked and bounded before use.
 */
import { FormatError } from "../errors.ts";
import { DIGEST_PATTERN } from "../oci/reference.ts";
import { notJsonBecause, parseJson } from "../json.ts";

export const TRACE_MEDIA_TYPE = "application/vnd.erofs-oci.trace.v1+json";
export const TRACE_ARTIFACT_TYPE = "application/vnd.erofs-oci.trace.v1";

/** A trace blob past this is refused unread (100,000 ranges encode to about 3 MB). */
export const MAX_TRACE_BYTES = 8 << 20;
/** More ranges than this are refused (the recorder stops adding at this count). */
export const MAX_TRACE_RANGES = 100_000;
const MAX_TRACE_LAYERS = 256;

export interface TraceLayer {
  digest: string;
  size: number;
}

/** One merged range: layer index into Trace.layers, byte offset, byte length. */
export type TraceRange = [layer: number, offset: number, length: number];

export interface Trace {
  version: 1;
  layers: TraceLayer[];
  ranges: TraceRange[];
}

/** A read as the recorder saw it: `seq` is the position of its first access. */
export interface Access {
  offset: number;
  length: number;
  seq: number;
}

/**
 * Merges overlapping or touching accesses of one layer; a merged range keeps the earliest
 * `seq` of its parts, so the application's first touch decides its place in the order.
 */
export function mergeAccesses(accesses: Access[]): Access[] {
  const sorted = accesses.filter((a) => a.length > 0).sort((a, b) => a.offset - b.offset);
  const merged: Access[] = [];
  for (const access of sorted) {
    const last = merged.at(-1);
    if (last && access.offset <= last.offset + last.length) {
      const end = Math.max(last.offset + last.length, access.offset + access.length);
      last.length = end - last.offset;
      last.seq = Math.min(last.seq, access.seq);
    } else {
      merged.push({ ...access });
    }
  }
  return merged;
}

/** Builds a trace from each layer's accesses (merged here), ordered by first access. */
export function buildTrace(layers: { layer: TraceLayer; accesses: Access[] }[]): Trace {
  const all: (Access & { layer: number })[] = [];
  layers.forEach(({ accesses }, layer) => {
    for (const merged of mergeAccesses(accesses)) all.push({ ...merged, layer });
  });
  all.sort((a, b) => a.seq - b.seq || a.layer - b.layer || a.offset - b.offset);
  return {
    version: 1,
    layers: layers.map(({ layer }) => ({ digest: layer.digest, size: layer.size })),
    ranges: all.slice(0, MAX_TRACE_RANGES).map((a) => [a.layer, a.offset, a.length]),
  };
}

export function encodeTrace(trace: Trace): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(JSON.stringify(trace) + "\n");
}

function refuse(message: string): never {
  throw new FormatError(
    `trace: ${message}`,
    "the trace is damaged or hostile; record a new one with `erofs-oci trace IMAGE --push -- CMD`, " +
      "or mount with --no-prefetch",
  );
}

const isCount = (value: unknown): value is number =>
  typeof value === "number" && Number.isSafeInteger(value) && value >= 0;

/**
 * Parses and checks a trace: bounded size and counts, well-formed digests, every range inside
 * its layer, and the ranges of a layer not overlapping (so a trace cannot make a prefetch read
 * more than the layers hold).
 */
export function parseTrace(bytes: Uint8Array): Trace {
  if (bytes.byteLength > MAX_TRACE_BYTES) {
    refuse(`${bytes.byteLength} bytes, more than the ${MAX_TRACE_BYTES} allowed`);
  }
  let doc: Record<string, unknown>;
  try {
    doc = parseJson(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (error) {
    // V8's message quotes the input around the fault: hostile bytes, newlines included.
    refuse(notJsonBecause(error));
  }
  if (!doc || typeof doc !== "object" || doc.version !== 1) refuse("not a version 1 trace");
  const { layers, ranges } = doc;
  if (!Array.isArray(layers) || layers.length === 0 || layers.length > MAX_TRACE_LAYERS) {
    refuse(`wants 1 to ${MAX_TRACE_LAYERS} layers`);
  }
  const checkedLayers: TraceLayer[] = layers.map((entry, index) => {
    const layer = entry as Record<string, unknown> | null;
    if (typeof layer?.digest !== "string" || !DIGEST_PATTERN.test(layer.digest)) {
      refuse(`layer ${index} has no valid digest`);
    }
    if (!isCount(layer.size)) refuse(`layer ${index} has no valid size`);
    return { digest: layer.digest, size: layer.size };
  });
  if (!Array.isArray(ranges)) refuse("has no range list");
  if (ranges.length > MAX_TRACE_RANGES) {
    refuse(`${ranges.length} ranges, more than the ${MAX_TRACE_RANGES} allowed`);
  }
  const checked: TraceRange[] = ranges.map((entry, index) => {
    if (!Array.isArray(entry) || entry.length !== 3 || !entry.every(isCount)) {
      refuse(`range ${index} is not [layer, offset, length]`);
    }
    const [layer, offset, length] = entry as number[];
    if (layer >= checkedLayers.length) refuse(`range ${index} names layer ${layer}`);
    if (length === 0 || offset + length > checkedLayers[layer].size) {
      refuse(
        `range ${index} (${offset}+${length}) lies outside layer ${layer} ` +
          `(${checkedLayers[layer].size} bytes)`,
      );
    }
    return [layer, offset, length];
  });
  const byLayer = checked.slice().sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (let i = 1; i < byLayer.length; i++) {
    const [layer, offset] = byLayer[i];
    const [prevLayer, prevOffset, prevLength] = byLayer[i - 1];
    if (layer === prevLayer && offset < prevOffset + prevLength) {
      refuse(`ranges overlap in layer ${layer} at offset ${offset}`);
    }
  }
  return { version: 1, layers: checkedLayers, ranges: checked };
}

/**
 * The trace's ranges for the mounted layers (by digest and size), in trace order; a trace
 * naming a layer the mount does not have is refused (recorded for another image) unless only
 * a subset of the image's layers is mounted.
 */
export function rangesForLayers(
  trace: Trace,
  layers: { digest?: string; sizeBytes: number }[],
  options: { subset?: boolean } = {},
): { layerIndex: number; offset: number; length: number }[] {
  // Each trace layer names a mounted layer of its own: the k-th time a digest is listed, the
  // k-th layer with it (an image may hold one layer twice). Mapped to one, a trace listing a
  // digest 256 times made its prefetch read that layer 256 times (overlap is checked per trace
  // layer only).
  const taken = new Set<number>();
  const position = trace.layers.map((traced) => {
    const index = layers.findIndex((l, i) => l.digest === traced.digest && !taken.has(i));
    if (index >= 0) taken.add(index);
    if (index < 0 && !options.subset && layers.some((l) => l.digest === traced.digest)) {
      refuse(`it lists layer ${traced.digest} more often than this image has it`);
    }
    // Mounting some layers only (--layer, --blob): the others' ranges are not for this mount.
    if (index < 0 && options.subset) return -1;
    if (index < 0) {
      refuse(`it names layer ${traced.digest}, which this image does not have`);
    }
    if (layers[index].sizeBytes !== traced.size) {
      refuse(
        `layer ${traced.digest} is ${layers[index].sizeBytes} bytes, the trace says ${traced.size}`,
      );
    }
    return index;
  });
  return trace.ranges.filter(([layer]) => position[layer] >= 0).map(([layer, offset, length]) => ({
    layerIndex: position[layer],
    offset,
    length,
  }));
}
