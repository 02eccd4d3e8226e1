/**
 * Which index entry a platform picks, as docker and containerd pick it: `linux/arm` is arm/v7
 * (it took the first arm entry, v6), an entry `linux/arm` without a variant is v7 (asked for
 * arm/v7 it was "no manifest"), a lower variant serves a higher one when nothing closer is
 * there (arm/v6 for arm/v7, amd64 for amd64/v2), LINUX/AMD64 is linux/amd64, and entries without
 * a platform (the field is optional) are chosen by their configs (with several, every platform
 * was refused: "available: unknown").
 */
import assert from "node:assert/strict";
import { resolveDocument } from "../lib/oci/resolve.ts";
import { type ManifestDocument, parseManifestDocument } from "../lib/oci/manifest.ts";
import { parsePlatform, type Platform } from "../lib/oci/platform.ts";
import { OciError } from "../lib/errors.ts";

const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
const digestNo = (n: number, c = "0") => `sha256:${n.toString(16).padStart(64, c)}`;

/** An index of one image per entry (platform in the entry, or only in its config). */
function imageIndex(entries: { platform?: Platform; config?: Platform }[]) {
  const manifests = new Map<
    string,
    { digest: string; bytes: Uint8Array; document: ManifestDocument }
  >();
  const configs = new Map<string, Platform | undefined>();
  const descriptors = entries.map((entry, i) => {
    const config = digestNo(i, "c");
    configs.set(config, entry.config);
    const bytes = enc({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: config, size: 10 },
      layers: [],
    });
    const digest = digestNo(i);
    manifests.set(digest, {
      digest,
      bytes,
      document: parseManifestDocument(bytes, OCI_MANIFEST, "manifest"),
    });
    return { mediaType: OCI_MANIFEST, digest, size: bytes.length, platform: entry.platform };
  });
  const bytes = enc({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: descriptors });
  const top = {
    digest: digestNo(0, "f"),
    bytes,
    document: parseManifestDocument(bytes, OCI_INDEX, "index"),
  };
  const fetched: string[] = [];
  const fetcher = {
    manifest: (digest: string) => {
      fetched.push(digest);
      return Promise.resolve(manifests.get(digest)!);
    },
    configPlatform: (config: { digest: string }) => Promise.resolve(configs.get(config.digest)),
  };
  return { top, fetcher, fetched };
}

async function chosen(entries: { platform?: Platform; config?: Platform }[], wanted: string) {
  const { top, fetcher } = imageIndex(entries);
  const resolved = await resolveDocument(top, fetcher, parsePlatform(wanted), true, "r/app:v1");
  return { digest: resolved.manifestDigest, platform: resolved.platform };
}

const linux = (architecture: string, variant?: string): Platform =>
  variant ? { os: "linux", architecture, variant } : { os: "linux", architecture };

Deno.test("platform choice: arm variants, lower variants, case, as docker and containerd", async () => {
  const armV6V7 = [{ platform: linux("arm", "v6") }, { platform: linux("arm", "v7") }];
  assert.equal((await chosen(armV6V7, "linux/arm")).digest, digestNo(1));
  assert.equal((await chosen(armV6V7, "linux/arm/v7")).digest, digestNo(1));
  assert.equal((await chosen(armV6V7, "linux/arm/v6")).digest, digestNo(0));
  // An entry without a variant is arm/v7.
  assert.equal((await chosen([{ platform: linux("arm") }], "linux/arm/v7")).digest, digestNo(0));
  // A lower variant runs where a higher one does; the closest wins.
  const v5v6 = [{ platform: linux("arm", "v5") }, { platform: linux("arm", "v6") }];
  assert.equal((await chosen(v5v6, "linux/arm/v7")).digest, digestNo(1));
  assert.equal(
    (await chosen([{ platform: linux("amd64") }], "linux/amd64/v2")).digest,
    digestNo(0),
  );
  // Not a higher one.
  await assert.rejects(
    () => chosen([{ platform: linux("arm", "v7") }], "linux/arm/v6"),
    (e: unknown) =>
      e instanceof OciError && /no manifest for platform linux\/arm\/v6/.test(e.message),
  );
  assert.equal((await chosen([{ platform: linux("amd64") }], "LINUX/AMD64")).digest, digestNo(0));
  // arm64 means v8 on both sides.
  assert.equal(
    (await chosen([{ platform: linux("arm64") }], "linux/arm64/v8")).digest,
    digestNo(0),
  );
});

Deno.test("platform choice: several entries without a platform are chosen by their configs", async () => {
  const entries = [{ config: linux("arm64") }, { config: linux("amd64") }, {}];
  const amd64 = await chosen(entries, "linux/amd64");
  assert.deepEqual(amd64, { digest: digestNo(1), platform: "linux/amd64" });
  // None fits: the refusal lists what the configs said, not "unknown".
  await assert.rejects(
    () => chosen(entries, "linux/s390x"),
    (e: unknown) =>
      e instanceof OciError && /available: .*linux\/arm64.*linux\/amd64/.test(e.message) &&
      !/unknown/.test(e.message),
  );
  // With the platform in the entries, no config is read.
  const { top, fetcher, fetched } = imageIndex([{ platform: linux("amd64") }]);
  await resolveDocument(top, fetcher, parsePlatform("linux/amd64"), true, "r/app:v1");
  assert.deepEqual(fetched, [digestNo(0)]);
});
