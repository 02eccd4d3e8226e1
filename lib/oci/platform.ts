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
  const parts = text.split("/");
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

/**
 * Whether an index entry's platform satisfies the wanted one: os and architecture equal, and the
 * variant equal when the wanted platform names one (`arm64` treats a missing variant as `v8`).
 */
export function platformMatches(wanted: Platform, candidate: Platform): boolean {
  if (wanted.os !== candidate.os) return false;
  if (wanted.architecture !== normalizeArch(candidate.architecture)) return false;
  if (wanted.variant === undefined) return true;
  const variant = candidate.variant ??
    (wanted.architecture === "arm64" ? "v8" : undefined);
  return variant === wanted.variant;
}
