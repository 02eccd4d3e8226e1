/**
 * Tests that need an outside component (qemu, docker-registry, root, /dev/fuse) call
 * `requires()` for their `ignore` flag. Locally a missing component skips the test with the
 * reason printed; under CI (`CI=true`) nothing is skipped, so the test runs and fails loudly.
 */
import { fileURLToPath } from "node:url";

export const IN_CI = Deno.env.get("CI") === "true";

export interface Requirement {
  /** What is missing, or undefined when available. */
  missing(): string | undefined;
}

export function command(name: string): Requirement {
  return { missing: () => (findInPath(name) ? undefined : `command '${name}' not installed`) };
}

export function root(): Requirement {
  return { missing: () => (Deno.uid() === 0 ? undefined : "needs root") };
}

export function path(p: string, what = p): Requirement {
  return {
    missing: () => {
      try {
        Deno.statSync(p);
        return undefined;
      } catch {
        return `${what} not present`;
      }
    },
  };
}

/** Returns true (ignore the test) when a requirement is missing and we are not in CI. */
export function requires(...requirements: Requirement[]): boolean {
  const reasons = requirements.map((r) => r.missing()).filter((r): r is string => !!r);
  if (reasons.length === 0) return false;
  if (IN_CI) return false;
  console.warn(`skipping (local run): ${reasons.join(", ")}`);
  return true;
}

export function findInPath(name: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    try {
      const p = `${dir}/${name}`;
      if (Deno.statSync(p).isFile) return p;
    } catch { /* not here */ }
  }
  for (const dir of ["/usr/sbin", "/sbin"]) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
    } catch { /* not here */ }
  }
  return undefined;
}

/** Repository root and shared fixtures, resolved from this file. */
// fileURLToPath, not URL.pathname: a checkout path with spaces would stay percent-encoded.
export const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
export const FIXTURES = Deno.env.get("EROFS_OCI_FIXTURES") ?? `${REPO_ROOT}/../shared/fixtures`;
export const PEER_BIN = Deno.env.get("EROFS_OCI_PEER_BIN") ?? `${REPO_ROOT}/../shared/peer/bin`;
