/**
 * `convert` onto a tag whose image already holds a converted layer reuses that layer, and the new
 * image's tables artifact lists the layer's chunk table (its real size) and metadata pack: once
 * the old image and its artifact are deleted and the registry collects garbage (real
 * docker-registry, `garbage-collect`), the table and pack are still there and the mount's table
 * discovery (attachChunkTables, --require-verified) still verifies every layer. A stored table
 * that no longer matches its digest (registry or OCI layout destination) is neither bound to the
 * reused layer nor listed; one the registry lost is passed over without a note. A reused
 * table costs one GET (no HEAD before it, and once however often the image holds the layer),
 * and an image holding a layer twice lists its table and pack once.
 */
import assert from "node:assert/strict";
import { RegistryClient } from "../lib/oci/client.ts";
import { listReferrers, referrersTag } from "../lib/oci/referrers.ts";
import {
  CHUNK_TABLE_ANNOTATION,
  CHUNK_TABLE_MEDIA_TYPE,
  CHUNK_TABLES_ARTIFACT_TYPE,
  TABLE_LAYER_ANNOTATION,
} from "../lib/verify/chunk_table.ts";
import { METADATA_PACK_MEDIA_TYPE } from "../lib/verify/metadata_ranges.ts";
import { findTablesByReferrer } from "../lib/verify/table_artifact.ts";
import { attachChunkTables, type ChunkTableSpec } from "../lib/verify/layer_tables.ts";
import { command, FIXTURES, requires } from "./_support/requires.ts";
import { startRegistry, storedBlobPath, type TestRegistry } from "./_support/registry.ts";
import { assertSuccess, type CliResult, describe, runCli } from "./_support/cli.ts";
import { getBlob, getManifest, pushImage } from "./_support/oci_raw.ts";
import { type FaultProxy, startFaultProxy } from "./_support/fault_proxy.ts";
import { runTool } from "./_support/tool.ts";

const TAR = "application/vnd.oci.image.layer.v1.tar";
const DST = "dst/app";

