import assert from "node:assert/strict";
import { OciError } from "../errors.ts";
import { EROFS_LAYER, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST } from "./media_types.ts";
import { formatLayoutReference, OciLayout, parseLayoutReference } from "./oci_layout.ts";
import { RegistryBlob } from "./registry_blob.ts";
import { startOciLayout } from "../../tests/_support/oci_layout_writer.ts";

Deno.test("parseLayoutReference", () => {
  const d = `sha256:${"c".repeat(64)}`;
  assert.equal(parseLayoutReference("localhost:5000/app"), undefined);
  assert.deepEqual(parseLayoutReference("oci:out"), { layoutPath: "out" });
  assert.deepEqual(parseLayoutReference("oci:/a/b:v1"), { layoutPath: "/a/b", tag: "v1" });
  assert.deepEqual(parseLayoutReference("oci:./x:y/dir"), { layoutPath: "./x:y/dir" });
  assert.deepEqual(parseLayoutReference(`oci:dir@${d}`), { layoutPath: "dir", digest: d });
  assert.equal(formatLayoutReference({ layoutPath: "/a", tag: "t", digest: d }), `oci:/a:t@${d}`);
  for (const bad of ["oci:", "oci::v1", "oci:dir:bad tag", "oci:dir@sha256:12"]) {
    assert.throws(
      () => parseLayoutReference(bad),
      (e: unknown) => e instanceof OciError && e.exitCode === 2,
      bad,
    );
  }
});

/** Writes a layout with one EROFS image per platform, tagged `v1`, plus an untagged blob. */
async function writeLayout(dir: string, platforms: string[], tagged: "index" | "entries") {
  const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
  const put = await startOciLayout(dir);
  const entries = [];
  const layers: Uint8Array[] = [];
  for (const [i, p] of platforms.entries()) {
    const [os, architecture] = p.split("/");
    const layer = new Uint8Array(8192).fill(i + 1);
    layers.push(layer);
    const config = await put(enc({ os, architecture, rootfs: { type: "layers", diff_ids: [] } }));
    const manifest = await put(enc({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, ...config },
      layers: [{ mediaType: EROFS_LAYER, ...(await put(layer)) }],
    }));
    entries.push({ mediaType: OCI_MANIFEST, ...manifest, platform: { os, architecture } });
  }
  const refName = { "org.opencontainers.image.ref.name": "v1" };
  let manifests;
  if (tagged === "index") {
    const index = await put(enc({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: entries }));
    manifests = [{ mediaType: OCI_INDEX, ...index, annotations: refName }];
  } else {
    manifests = entries.map((e) => ({ ...e, annotations: refName }));
  }
  await Deno.writeFile(`${dir}/index.json`, enc({ schemaVersion: 2, manifests }));
  return { layers, entries };
}

