/**
 * "No manifest for platform" lists what the index offers, bounded: an index of 15,000 platforms
 * (the registry's to choose) made the one-line error 229 KB long.
 */
import assert from "node:assert/strict";
import { resolveDocument } from "../lib/oci/resolve.ts";
import { parseManifestDocument } from "../lib/oci/manifest.ts";
import { parsePlatform } from "../lib/oci/platform.ts";
import { OciError } from "../lib/errors.ts";

const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

function indexOf(platforms: { os: string; architecture: string }[]) {
  const bytes = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: platforms.map((platform, i) => ({
      mediaType: OCI_MANIFEST,
      digest: `sha256:${i.toString(16).padStart(64, "0")}`,
      size: 100,
      platform,
    })),
  }));
  return {
    digest: `sha256:${"f".repeat(64)}`,
    bytes,
    document: parseManifestDocument(bytes, OCI_INDEX, "index"),
  };
}

async function noMatchError(platforms: { os: string; architecture: string }[]): Promise<string> {
  const fetcher = {
    manifest: () => Promise.reject(new Error("no platform matches: nothing to fetch")),
    configPlatform: () => Promise.resolve(undefined),
  };
  try {
    await resolveDocument(
      indexOf(platforms),
      fetcher,
      parsePlatform("linux/s390x"),
      true,
      "reg.example/app:v1",
    );
  } catch (error) {
    assert.ok(error instanceof OciError, String(error));
    return error.message;
  }
  assert.fail("resolved");
}

Deno.test("platform list: 15,000 platforms are listed as the first 20 and a count", async () => {
  const platforms = Array.from({ length: 15_000 }, (_, i) => ({
    os: "linux",
    architecture: `arch${i}`,
  }));
  const message = await noMatchError(platforms);
  assert.ok(message.length < 600, `${message.length} characters`);
  assert.ok(!message.includes("\n"));
  assert.match(
    message,
    /^no manifest for platform linux\/s390x in reg\.example\/app:v1; available: linux\/arch0, linux\/arch1, .*, linux\/arch19 … and 14980 more$/,
  );
});

Deno.test("platform list: a few platforms are all listed; a long name is cut", async () => {
  const message = await noMatchError([
    { os: "linux", architecture: "amd64" },
    { os: "linux", architecture: "x".repeat(10_000) },
  ]);
  assert.ok(message.length < 300, `${message.length} characters`);
  assert.match(message, /available: linux\/amd64, linux\/x{58}…$/);
});

Deno.test("platform list: an index without one image manifest says what it holds, not 'available: none'", async () => {
  const fetcher = {
    manifest: () => Promise.reject(new Error("nothing to fetch")),
    configPlatform: () => Promise.resolve(undefined),
  };
  const entry = (mediaType: string, i: number, extra: Record<string, unknown> = {}) => ({
    mediaType,
    digest: `sha256:${i.toString(16).padStart(64, "0")}`,
    size: 100,
    ...extra,
  });
  const resolveOf = async (manifests: unknown[]) => {
    const bytes = new TextEncoder().encode(
      JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }),
    );
    const top = {
      digest: `sha256:${"f".repeat(64)}`,
      bytes,
      document: parseManifestDocument(bytes),
    };
    try {
      await resolveDocument(
        top,
        fetcher,
        parsePlatform("linux/amd64"),
        false,
        "reg.example/app:v1",
      );
    } catch (error) {
      assert.ok(error instanceof OciError, String(error));
      return error;
    }
    assert.fail("resolved");
  };
  const nested = await resolveOf([entry(OCI_INDEX, 1)]);
  assert.equal(
    nested.message,
    "reg.example/app:v1 is an index with no image manifest (1 nested index)",
  );
  assert.equal(
    nested.hint,
    `name a nested index by its digest: reg.example/app@sha256:${"0".repeat(63)}1`,
  );
  assert.equal(
    (await resolveOf([])).message,
    "reg.example/app:v1 is an index with no image manifest (empty)",
  );
  const attested = await resolveOf([
    entry(OCI_MANIFEST, 2, { platform: { os: "unknown", architecture: "unknown" } }),
  ]);
  assert.match(attested.message, /no image manifest \(1 attestation\)$/);
  assert.equal(attested.hint, undefined);
});
