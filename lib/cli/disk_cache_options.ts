/**
 * The disk cache options `mount` and `serve` share, checked before any registry is asked:
 * `--no-disk-cache`, `--disk-cache-size`, `--disk-cache-keep-free`, `--fetch-all`.
 */
import { UsageError } from "../errors.ts";
import { parseSize } from "./size.ts";

export interface DiskCacheOptionValues {
  "disk-cache-size"?: string;
  "disk-cache-keep-free"?: string;
  "no-disk-cache"?: boolean;
  "fetch-all"?: boolean;
}

/** The sizes given (maxBytes 0: no disk cache); a UsageError for options that contradict. */
export function checkDiskCacheOptions(
  command: string,
  values: DiskCacheOptionValues,
): { maxBytes?: number; keepFreeBytes?: number } {
  if (values["fetch-all"] && values["no-disk-cache"]) {
    throw new UsageError(
      `${command}: --fetch-all fetches into the disk cache: drop --no-disk-cache`,
    );
  }
  const size = (option: "disk-cache-size" | "disk-cache-keep-free") => {
    const given = values[option];
    if (given === undefined) return undefined;
    // Taken without a word, and nothing done with it.
    if (values["no-disk-cache"]) {
      throw new UsageError(
        `${command}: --${option} sizes the disk cache --no-disk-cache turns off`,
      );
    }
    return parseSize(given, `--${option}`);
  };
  const sizes = { maxBytes: size("disk-cache-size"), keepFreeBytes: size("disk-cache-keep-free") };
  if (values["fetch-all"] && sizes.maxBytes === 0) {
    throw new UsageError(
      `${command}: --fetch-all fetches into the disk cache: drop --disk-cache-size 0`,
    );
  }
  if (values["no-disk-cache"]) sizes.maxBytes = 0;
  return sizes;
}
