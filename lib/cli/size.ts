import { UsageError } from "../errors.ts";

const UNITS: Record<string, number> = { "": 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/**
 * Parses a size option: `4096`, `512K`, `256M`, `1.5G`, `2GiB`, `64MB`. Suffixes are binary
 * (K = 1024) whatever their spelling; the result is a whole number of bytes.
 * Throws UsageError naming `option` on anything else.
 */
export function parseSize(text: string, option = "size"): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (match) {
    const bytes = Math.floor(Number(match[1]) * UNITS[match[2].toUpperCase()]);
    if (Number.isSafeInteger(bytes)) return bytes;
    throw new UsageError(`${option}: size '${text}' is too large`, "at most 8191T");
  }
  throw new UsageError(
    `${option}: invalid size '${text}'`,
    "use a byte count with an optional K, M, G or T suffix, e.g. 256M",
  );
}

const DURATION_UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * Parses a duration option: `90`, `90s`, `500ms`, `5m`, `1h`, `7d` (a bare number is seconds,
 * unless `unitRequired`), in whole milliseconds up to `maxMs`. Throws UsageError naming
 * `option` on anything else, `M` included (minutes or months?).
 */
export function parseDurationMs(
  text: string,
  option: string,
  { maxMs, hint, unitRequired = false }: { maxMs: number; hint: string; unitRequired?: boolean },
): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/i.exec(text);
  const unit = match?.[2];
  const usable = match && unit !== "M" && unit !== "Ms" && !(unitRequired && unit === undefined);
  const ms = usable ? Number(match[1]) * DURATION_UNITS_MS[(unit ?? "s").toLowerCase()] : NaN;
  if (!Number.isFinite(ms)) throw new UsageError(`${option}: invalid duration '${text}'`, hint);
  if (ms > maxMs) {
    throw new UsageError(
      `${option}: '${text}' is longer than the most allowed (${formatDurationMs(maxMs)})`,
      hint,
    );
  }
  return Math.round(ms);
}

/** `ms` in the largest whole unit it holds at least once, rounded down: "24d", "90m", "500ms". */
function formatDurationMs(ms: number): string {
  for (const unit of ["d", "h", "m", "s"]) {
    const size = DURATION_UNITS_MS[unit];
    if (ms >= size) return `${Math.floor(ms / size)}${unit}`;
  }
  return `${ms}ms`;
}
