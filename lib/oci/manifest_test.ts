import assert from "node:assert/strict";
import fc from "fast-check";
import { OciError } from "../errors.ts";
import { parseConfigPlatform, parseManifestDocument } from "./manifest.ts";
import {
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  EROFS_LAYER,
  isErofsMediaType,
  OCI_CONFIG,
  OCI_INDEX,
  OCI_MANIFEST,
} from "./media_types.ts";
import { parsePlatform, platformMatches } from "./platform.ts";

const d = (n: number) => `sha256:${n.toString(16).padStart(64, "0")}`;
const desc = (n: number, mediaType = EROFS_LAYER, size = 100 + n) => ({
  mediaType,
  digest: d(n),
  size,
});

Deno.test("parseManifestDocument: the four supported kinds", () => {
  const manifest = parseManifestDocument(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: desc(1, OCI_CONFIG),
    layers: [desc(2), desc(3, "application/vnd.oci.image.layer.v1.tar+gzip")],
  }));
  assert.deepEqual(manifest, {
    kind: "manifest",
    mediaType: OCI_MANIFEST,
    config: desc(1, OCI_CONFIG),
    layers: [desc(2), desc(3, "application/vnd.oci.image.layer.v1.tar+gzip")],
  });
  const docker = parseManifestDocument(
    new TextEncoder().encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: DOCKER_MANIFEST,
      config: desc(1, "application/vnd.docker.container.image.v1+json"),
      layers: [],
    })),
  );
  assert.equal(docker.kind, "manifest");
  const index = parseManifestDocument(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [
      { ...desc(4, OCI_MANIFEST), platform: { os: "linux", architecture: "amd64" } },
      {
        ...desc(5, OCI_MANIFEST),
        platform: { os: "linux", architecture: "arm64", variant: "v8" },
        annotations: { a: "b", n: 1 },
      },
    ],
  }));
  assert.deepEqual(index, {
    kind: "index",
    mediaType: OCI_INDEX,
    manifests: [
      { ...desc(4, OCI_MANIFEST), platform: { os: "linux", architecture: "amd64" } },
      {
        ...desc(5, OCI_MANIFEST),
        platform: { os: "linux", architecture: "arm64", variant: "v8" },
        annotations: { a: "b" },
      },
    ],
  });
  const list = parseManifestDocument(
    JSON.stringify({ schemaVersion: 2, mediaType: DOCKER_MANIFEST_LIST, manifests: [] }),
  );
  assert.equal(list.kind, "index");
});

Deno.test("parseManifestDocument: kind from Content-Type or shape when mediaType is absent", () => {
  const body = JSON.stringify({ schemaVersion: 2, config: desc(1, OCI_CONFIG), layers: [] });
  assert.equal(parseManifestDocument(body, `${OCI_MANIFEST}; charset=utf-8`).kind, "manifest");
  assert.equal(parseManifestDocument(body, "application/json").kind, "manifest");
  const index = JSON.stringify({ schemaVersion: 2, manifests: [] });
  assert.equal(parseManifestDocument(index, undefined).kind, "index");
  assert.equal(parseManifestDocument(index, undefined).mediaType, OCI_INDEX);
});

Deno.test("parseManifestDocument: malformed documents name the problem", () => {
  const base = { schemaVersion: 2, mediaType: OCI_MANIFEST, config: desc(1, OCI_CONFIG) };
  const cases: [unknown, RegExp][] = [
    ["not json", /not JSON/],
    [[], /not a JSON object/],
    [null, /not a JSON object/],
    [{ schemaVersion: 1, name: "x" }, /schema 1/],
    [
      { schemaVersion: 2, mediaType: "application/vnd.docker.distribution.manifest.v1+json" },
      /schema 1/,
    ],
    [{ ...base, schemaVersion: 3, layers: [] }, /schemaVersion/],
    [{ ...base, mediaType: "text/html", layers: [] }, /unsupported media type 'text\/html'/],
    [{ schemaVersion: 2, manifests: [], layers: [] }, /unsupported media type/],
    [{ ...base, layers: {} }, /layers is not an array/],
    [{ ...base, layers: [1] }, /layers\[0\] is not an object/],
    [{ ...base, layers: [{ ...desc(2), digest: "sha256:xyz" }] }, /layers\[0\]\.digest/],
    [{ ...base, layers: [{ ...desc(2), size: -1 }] }, /layers\[0\]\.size/],
    [{ ...base, layers: [{ ...desc(2), size: 2 ** 60 }] }, /layers\[0\]\.size/],
    [{ ...base, layers: [{ ...desc(2), size: "5" }] }, /layers\[0\]\.size/],
    [{ ...base, layers: [desc(2), { ...desc(3), mediaType: 7 }] }, /layers\[1\]\.mediaType/],
    [{ ...base, config: undefined, layers: [] }, /config is not an object/],
    [
      { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ ...desc(1), platform: "linux" }] },
      /platform/,
    ],
    [
      { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ ...desc(1), platform: { os: 1 } }] },
      /platform/,
    ],
  ];
  for (const [doc, why] of cases) {
    const body = typeof doc === "string" ? doc : JSON.stringify(doc);
    assert.throws(() => parseManifestDocument(body, undefined, "manifest x"), (error: unknown) => {
      assert.ok(error instanceof OciError, `${body}: ${error}`);
      assert.match(error.message, /^invalid manifest x: /);
      assert.match(error.message, why, body);
      assert.ok(!error.message.includes("\n"));
      return true;
    });
  }
  assert.throws(() => parseManifestDocument(new Uint8Array([0xff, 0xfe])), /not UTF-8/);
  assert.throws(() => parseManifestDocument(new Uint8Array(5 * 1024 * 1024)), /larger than/);
});

