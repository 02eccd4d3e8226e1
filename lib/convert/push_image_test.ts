/**
 * pushImage and resolveImage against a real docker-registry (tests/_support/registry.ts):
 * chunked and monolithic uploads, skipping existing blobs, the pushed manifest and config, and
 * Docker schema 2 / index documents written by other tools.
 */
import assert from "node:assert/strict";
import { FormatError, OciError } from "../errors.ts";
import { command, requires } from "../../tests/_support/requires.ts";
import { startRegistry } from "../../tests/_support/registry.ts";
import { loadFixture } from "../../tests/_support/oci_fixtures.ts";
import { getManifest, pushIndex } from "../../tests/_support/oci_raw.ts";
import { listReferrers } from "../oci/referrers.ts";
import { CHUNK_TABLE_ANNOTATION, CHUNK_TABLES_ARTIFACT_TYPE } from "../verify/chunk_table.ts";
import { RegistryClient } from "../oci/client.ts";
import { parseReference } from "../oci/reference.ts";
import { RegistryBlob } from "../oci/registry_blob.ts";
import { pushImage } from "./push_image.ts";

const ignore = requires(command("docker-registry"), command("htpasswd"), command("openssl"));

Deno.test({
  name:
    "pushImage: chunked + monolithic uploads round-trip; existing blobs are skipped (token auth)",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "token" });
    const credentials = { username: registry.username, password: registry.password };
    const client = new RegistryClient(registry.host, { credentials });
    const basic = await loadFixture("basic.erofs"); // 1.4 MB: chunked with 256 KiB chunks
    const small = await loadFixture("layer2.erofs"); // 4 KiB: one PUT
    const ref = parseReference(`${registry.host}/push/test:v1`);
    const progress: string[] = [];
    const result = await pushImage(client, ref, [{ path: basic.path }, { path: small.path }], {
      platform: "linux/arm64/v8",
      monolithicMaxBytes: 64 * 1024,
      chunkSizeBytes: 256 * 1024,
      onProgress: (e) => progress.push(`${e.phase}:${e.doneBytes}/${e.totalBytes}`),
    });
    assert.deepEqual(result.layers.map((l) => [l.digest, l.sizeBytes, l.uploaded]), [
      [basic.digest, basic.bytes.length, true],
      [small.digest, small.bytes.length, true],
    ]);
    assert.ok(progress.includes(`upload:${256 * 1024}/${basic.bytes.length}`), progress.join());
    const log = await registry.accessLog();
    assert.ok(log.filter((l) => l.includes('"PATCH /v2/push/test/blobs/uploads/')).length >= 6);

    const image = await client.resolveImage(ref, "linux/arm64");
    assert.equal(image.manifestDigest, result.manifestDigest);
    assert.equal(image.platform, "linux/arm64/v8");
    assert.deepEqual(image.layers, [
      {
        index: 0,
        digest: basic.digest,
        sizeBytes: basic.bytes.length,
        mediaType: "application/vnd.erofs",
      },
      {
        index: 1,
        digest: small.digest,
        sizeBytes: small.bytes.length,
        mediaType: "application/vnd.erofs",
      },
    ]);
    const blob = new RegistryBlob(client, "push/test", image.layers[0]);
    assert.deepEqual(await blob.read(1024, 4), basic.bytes.slice(1024, 1028));
    assert.deepEqual(await blob.read(0, blob.size), basic.bytes);
    await assert.rejects(client.resolveImage(ref, "linux/amd64"), /available: linux\/arm64\/v8/);

    // Same content again under another tag: HEAD finds every blob, nothing is uploaded.
    const again = await pushImage(client, parseReference(`${registry.host}/push/test:v2`), [
      { path: basic.path },
      { path: small.path },
    ], { platform: "linux/arm64/v8" });
    assert.ok(again.layers.every((l) => !l.uploaded));
    assert.equal(again.manifestDigest, result.manifestDigest);
  },
});

