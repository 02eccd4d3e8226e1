/**
 * `mount`'s option specs, apart from mount.ts so that manifest_ahead.ts can read the command
 * line before mount's own modules have loaded.
 */
import { REGISTRY_OPTIONS } from "./registry_option_specs.ts";

export const MOUNT_OPTIONS = {
  ...REGISTRY_OPTIONS,
  layer: { type: "string" },
  blob: { type: "string" },
  "any-media-type": { type: "boolean" },
  backend: { type: "string", default: "auto" },
  "cache-size": { type: "string" },
  "disk-cache-size": { type: "string" },
  "disk-cache-keep-free": { type: "string" },
  "no-disk-cache": { type: "boolean" },
  "metrics-listen": { type: "string" },
  "fetch-all": { type: "boolean" },
  "no-prefetch": { type: "boolean" },
  "require-verified": { type: "boolean" },
  upper: { type: "string" },
  work: { type: "string" },
  foreground: { type: "boolean" },
  suid: { type: "boolean" },
  dev: { type: "boolean" },
  options: { type: "string", short: "o", multiple: true },
  index: { type: "string" },
  "index-missing": { type: "boolean" },
  tarindex: { type: "string" },
  zinfo: { type: "string" },
} as const;
