/**
 * Two artifacts pushed for one image at once by the fallback tag (docker-registry 2.8 has no
 * referrers API): each pusher reads the tag's list, adds its entry and writes it back, so one
 * wrote its list over the other's and an entry was lost while both said "pushed". The pusher
 * looks at the tag again before writing and after (lib/oci/referrers.ts pushReferrer).
 */
import assert from "node:assert/strict";
import { command, FIXTURES, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, runCli, startCli, stopCli } from "./_support/cli.ts";
import { HoldPoint } from "./_support/hold.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { fetchManifest } from "../lib/oci/resolve.ts";
import { listReferrers, pushArtifact, referrersTag } from "../lib/oci/referrers.ts";
import { pushTraceArtifact } from "../lib/trace/artifact.ts";
import { buildTrace, encodeTrace, TRACE_ARTIFACT_TYPE } from "../lib/trace/format.ts";
import { CHUNK_TABLES_ARTIFACT_TYPE } from "../lib/verify/chunk_table.ts";
import { OCI_INDEX, OCI_MANIFEST } from "../lib/oci/media_types.ts";
import { layersWithPushedIndex } from "../lib/mount/tar_index_artifact.ts";

Deno.test({
  name: "referrers tag: a table and a trace pushed at once for one image are both listed",
  ignore: requires(command("docker-registry")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-referrers-race-" });
    await using registry = await startRegistry({ auth: "none" });
    const { client, pushed, subject, trace } = await tracedImage(registry, registry.host);
    using hold = new HoldPoint("referrers-tag-write", `${work}/hold`);
    let tables: ReturnType<typeof startCli> | undefined;
    try {
      // The table's pusher has read the tag's (empty) list and is about to write it…
      tables = startCli(
        ["checksums", `${registry.host}/race/app:v1`, "--push", "--plain-http"],
        hold.env,
      );
      await hold.reached("checksums at the tag write");
      // …when a trace is pushed for the same image.
      assert.equal(
        (await pushTraceArtifact(client, "race/app", subject, trace(0))).via,
        "fallback-tag",
      );
      hold.release();
      assertSuccess(await tables.result);
      tables = undefined;

      const listed = async (type: string) =>
        (await listReferrers(client, "race/app", pushed.manifestDigest, type)).length;
      assert.equal(await listed(CHUNK_TABLES_ARTIFACT_TYPE), 1, "the table is listed");
      assert.equal(await listed(TRACE_ARTIFACT_TYPE), 1, "the trace is still listed");
      assertSuccess(await runCli(["inspect", `${registry.host}/race/app:v1`, "--plain-http"]));
    } finally {
      await stopCli(tables);
      client.close();
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "referrers tag: index --push of two layers of one image at once keeps both layers' indexes",
  ignore: requires(command("docker-registry")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-referrers-race-" });
    await using registry = await startRegistry({ auth: "none" });
    const client = new RegistryClient(registry.host, { plainHttp: true });
    using hold = new HoldPoint("referrers-tag-write", `${work}/hold`);
    let first: ReturnType<typeof startCli> | undefined;
    try {
      const gzip = async (bytes: Uint8Array<ArrayBuffer>) =>
        new Uint8Array(
          await new Response(new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip")))
            .arrayBuffer(),
        );
      const GZ = "application/vnd.oci.image.layer.v1.tar+gzip";
      const pushed = await pushImage(registry, "race/tars", "v1", [
        { bytes: await Deno.readFile(`${FIXTURES}/layer.tar.gz`), mediaType: GZ },
        { bytes: await gzip(await Deno.readFile(`${FIXTURES}/layer1.tar`)), mediaType: GZ },
      ]);
      const ref = `${registry.host}/race/tars:v1`;
      const index = (
        layer: number,
      ) => ["index", ref, "--layer", String(layer), "--push", "--plain-http"];
      // Layer 0's index: its list read (no index yet), about to be written…
      first = startCli(index(0), hold.env);
      await hold.reached("index --layer 0 at the tag write");
      // …when layer 1's is pushed, from the same empty list.
      assertSuccess(await runCli(index(1), { timeoutMs: 60_000 }));
      hold.release();
      assertSuccess(await first.result);
      first = undefined;

      const indexed = await layersWithPushedIndex(client, "race/tars", pushed.manifestDigest);
      assert.deepEqual([...indexed].sort(), pushed.layers.map((l) => l.digest).sort());
    } finally {
      await stopCli(first);
      client.close();
      await Deno.remove(work, { recursive: true });
    }
  },
});

/** The image of the tests below: basic.erofs pushed, its manifest as a subject, a trace of it. */
async function tracedImage(registry: Awaited<ReturnType<typeof startRegistry>>, host: string) {
  const client = new RegistryClient(host, { plainHttp: true });
  const image = await Deno.readFile(`${FIXTURES}/basic.erofs`);
  const pushed = await pushImage(registry, "race/app", "v1", [
    { bytes: image, mediaType: EROFS_MEDIA_TYPE },
  ]);
  const manifest = await fetchManifest(client, "race/app", pushed.manifestDigest);
  const subject = {
    digest: pushed.manifestDigest,
    size: manifest.bytes.byteLength,
    mediaType: OCI_MANIFEST,
  };
  const trace = (offset: number) =>
    encodeTrace(buildTrace([{
      layer: { digest: pushed.layers[0].digest, size: image.byteLength },
      accesses: [{ offset, length: 4096, seq: 0 }],
    }]));
  return { client, pushed, subject, trace };
}

Deno.test({
  name:
    "referrers tag: a list read before a trace's write and written after it brings the old trace back; the new one is written again",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const { client, pushed, subject, trace } = await tracedImage(registry, registry.host);
    const tag = `http://${registry.host}/v2/race/app/manifests/${
      referrersTag(pushed.manifestDigest)
    }`;
    const getTag = async () =>
      new Uint8Array(await (await fetch(tag, { headers: { accept: OCI_INDEX } })).arrayBuffer());
    const putTag = async (body: Uint8Array<ArrayBuffer>) => {
      const put = await fetch(tag, { method: "PUT", body, headers: { "content-type": OCI_INDEX } });
      await put.body?.cancel();
      assert.equal(put.status, 201);
    };
    const listed = (bytes: Uint8Array) =>
      (JSON.parse(new TextDecoder().decode(bytes)).manifests as { digest: string }[]).map((d) =>
        d.digest
      );
    try {
      const old = await pushTraceArtifact(client, "race/app", subject, trace(0));
      const withOld = await getTag();
      // Another kind of artifact pushed from the list holding the old trace: its write of
      // [old trace, other] is late, and lands just after the new trace's.
      await pushArtifact(client, "race/app", subject, "application/x-other-kind", []);
      const late = await getTag();
      await putTag(withOld);
      let watching = true;
      const lateWrite = (async () => {
        while (watching) {
          const now = listed(await getTag());
          if (now.length === 1 && now[0] !== old.digest) return await putTag(late);
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      })();
      const fresh = await pushTraceArtifact(client, "race/app", subject, trace(4096));
      watching = false;
      await lateWrite;
      const traces = await listReferrers(
        client,
        "race/app",
        pushed.manifestDigest,
        TRACE_ARTIFACT_TYPE,
      );
      assert.deepEqual(traces.map((t) => t.digest), [fresh.digest], "the new trace, not the old");
    } finally {
      client.close();
    }
  },
});

Deno.test({
  name:
    "referrers tag: a front end answering weak ETags (never matching If-Match) does not fail the next push",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    // As nginx's gzip or a CDN does: W/"…", and If-Match compared strongly (RFC 9110).
    const preconditions: string[] = [];
    const front = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
      const url = new URL(request.url);
      const target = `http://${registry.host}${url.pathname}${url.search}`;
      const ifMatch = request.headers.get("if-match");
      if (request.method === "PUT" && ifMatch !== null) {
        preconditions.push(ifMatch);
        if (ifMatch.startsWith("W/")) return new Response("precondition failed", { status: 412 });
      }
      const headers = new Headers(request.headers);
      headers.delete("host");
      const reply = await fetch(target, {
        method: request.method,
        headers,
        body: request.body,
        redirect: "manual",
      });
      const out = new Headers(reply.headers);
      const etag = out.get("etag");
      if (etag && !etag.startsWith("W/")) out.set("etag", `W/${etag}`);
      const location = out.get("location");
      if (location) out.set("location", location.replace(registry.host, host));
      return new Response(reply.body, { status: reply.status, headers: out });
    });
    const host = `127.0.0.1:${front.addr.port}`;
    const { client, pushed, subject, trace } = await tracedImage(registry, host);
    try {
      await pushTraceArtifact(client, "race/app", subject, trace(0));
      const tables = await pushArtifact(
        client,
        "race/app",
        subject,
        "application/x-other-kind",
        [],
      );
      assert.equal(tables.via, "fallback-tag");
      assert.deepEqual(preconditions, [], "no weak ETag sent as If-Match");
      const listed = await listReferrers(
        client,
        "race/app",
        pushed.manifestDigest,
        "application/x-other-kind",
      );
      assert.equal(listed.length, 1);
    } finally {
      client.close();
      await front.shutdown();
    }
  },
});