Deno.test({
  name: "pushImage: a file pushed as two layers has its table uploaded and listed once",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const client = new RegistryClient(registry.host, { plainHttp: true });
    const small = await loadFixture("layer2.erofs");
    const ref = parseReference(`${registry.host}/push/twice:v1`);
    const result = await pushImage(client, ref, [{ path: small.path }, { path: small.path }]);
    const manifest = await getManifest(registry, "push/twice", result.manifestDigest);
    const layers = (manifest.json as { layers: { annotations: Record<string, string> }[] })
      .layers;
    const table = layers[0].annotations[CHUNK_TABLE_ANNOTATION];
    assert.match(table, /^sha256:[0-9a-f]{64}$/);
    assert.equal(layers[1].annotations[CHUNK_TABLE_ANNOTATION], table);
    const referrers = await listReferrers(
      client,
      "push/twice",
      result.manifestDigest,
      CHUNK_TABLES_ARTIFACT_TYPE,
    );
    assert.equal(referrers.length, 1);
    const artifact = await getManifest(registry, "push/twice", referrers[0].digest);
    const listed = (artifact.json as { layers: { digest: string }[] }).layers.map((l) => l.digest);
    assert.equal(listed.filter((d) => d === table).length, 1, JSON.stringify(listed));
    assert.equal(new Set(listed).size, listed.length, JSON.stringify(listed));
    const log = await registry.accessLog();
    const heads = log.filter((l) => l.includes(`"HEAD /v2/push/twice/blobs/${table} `));
    assert.equal(heads.length, 1, heads.join("\n"));
  },
});

Deno.test({
  name: "pushImage: refuses non-EROFS files and digest references before uploading",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const client = new RegistryClient(registry.host, {});
    const tar = await loadFixture("layer1.tar");
    await assert.rejects(
      pushImage(client, parseReference(`${registry.host}/push/bad:v1`), [{ path: tar.path }]),
      (e: unknown) => e instanceof FormatError && /not an EROFS image/.test(e.message),
    );
    await assert.rejects(
      pushImage(client, parseReference(`${registry.host}/push/bad:v1`), [{
        path: "/nonexistent/x",
      }]),
      (e: unknown) => e instanceof OciError && /cannot open \/nonexistent\/x/.test(e.message),
    );
    await assert.rejects(
      pushImage(client, parseReference(`${registry.host}/push/bad@sha256:${"a".repeat(64)}`), [
        { path: tar.path },
      ]),
      /digest reference/,
    );
    assert.deepEqual(
      (await registry.accessLog()).filter((l) => l.includes("/blobs/uploads/")),
      [],
    );
  },
});

Deno.test({
  name: "resolveImage: index platform selection and digest-pinned references",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "basic" });
    const layer = await loadFixture("layer3.erofs");
    const other = await loadFixture("layer2.erofs");
    await pushIndex(registry, "multi/app", "v1", [
      {
        platform: { os: "linux", architecture: "amd64" },
        layers: [{ bytes: layer.bytes, mediaType: "application/vnd.erofs" }],
      },
      {
        platform: { os: "linux", architecture: "arm64" },
        layers: [{ bytes: other.bytes, mediaType: "application/vnd.erofs" }],
      },
    ]);
    const client = new RegistryClient(registry.host, {
      credentials: { username: registry.username, password: registry.password },
    });
    const ref = parseReference(`${registry.host}/multi/app:v1`);
    const amd = await client.resolveImage(ref, "linux/amd64");
    const arm = await client.resolveImage(ref, "linux/arm64");
    assert.ok(amd.indexDigest && amd.indexDigest === arm.indexDigest);
    assert.deepEqual(amd.platforms, ["linux/amd64", "linux/arm64"]);
    assert.equal(amd.layers[0].digest, layer.digest);
    assert.equal(arm.layers[0].digest, other.digest);
    assert.equal(arm.platform, "linux/arm64");
    // A variant asked for on arm64 matches an entry without one (v8 is implied).
    assert.equal(
      (await client.resolveImage(ref, "linux/arm64/v8")).manifestDigest,
      arm.manifestDigest,
    );
    await assert.rejects(client.resolveImage(ref, "linux/s390x"), (e: unknown) => {
      assert.ok(e instanceof OciError);
      assert.match(
        e.message,
        /no manifest for platform linux\/s390x .*available: linux\/amd64, linux\/arm64$/,
      );
      return true;
    });
    // Pinned by index digest and by manifest digest.
    const byIndex = await client.resolveImage(
      parseReference(`${registry.host}/multi/app@${amd.indexDigest}`),
      "linux/arm64",
    );
    assert.equal(byIndex.manifestDigest, arm.manifestDigest);
    const byManifest = await client.resolveImage(
      parseReference(`${registry.host}/multi/app@${amd.manifestDigest}`),
    );
    assert.equal(byManifest.indexDigest, undefined);
    assert.equal(byManifest.layers[0].digest, layer.digest);
    await assert.rejects(
      client.resolveImage(parseReference(`${registry.host}/multi/app@sha256:${"0".repeat(64)}`)),
      /manifest not found: .*\(404\)/,
    );
  },
});
