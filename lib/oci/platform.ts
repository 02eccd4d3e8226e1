import { OciError } from "../errors.ts";

/** An `os/arch[/variant]` platform as in the OCI image index `platform` object. */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  /** An index entry's OS version (Windows hosts choose by it); kept when an index is copied. */
  "os.version"?: string;
  "os.features"?: string[];
}

// Deno.build.arch values → GOARCH names used in image indexes (OCI image spec, config.md).
const ARCH_NAMES: Record<string, string> = {
  x86_64: "amd64",
  aarch64: "arm64",
  i386: "386",
  i686: "386",
  armv7: "arm",
  riscv64: "riscv64",
  s390x: "s390x",
  ppc64le: "ppc64le",
};

const PLATFORM_PART = /^[a-z0-9][a-z0-9._-]*$/;

/** The host platform, e.g. `linux/amd64`. */
export function hostPlatform(): string {
  const os = Deno.build.os === "darwin" ? "darwin" : Deno.build.os;
  return `${os}/${ARCH_NAMES[Deno.build.arch] ?? Deno.build.arch}`;
}

/** Parses `os/arch[/variant]`; throws OciError (exit 2) for anything else. */
export function parsePlatform(text: string): Platform {
  // As docker and containerd take them: LINUX/AMD64 is linux/amd64.
  const parts = text.toLowerCase().split("/");
  if (parts.length < 2 || parts.length > 3 || !parts.every((p) => PLATFORM_PART.test(p))) {
    throw new OciError(
      `invalid platform '${JSON.stringify(text).slice(1, -1)}'`,
      "expected os/arch[/variant], e.g. linux/amd64 or linux/arm/v7",
      { exitCode: 2 },
    );
  }
  const platform: Platform = { os: parts[0], architecture: normalizeArch(parts[1]) };
  if (parts[2] !== undefined) platform.variant = parts[2];
  return platform;
}

function normalizeArch(arch: string): string {
  if (arch === "x86_64" || arch === "x86-64") return "amd64";
  if (arch === "aarch64") return "arm64";
  return arch;
}

/** Formats a platform as `os/arch[/variant]`. */
export function formatPlatform(platform: Platform): string {
  return platform.variant
    ? `${platform.os}/${platform.architecture}/${platform.variant}`
    : `${platform.os}/${platform.architecture}`;
}

/** The variant an architecture means when none is named (docker's and containerd's rule). */
const DEFAULT_VARIANT: Record<string, string> = { arm: "v7", arm64: "v8", amd64: "v1" };

/** Architectures whose lower variants run where a higher one does (arm/v6 on v7, amd64/v1 on v3). */
const BACKWARD_VARIANTS = new Set(["arm", "amd64"]);

/** Sorts after any variant that the wanted platform names or runs. */
const OTHER_VARIANT = 1000;

/**
 * How well an index entry's platform serves the wanted one: 0 for the same variant, more for a
 * lower variant that runs there (arm/v6 for arm/v7: 1), OTHER_VARIANT for any variant when the
 * wanted platform named none (`linux/arm` is arm/v7 first, then whatever arm there is), and
 * undefined when it does not serve (another os or architecture, or a variant named and not met).
 */
export function platformDistance(wanted: Platform, candidate: Platform): number | undefined {
  if (wanted.os !== candidate.os) return undefined;
  const arch = wanted.architecture;
  if (arch !== normalizeArch(candidate.architecture)) return undefined;
  const want = wanted.variant ?? DEFAULT_VARIANT[arch];
  const have = candidate.variant ?? DEFAULT_VARIANT[arch];
  if (want === have) return 0;
  const level = (variant?: string) => Number(/^v(\d+)$/.exec(variant ?? "")?.[1] ?? NaN);
  if (BACKWARD_VARIANTS.has(arch) && level(have) < level(want)) return level(want) - level(have);
  return wanted.variant === undefined ? OTHER_VARIANT : undefined;
}

/** Whether an index entry's platform serves the wanted one (platformDistance). */
export function platformMatches(wanted: Platform, candidate: Platform): boolean {
  return platformDistance(wanted, candidate) !== undefined;
}

/** Of `entries`, the one whose platform serves `wanted` best (the first of equals), if any. */
export function bestPlatformMatch<T extends { platform?: Platform }>(
  wanted: Platform,
  entries: readonly T[],
): T | undefined {
  let best: T | undefined;
  let bestDistance = Infinity;
  for (const entry of entries) {
    const distance = entry.platform && platformDistance(wanted, entry.platform);
    if (distance !== undefined && distance < bestDistance) {
      best = entry;
      bestDistance = distance;
    }
  }
  return best;
}
