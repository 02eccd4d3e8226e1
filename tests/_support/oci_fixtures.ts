/** Fixture files and the expectations derived from them for OCI end-to-end tests. */
import assert from "node:assert/strict";
import { FIXTURES } from "./requires.ts";
import type { TestRegistry } from "./registry.ts";
import { getManifest, sha256Digest } from "./oci_raw.ts";

export const EROFS_MEDIA_TYPE = "application/vnd.erofs";

export interface Fixture {
  name: string;
  path: string;
  bytes: Uint8Array<ArrayBuffer>;
  digest: string;
}

export async function loadFixture(name: string): Promise<Fixture> {
  const path = `${FIXTURES}/${name}`;
  const bytes = await Deno.readFile(path);
  return { name, path, bytes, digest: await sha256Digest(bytes) };
}

/** The platform `push` records by default: this machine's, in OCI spelling. */
export function hostPlatform(): { os: string; architecture: string } {
  const architecture = ({ x86_64: "amd64", aarch64: "arm64" } as Record<string, string>)[
    Deno.build.arch
  ] ?? Deno.build.arch;
  return { os: "linux", architecture };
}

/** Digest of the image manifest a client resolves `reference` to for `platform`. */
export async function platformManifestDigest(
  registry: TestRegistry,
  repository: string,
  reference: string,
  platform = hostPlatform(),
): Promise<string> {
  const top = await getManifest(registry, repository, reference);
  assert.equal(top.status, 200, `manifest ${repository}:${reference}`);
  const doc = top.json as { manifests?: { digest: string; platform?: typeof platform }[] };
  if (!Array.isArray(doc.manifests)) return top.digest!;
  const entry = doc.manifests.find((m) =>
    m.platform?.os === platform.os && m.platform?.architecture === platform.architecture
  );
  assert.ok(entry, `index of ${repository}:${reference} has no ${JSON.stringify(platform)}`);
  return entry.digest;
}