interface ArtifactEntry {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

interface ImageManifest {
  layers: { digest: string; size: number; annotations?: Record<string, string> }[];
}

/** The entries of every tables artifact referring to `subject` (as the registry lists them). */
async function artifactEntries(
  registry: TestRegistry,
  client: RegistryClient,
  subject: string,
): Promise<{ artifacts: string[]; entries: ArtifactEntry[] }> {
  const referrers = await listReferrers(client, DST, subject, CHUNK_TABLES_ARTIFACT_TYPE);
  const entries: ArtifactEntry[] = [];
  for (const referrer of referrers) {
    const got = await getManifest(registry, DST, referrer.digest);
    assert.equal(got.status, 200, JSON.stringify(got.json));
    entries.push(...(got.json as { layers: ArtifactEntry[] }).layers);
  }
  return { artifacts: referrers.map((r) => r.digest), entries };
}

/** The table and pack entries naming `layer`. */
function entriesOf(entries: ArtifactEntry[], layer: string) {
  const of = entries.filter((e) => e.annotations?.[TABLE_LAYER_ANNOTATION] === layer);
  return {
    table: of.filter((e) => e.mediaType === CHUNK_TABLE_MEDIA_TYPE),
    pack: of.filter((e) => e.mediaType === METADATA_PACK_MEDIA_TYPE),
  };
}

/** `erofs-oci convert SOURCE TARGET`, which must succeed. */
async function convertOk(source: string, target: string): Promise<CliResult> {
  const result = await runCli(["convert", source, target], { timeoutMs: 120_000 });
  assertSuccess(result);
  return result;
}

/** The digest convert printed (`NAME@DIGEST`) and that manifest as stored under DST. */
async function convertedManifest(
  registry: TestRegistry,
  stdout: string,
): Promise<{ digest: string; manifest: ImageManifest }> {
  const digest = stdout.trim().split("@")[1];
  return { digest, manifest: (await getManifest(registry, DST, digest)).json as ImageManifest };
}

/**
 * The image convert printed reuses `reusedLayer` as its first layer without a table: none
 * annotated, none listed by its artifact, while its second layer's table is listed.
 */
async function assertReusedWithoutTable(
  registry: TestRegistry,
  client: RegistryClient,
  stdout: string,
  reusedLayer: string,
): Promise<void> {
  const { digest: newManifest, manifest: now } = await convertedManifest(registry, stdout);
  assert.equal(now.layers[0].digest, reusedLayer);
  assert.equal(now.layers[0].annotations?.[CHUNK_TABLE_ANNOTATION], undefined);
  const listed = await artifactEntries(registry, client, newManifest);
  assert.deepEqual(entriesOf(listed.entries, reusedLayer), { table: [], pack: [] });
  assert.equal(entriesOf(listed.entries, now.layers[1].digest).table.length, 1);
}

async function deleteManifest(registry: TestRegistry, digest: string): Promise<void> {
  const response = await fetch(`http://${registry.host}/v2/${DST}/manifests/${digest}`, {
    method: "DELETE",
    signal: AbortSignal.timeout(10_000),
  });
  await response.body?.cancel();
  assert.equal(response.status, 202, `DELETE ${digest}`);
}

async function blobStatus(registry: TestRegistry, digest: string): Promise<number> {
  const response = await fetch(`http://${registry.host}/v2/${DST}/blobs/${digest}`, {
    method: "HEAD",
    signal: AbortSignal.timeout(10_000),
  });
  await response.body?.cancel();
  return response.status;
}

async function deleteBlob(registry: TestRegistry, digest: string): Promise<void> {
  const response = await fetch(`http://${registry.host}/v2/${DST}/blobs/${digest}`, {
    method: "DELETE",
    signal: AbortSignal.timeout(10_000),
  });
  await response.body?.cancel();
  assert.equal(response.status, 202, `DELETE ${digest}`);
}

/**
 * src/app:one (layer1), src/app:two (layer1, layer2): the second shares the first's layer;
 * src/app:twice (layer1, layer1, layer2) holds it twice.
 */
async function pushSourceImages(registry: TestRegistry): Promise<void> {
  const layer1 = Deno.readFileSync(`${FIXTURES}/layer1.tar`);
  const layer2 = Deno.readFileSync(`${FIXTURES}/layer2.tar`);
  await pushImage(registry, "src/app", "one", [{ bytes: layer1, mediaType: TAR }]);
  await pushImage(registry, "src/app", "two", [
    { bytes: layer1, mediaType: TAR },
    { bytes: layer2, mediaType: TAR },
  ]);
  await pushImage(registry, "src/app", "twice", [
    { bytes: layer1, mediaType: TAR },
    { bytes: layer1, mediaType: TAR },
    { bytes: layer2, mediaType: TAR },
  ]);
}

/** The methods of the requests for blob `digest` that went through the proxy, in order. */
function blobRequests(proxy: FaultProxy, digest: string): string[] {
  return proxy.requests.filter((r) => r.path.endsWith(`/blobs/${digest}`)).map((r) => r.method);
}

Deno.test({
  name: "convert: a reused layer's table and pack are listed by the new image's tables artifact",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const client = new RegistryClient(registry.host, { plainHttp: true });
    await pushSourceImages(registry);
    const stateDir = await Deno.makeTempDir({ prefix: "erofs-oci-reused-table-" });
    try {
      const dst = `${registry.host}/${DST}:v1`;
      const first = await convertOk(`${registry.host}/src/app:one`, dst);
      const { digest: oldManifest, manifest: old } = await convertedManifest(
        registry,
        first.stdout,
      );
      const reusedLayer = old.layers[0].digest;
      const table = old.layers[0].annotations?.[CHUNK_TABLE_ANNOTATION] ?? "";
      assert.match(table, /^sha256:[0-9a-f]{64}$/);
      const before = entriesOf(
        (await artifactEntries(registry, client, oldManifest)).entries,
        reusedLayer,
      );
      assert.equal(before.table.length, 1, JSON.stringify(before));
      assert.equal(before.table[0].digest, table);
      // The EROFS layer's table names a metadata pack; the first artifact lists it.
      assert.equal(before.pack.length, 1, JSON.stringify(before));
      const pack = before.pack[0];

      await using proxy = await startFaultProxy(registry.host, []);
      const second = await convertOk(`${registry.host}/src/app:two`, `${proxy.host}/${DST}:v1`);
      assert.match(second.stderr, /layer 1\/2: already converted/, describe(second));
      assert.doesNotMatch(second.stderr, /chunk table is not used/, describe(second));
      // The reused table is read back with one GET, without a HEAD first.
      assert.deepEqual(blobRequests(proxy, table), ["GET"]);
      const { digest: newManifest, manifest: now } = await convertedManifest(
        registry,
        second.stdout,
      );
      assert.notEqual(newManifest, oldManifest);
      assert.equal(now.layers[0].digest, reusedLayer);
      assert.equal(now.layers[0].annotations?.[CHUNK_TABLE_ANNOTATION], table);

      // The new image's own artifact lists the reused table (real size) and its pack.
      const byReferrer = await findTablesByReferrer(client, DST, newManifest);
      assert.equal(byReferrer.get(reusedLayer), table, JSON.stringify([...byReferrer]));
      assert.match(byReferrer.get(now.layers[1].digest) ?? "", /^sha256:/);
      const listed = await artifactEntries(registry, client, newManifest);
      const after = entriesOf(listed.entries, reusedLayer);
      assert.deepEqual(after.table.map((e) => [e.digest, e.size]), [
        [table, (await getBlob(registry, DST, table)).byteLength],
      ]);
      assert.deepEqual(after.pack.map((e) => [e.digest, e.size]), [[pack.digest, pack.size]]);

      // The old image goes, with its artifact and its fallback tag; the registry collects.
      const oldArtifacts = (await artifactEntries(registry, client, oldManifest)).artifacts;
      const fallback = await getManifest(registry, DST, referrersTag(oldManifest));
      await deleteManifest(registry, oldManifest);
      for (const artifact of oldArtifacts) await deleteManifest(registry, artifact);
      if (fallback.status === 200 && fallback.digest) {
        await deleteManifest(registry, fallback.digest);
      }
      await runTool("docker-registry", ["garbage-collect", `${registry.dir}/config.yml`], 60_000);
      assert.equal(await blobStatus(registry, table), 200, "the reused table was collected");
      assert.equal(await blobStatus(registry, pack.digest), 200, "its pack was collected");

      // What a mount does to find and check the tables: every layer verified.
      const layers: {
        kind: string;
        digest: string;
        sizeBytes: number;
        layerIndex: number;
        chunkTable?: ChunkTableSpec;
      }[] = now.layers.map((l, i) => ({
        kind: "registry",
        digest: l.digest,
        sizeBytes: l.size,
        layerIndex: i,
      }));
      await attachChunkTables(client, DST, newManifest, layers, {
        requireVerified: true,
        stateDir,
      });
      assert.deepEqual(
        layers.map((l) => l.chunkTable?.bound),
        [true, true],
      );
    } finally {
      await Deno.remove(stateDir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "convert: a reused layer whose stored table fails its digest is neither bound nor listed",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const client = new RegistryClient(registry.host, { plainHttp: true });
    await pushSourceImages(registry);
    const dst = `${registry.host}/${DST}:v1`;
    const first = await convertOk(`${registry.host}/src/app:one`, dst);
    const { manifest: old } = await convertedManifest(registry, first.stdout);
    const reusedLayer = old.layers[0].digest;
    const table = old.layers[0].annotations?.[CHUNK_TABLE_ANNOTATION] ?? "";
    // The registry now serves other bytes (same length) under the table's digest.
    const data = storedBlobPath(registry, table);
    const bytes = await Deno.readFile(data);
    bytes[bytes.length - 2] ^= 1;
    await Deno.writeFile(data, bytes);

    const second = await convertOk(`${registry.host}/src/app:two`, dst);
    assert.match(second.stderr, /layer 1\/2: already converted/, describe(second));
    assert.match(second.stderr, /layer 1\/2: its chunk table is not used/, describe(second));
    await assertReusedWithoutTable(registry, client, second.stdout, reusedLayer);
  },
});

Deno.test({
  name: "convert into an OCI layout: a reused layer keeps its table only while it checks",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    await pushSourceImages(registry);
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-reused-table-layout-" });
    try {
      const layout = `${work}/out`;
      const blob = (digest: string) => `${layout}/blobs/sha256/${digest.slice("sha256:".length)}`;
      const tagged = async () => {
        const index = JSON.parse(await Deno.readTextFile(`${layout}/index.json`));
        return JSON.parse(
          await Deno.readTextFile(blob(index.manifests[0].digest)),
        ) as ImageManifest;
      };
      const convert = (image: string) =>
        convertOk(`${registry.host}/src/app:${image}`, `oci:${layout}:t`);
      await convert("one");
      const table = (await tagged()).layers[0].annotations?.[CHUNK_TABLE_ANNOTATION] ?? "";
      assert.match(table, /^sha256:[0-9a-f]{64}$/);

      const second = await convert("two");
      assert.match(second.stderr, /layer 1\/2: already converted/, describe(second));
      assert.equal((await tagged()).layers[0].annotations?.[CHUNK_TABLE_ANNOTATION], table);

      // The layout's table blob no longer matches its name: not bound to the reused layer.
      const bytes = await Deno.readFile(blob(table));
      bytes[bytes.length - 2] ^= 1;
      await Deno.writeFile(blob(table), bytes);
      const third = await convert("two");
      assert.match(third.stderr, /layer 2\/2: already converted/, describe(third));
      assert.match(third.stderr, /layer 1\/2: its chunk table is not used/, describe(third));
      const now = await tagged();
      assert.equal(now.layers[0].annotations?.[CHUNK_TABLE_ANNOTATION], undefined);
      assert.match(now.layers[1].annotations?.[CHUNK_TABLE_ANNOTATION] ?? "", /^sha256:/);
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "convert: a reused layer whose table the registry lost is reused without one, no note",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const client = new RegistryClient(registry.host, { plainHttp: true });
    await pushSourceImages(registry);
    const first = await convertOk(`${registry.host}/src/app:one`, `${registry.host}/${DST}:v1`);
    const { manifest: old } = await convertedManifest(registry, first.stdout);
    const reusedLayer = old.layers[0].digest;
    const table = old.layers[0].annotations?.[CHUNK_TABLE_ANNOTATION] ?? "";
    assert.match(table, /^sha256:[0-9a-f]{64}$/);
    await deleteBlob(registry, table);
    assert.equal(await blobStatus(registry, table), 404);

    await using proxy = await startFaultProxy(registry.host, []);
    const second = await convertOk(`${registry.host}/src/app:two`, `${proxy.host}/${DST}:v1`);
    assert.match(second.stderr, /layer 1\/2: already converted/, describe(second));
    assert.doesNotMatch(second.stderr, /chunk table is not used/, describe(second));
    // One GET that answers 404 is all it costs (a HEAD answered the same before).
    assert.deepEqual(blobRequests(proxy, table), ["GET"]);
    await assertReusedWithoutTable(registry, client, second.stdout, reusedLayer);
  },
});

Deno.test({
  name: "convert: an image holding a layer twice lists its table and pack once",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const client = new RegistryClient(registry.host, { plainHttp: true });
    await pushSourceImages(registry);
    /** The converted manifest, and the table entries per distinct layer of its artifact. */
    const check = async (stdout: string) => {
      const { digest, manifest } = await convertedManifest(registry, stdout);
      assert.equal(manifest.layers.length, 3);
      assert.equal(manifest.layers[0].digest, manifest.layers[1].digest);
      const table = manifest.layers[0].annotations?.[CHUNK_TABLE_ANNOTATION] ?? "";
      assert.match(table, /^sha256:[0-9a-f]{64}$/);
      assert.equal(manifest.layers[1].annotations?.[CHUNK_TABLE_ANNOTATION], table);
      const { entries } = await artifactEntries(registry, client, digest);
      const twice = entriesOf(entries, manifest.layers[0].digest);
      assert.deepEqual(twice.table.map((e) => e.digest), [table], JSON.stringify(entries));
      assert.equal(twice.pack.length, 1, JSON.stringify(entries));
      assert.equal(entriesOf(entries, manifest.layers[2].digest).table.length, 1);
      assert.equal(entries.length, 4, JSON.stringify(entries));
      return table;
    };

    // A new build: the layer's second place is converted again (over the layer itself: what
    // is below can change a layer's directories) and comes out the same, one blob.
    const fresh = await convertOk(
      `${registry.host}/src/app:twice`,
      `${registry.host}/${DST}:fresh`,
    );
    assert.match(fresh.stderr, /3 EROFS layer\(s\), 3 converted/, describe(fresh));
    await check(fresh.stdout);

    // Reused from the image at the tag: its table is read back once for both places.
    await convertOk(`${registry.host}/src/app:one`, `${registry.host}/${DST}:v1`);
    await using proxy = await startFaultProxy(registry.host, []);
    const second = await convertOk(`${registry.host}/src/app:twice`, `${proxy.host}/${DST}:v1`);
    assert.match(second.stderr, /layer 1\/3: already converted/, describe(second));
    assert.doesNotMatch(second.stderr, /layer 2\/3: already converted/, describe(second));
    assert.doesNotMatch(second.stderr, /chunk table is not used/, describe(second));
    const table = await check(second.stdout);
    // Read back once for the reused place; the converted one finds it there (HEAD), no upload.
    assert.deepEqual(blobRequests(proxy, table), ["GET", "HEAD"]);
  },
});
