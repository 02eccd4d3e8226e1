import { OciError } from "../errors.ts";
import { isErofsMediaType } from "./media_types.ts";
import { validateDigest } from "./reference.ts";

/** One layer of a resolved image manifest. */
export interface LayerDescriptor {
  /** 0-based position in the manifest, bottom layer first. */
  index: number;
  digest: string;
  sizeBytes: number;
  mediaType: string;
}

/** Which layers to use: one by index, one by digest, or (neither) every EROFS layer. */
export interface LayerSelection {
  layer?: number;
  blob?: string;
  /** Accept layers whose media type is not EROFS (erofs-utils does; then the user vouches). */
  anyMediaType?: boolean;
  /**
   * The hint when no layer chosen is EROFS, given their media types; undefined: take one with
   * --any-media-type (a dead end where the bytes cannot be EROFS: `serve` of a tar layer).
   */
  notErofsHint?: (mediaTypes: string[]) => string | undefined;
}

/**
 * Picks layers of an image: `layer` (0-based, bottom first) or `blob` (digest) selects exactly
 * one; no selection gives every EROFS layer bottom first. Unless `anyMediaType`, only EROFS
 * media types are accepted and the error names the media types found.
 *
 * @example
 * selectLayers(image, { layer: 0 })          // [image.layers[0]] if it is EROFS
 * selectLayers(image, {})                    // all EROFS layers
 */
export function selectLayers(
  image: { layers: LayerDescriptor[] },
  selection: LayerSelection,
): LayerDescriptor[] {
  const { layers } = image;
  if (selection.layer !== undefined && selection.blob !== undefined) {
    throw new OciError("give either a layer index or a blob digest, not both", undefined, {
      exitCode: 2,
    });
  }
  let chosen: LayerDescriptor[];
  if (selection.layer !== undefined) {
    const n = selection.layer;
    if (!Number.isSafeInteger(n) || n < 0 || n >= layers.length) {
      throw new OciError(
        `layer ${n} out of range: the image has ${layers.length} layer${
          layers.length === 1 ? "" : "s"
        }${layers.length > 0 ? ` (0..${layers.length - 1})` : ""}`,
        "list them with `erofs-oci inspect IMAGE`",
        { exitCode: 2 }, // the command line's mistake, as build's --layer says it
      );
    }
    chosen = [layers[n]];
  } else if (selection.blob !== undefined) {
    const digest = validateDigest(selection.blob, "blob digest");
    const found = layers.find((l) => l.digest === digest);
    if (!found) {
      throw new OciError(
        `blob ${digest} is not a layer of this image`,
        "list the layers with `erofs-oci inspect IMAGE`",
        { exitCode: 2 }, // the command line's mistake, as --layer out of range is
      );
    }
    chosen = [found];
  } else {
    chosen = selection.anyMediaType ? layers : layers.filter((l) => isErofsMediaType(l.mediaType));
    if (chosen.length === 0) throw notErofs(layers, selection.notErofsHint);
    return chosen;
  }
  if (!selection.anyMediaType && !isErofsMediaType(chosen[0].mediaType)) {
    throw new OciError(
      `layer ${chosen[0].index} has media type ${chosen[0].mediaType}, not application/vnd.erofs`,
      selection.notErofsHint?.([chosen[0].mediaType]) ?? "pass --any-media-type to take it anyway",
    );
  }
  return chosen;
}

function notErofs(
  layers: LayerDescriptor[],
  hint?: (mediaTypes: string[]) => string | undefined,
): OciError {
  if (layers.length === 0) return new OciError("the image has no layers");
  const types = [...new Set(layers.map((l) => l.mediaType))];
  return new OciError(
    `no EROFS layer in the image (media types found: ${types.join(", ")})`,
    hint?.(types) ??
      "select one with --layer N or --blob DIGEST and pass --any-media-type to take it anyway",
  );
}
