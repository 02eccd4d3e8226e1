/**
 * The config of a converted image: the source config with `rootfs.diff_ids` naming the EROFS
 * layers (uncompressed, so each diff_id is the layer's digest) and a history that still has one
 * non-empty entry per layer (image-spec config.md: history entries without `empty_layer` map to
 * the layers in order).
 */
import { OciError } from "../errors.ts";
import { warn } from "../log.ts";
import { parseJson } from "../json.ts";

type Json = Record<string, unknown>;

export interface ConfigEdit {
  diffIds: string[];
  /** One EROFS layer made of all source layers. */
  flattened: boolean;
}

export function convertedConfig(source: Uint8Array, edit: ConfigEdit): Uint8Array<ArrayBuffer> {
  let config: Json;
  try {
    const parsed = parseJson(new TextDecoder("utf-8", { fatal: true }).decode(source));
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error();
    config = parsed;
  } catch {
    throw new OciError("the source image config is not a JSON object");
  }
  const history = Array.isArray(config.history)
    ? config.history.filter((h): h is Json => typeof h === "object" && h !== null)
    : undefined;
  if (edit.flattened) {
    if (history) {
      config.history = [
        ...history.map((h) => ({ ...h, empty_layer: true })),
        {
          ...(typeof config.created === "string" ? { created: config.created } : {}),
          created_by: "erofs-oci convert --flatten",
          comment: `${history.filter((h) => h.empty_layer !== true).length} layers in one`,
        },
      ];
    }
  } else if (history) {
    const layered = history.filter((h) => h.empty_layer !== true).length;
    if (layered !== edit.diffIds.length) {
      warn(
        `source history lists ${layered} layers for ${edit.diffIds.length}: history left out`,
      );
      delete config.history;
    }
  }
  config.rootfs = { type: "layers", diff_ids: edit.diffIds };
  return new TextEncoder().encode(JSON.stringify(config));
}

/** The config's `created` time in whole seconds, if it has a usable one. */
export function configCreatedSec(source: Uint8Array): number | undefined {
  try {
    const created = parseJson(new TextDecoder().decode(source)).created;
    if (typeof created !== "string") return undefined;
    const ms = Date.parse(created);
    return Number.isFinite(ms) ? Math.floor(ms / 1000) : undefined;
  } catch {
    return undefined;
  }
}