Deno.test("OciLayout: resolve by tag, digest, index.json; read and copy blobs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-layout-" });
  try {
    const { layers, entries } = await writeLayout(dir, ["linux/amd64", "linux/arm64"], "index");
    const layout = new OciLayout(dir);
    const arm = await layout.resolveImage({ layoutPath: dir, tag: "v1" }, "linux/arm64");
    assert.equal(arm.platform, "linux/arm64");
    assert.deepEqual(arm.platforms, ["linux/amd64", "linux/arm64"]);
    assert.equal(arm.manifestDigest, entries[1].digest);
    assert.ok(arm.indexDigest?.startsWith("sha256:"));
    assert.deepEqual(arm.layers.map((l) => [l.index, l.sizeBytes, l.mediaType]), [[
      0,
      8192,
      EROFS_LAYER,
    ]]);
    const byDigest = await layout.resolveImage({ layoutPath: dir, digest: entries[0].digest });
    assert.equal(byDigest.platform, "linux/amd64");
    await assert.rejects(
      layout.resolveImage({ layoutPath: dir, tag: "v1" }, "linux/s390x"),
      /available: linux\/amd64, linux\/arm64/,
    );
    await assert.rejects(
      layout.resolveImage({ layoutPath: dir, tag: "v2" }),
      /tag 'v2' not found .*tags: v1/,
    );

    const blob = new RegistryBlob(layout, "", arm.layers[0]);
    assert.deepEqual(await blob.read(100, 50), layers[1].slice(100, 150));
    await assert.rejects(layout.readBlobRange("", arm.layers[0].digest, 8000, 500), /ends before/);
    const out = `${dir}/pulled`;
    await layout.downloadBlob("", arm.layers[0].digest, out, { expectedSizeBytes: 8192 });
    assert.deepEqual(await Deno.readFile(out), layers[1]);
    // A corrupted blob is refused and leaves nothing behind.
    await Deno.writeFile(layout.blobPath(arm.layers[0].digest), new Uint8Array(8192));
    await assert.rejects(
      layout.downloadBlob("", arm.layers[0].digest, `${dir}/bad`),
      /failed verification/,
    );
    await assert.rejects(Deno.stat(`${dir}/bad.partial`));
    await assert.rejects(Deno.stat(`${dir}/bad`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("OciLayout: per-platform entries sharing a tag, and no tag at all", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-layout-" });
  try {
    const { entries } = await writeLayout(dir, ["linux/amd64", "linux/arm64"], "entries");
    const layout = new OciLayout(dir);
    const amd = await layout.resolveImage({ layoutPath: dir, tag: "v1" }, "linux/amd64");
    assert.equal(amd.manifestDigest, entries[0].digest);
    assert.equal(amd.indexDigest, undefined);
    const whole = await layout.resolveImage({ layoutPath: dir }, "linux/arm64");
    assert.equal(whole.manifestDigest, entries[1].digest);
    // Two images tagged apart: without a tag, which one is not for the platform to decide.
    const index = JSON.parse(await Deno.readTextFile(`${dir}/index.json`));
    index.manifests[1].annotations["org.opencontainers.image.ref.name"] = "v2";
    await Deno.writeTextFile(`${dir}/index.json`, JSON.stringify(index));
    await assert.rejects(
      layout.resolveImage({ layoutPath: dir }),
      (error: unknown) => {
        assert.ok(error instanceof OciError);
        assert.match(error.message, /holds 2 tagged images \(tags: v1, v2\); name one$/);
        assert.equal(error.hint, `e.g. oci:${dir}:v1`);
        assert.equal(error.exitCode, 2);
        return true;
      },
    );
    const v2 = await layout.resolveImage({ layoutPath: dir, tag: "v2" }, "linux/arm64");
    assert.equal(v2.manifestDigest, entries[1].digest);
    await assert.rejects(
      new OciLayout(`${dir}/nope`).resolveImage({ layoutPath: "x" }),
      /not an OCI image layout/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("OciLayout: an entry without a platform (as skopeo writes) takes its config's", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-layout-" });
  try {
    const { entries } = await writeLayout(dir, ["linux/arm64"], "entries");
    const index = JSON.parse(await Deno.readTextFile(`${dir}/index.json`));
    delete index.manifests[0].platform;
    await Deno.writeTextFile(`${dir}/index.json`, JSON.stringify(index));
    const layout = new OciLayout(dir);
    // It was "unknown", and --platform linux/arm64 refused ("available: unknown").
    for (const ref of [{ layoutPath: dir }, { layoutPath: dir, tag: "v1" }]) {
      const any = await layout.resolveImage(ref);
      assert.equal(any.platform, "linux/arm64");
      assert.equal(any.manifestDigest, entries[0].digest);
      const asked = await layout.resolveImage(ref, "linux/arm64");
      assert.equal(asked.manifestDigest, entries[0].digest);
      await assert.rejects(
        layout.resolveImage(ref, "linux/amd64"),
        /no manifest for platform linux\/amd64 in .*; available: linux\/arm64$/,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