Deno.test("parseManifestDocument: property: arbitrary JSON gives a document or a one-line OciError", () => {
  const descriptorish = fc.record({
    mediaType: fc.oneof(fc.constant(EROFS_LAYER), fc.string(), fc.integer()),
    digest: fc.oneof(fc.constant(d(1)), fc.string(), fc.constant(`sha512:${"a".repeat(128)}`)),
    size: fc.oneof(fc.nat(), fc.integer(), fc.double(), fc.string()),
    platform: fc.option(fc.anything(), { nil: undefined }),
  }, { requiredKeys: [] });
  const doc = fc.record({
    schemaVersion: fc.oneof(fc.constant(2), fc.anything()),
    mediaType: fc.option(fc.constantFrom(OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, "x"), {
      nil: undefined,
    }),
    config: fc.oneof(descriptorish, fc.anything()),
    layers: fc.oneof(fc.array(descriptorish, { maxLength: 4 }), fc.anything()),
    manifests: fc.oneof(fc.array(descriptorish, { maxLength: 4 }), fc.anything()),
  }, { requiredKeys: [] });
  fc.assert(
    fc.property(
      fc.oneof(doc, fc.anything()),
      fc.option(fc.string(), { nil: undefined }),
      (value, type) => {
        const body = JSON.stringify(value) ?? "undefined";
        try {
          const parsed = parseManifestDocument(body, type);
          const descriptors = parsed.kind === "index"
            ? parsed.manifests
            : [parsed.config, ...parsed.layers];
          for (const x of descriptors) {
            assert.ok(Number.isSafeInteger(x.size) && x.size >= 0);
            assert.match(x.digest, /^sha(256|512):[a-f0-9]+$/);
            assert.equal(typeof x.mediaType, "string");
          }
        } catch (error) {
          assert.ok(error instanceof OciError, `${body}: ${error}`);
          assert.ok(!error.message.includes("\n"));
        }
      },
    ),
    { numRuns: 3000 },
  );
});

Deno.test("parseConfigPlatform", () => {
  assert.deepEqual(parseConfigPlatform('{"os":"linux","architecture":"arm","variant":"v7"}'), {
    os: "linux",
    architecture: "arm",
    variant: "v7",
  });
  assert.equal(parseConfigPlatform("{}"), undefined);
  assert.equal(parseConfigPlatform("[1]"), undefined);
  assert.equal(parseConfigPlatform("garbage"), undefined);
});

Deno.test("platforms: parse and match", () => {
  assert.deepEqual(parsePlatform("linux/amd64"), { os: "linux", architecture: "amd64" });
  assert.deepEqual(parsePlatform("linux/x86_64"), { os: "linux", architecture: "amd64" });
  assert.deepEqual(parsePlatform("linux/arm/v7"), {
    os: "linux",
    architecture: "arm",
    variant: "v7",
  });
  for (const bad of ["linux", "linux/", "/amd64", "a/b/c/d", "linux amd64"]) {
    assert.throws(
      () => parsePlatform(bad),
      (e: unknown) => e instanceof OciError && e.exitCode === 2,
    );
  }
  const m = (w: string, os: string, architecture: string, variant?: string) =>
    platformMatches(parsePlatform(w), { os, architecture, variant });
  assert.ok(m("linux/amd64", "linux", "amd64"));
  assert.ok(m("linux/arm64", "linux", "arm64", "v8"));
  assert.ok(m("linux/arm64/v8", "linux", "arm64"));
  assert.ok(m("linux/arm/v7", "linux", "arm", "v6")); // a lower variant runs there
  assert.ok(!m("linux/arm/v6", "linux", "arm", "v7"));
  assert.ok(m("Linux/AMD64", "linux", "amd64"));
  assert.ok(!m("linux/amd64", "windows", "amd64"));
  assert.ok(!m("linux/arm64", "linux", "amd64"));
});

Deno.test("isErofsMediaType", () => {
  for (
    const t of [
      EROFS_LAYER,
      "application/vnd.erofs.layer.v1",
      "application/vnd.erofs+zstd",
      "Application/VND.EROFS; x=y",
    ]
  ) {
    assert.ok(isErofsMediaType(t), t);
  }
  for (const t of ["application/vnd.erofsx", "application/vnd.oci.image.layer.v1.tar", ""]) {
    assert.ok(!isErofsMediaType(t), t);
  }
});
