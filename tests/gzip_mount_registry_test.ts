/**
 * Ordinary tar+gzip images mounted lazily from a real docker-registry (FUSE backend): without an
 * index `mount` says how to make one; after `erofs-oci index IMAGE --push` (stored under the
 * referrers fallback tag: docker-registry 2.8 has no referrers API) a plain `mount` finds it.
 * An image made by umoci and copied by skopeo (3 layers, deletions, an opaque directory)
 * mounts as an overlay equal to `umoci unpack`; an index for another layer is refused.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import {
  getManifest,
  OCI_INDEX,
  OCI_MANIFEST,
  pushImage,
  pushIndex,
  putManifestDescriptor,
  uploadBlob,
} from "./_support/oci_raw.ts";
import { LAYER_ANNOTATION, TAR_INDEX_ARTIFACT_TYPE } from "../lib/mount/tar_index_artifact.ts";
import { treeListing } from "./_support/erofs_tree.ts";
import { manifestOf, mountsBelow, serverPids } from "./_support/mounts.ts";
import {
  expectedTarListing,
  type IndexMountRig,
  mountFuseOk,
  withIndexMountRig,
} from "./_support/index_mounts.ts";
import { comparableListing, copyToRegistry, makeUmociImage } from "./_support/umoci_image.ts";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const LONG = { timeoutMs: 120_000 };
const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  command("python3"),
  path(`${FIXTURES}/big.tar.gz`, "shared fixtures"),
);

function withRig(fn: (rig: IndexMountRig) => Promise<void>): Promise<void> {
  return withIndexMountRig("erofs-oci-gzip-mount-", fn);
}

Deno.test({
  name: "mount tar.gz image: no index → one-line hint; index --push → lazy mount equals the tree",
  ignore,
  fn: () =>
    withRig(async (rig) => {
      const { registry, sandbox, env } = rig;
      const gz = await Deno.readFile(`${FIXTURES}/big.tar.gz`);
      const pushed = await pushImage(registry, "gz/app", "v1", [
        { bytes: gz, mediaType: GZIP_LAYER },
      ]);
      const ref = `${registry.host}/gz/app:v1`;
      const none = await runCli(["mount", "--backend", "fuse", ref, sandbox.target], { env });
      assertCliError(none, 1, /layer 0 .* is tar\+gzip and has no index/);
      assert.match(none.stderr, /hint: make one: `erofs-oci index .*gz\/app:v1 --push`/);

      assertSuccess(await runCli(["index", ref, "--push", "--timestamp", "1700000000"], LONG));
      const tag = await getManifest(
        registry,
        "gz/app",
        pushed.manifestDigest.replace(":", "-"),
      );
      assert.equal(tag.status, 200, "the fallback tag holds the referrers index");

      const mounted = await mountFuseOk(rig, [ref]);
      // Its reads are checked against the index's piece digests, which the index's maker chose:
      // said once ("not bound"), not as a layer without any check.
      assert.doesNotMatch(mounted.stderr, /not verified/);
      assert.match(
        mounted.stderr,
        /layer 0: tar index from the registry \(a referrer\), not bound/,
      );
      assert.equal(await manifestOf(sandbox.target), expectedTarListing("big.meta.txt"));
      // The index files stay in the durable state dir for reattach.
      const kept = [...Deno.readDirSync(`${rig.stateEnv.EROFS_OCI_STATE_DIR}/index`)];
      assert.equal(kept.length, 1);
      // The server reads the meta image from its file there as the kernel asks, not from a
      // copy of it in memory (~170 bytes per file of the layer).
      const dir = `${rig.stateEnv.EROFS_OCI_STATE_DIR}/index/${kept[0].name}`;
      const metaDigest = JSON.parse(Deno.readTextFileSync(`${dir}/index.json`)).meta.digest;
      const metaFile = Deno.realPathSync(`${dir}/${metaDigest.replace(":", "-")}`);
      const [server] = serverPids(sandbox.env.EROFS_OCI_RUNTIME_DIR);
      const open = [...Deno.readDirSync(`/proc/${server}/fd`)].map((fd) => {
        try {
          return Deno.readLinkSync(`/proc/${server}/fd/${fd.name}`);
        } catch {
          return "";
        }
      });
      assert(open.includes(metaFile), `server ${server} has ${metaFile} open: ${open.join(" ")}`);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
    }),
});

Deno.test({
  name: "mount --index DIR: an index whose record names another layer size is refused",
  ignore,
  fn: () =>
    withRig(async (rig) => {
      const { registry, sandbox, env, work } = rig;
      const gz = await Deno.readFile(`${FIXTURES}/layer.tar.gz`);
      await pushImage(registry, "gz/one", "v1", [{ bytes: gz, mediaType: GZIP_LAYER }]);
      const ref = `${registry.host}/gz/one:v1`;
      assertSuccess(await runCli(["index", ref, "-o", `${work}/idx`], LONG));
      await mountFuseOk(rig, ["--index", `${work}/idx`, ref]);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));

      for (const entry of Deno.readDirSync(`${work}/idx`)) {
        if (!entry.name.endsWith(".index.json")) continue;
        const file = `${work}/idx/${entry.name}`;
        const record = JSON.parse(Deno.readTextFileSync(file));
        record.layer.size += 1;
        Deno.writeTextFileSync(file, JSON.stringify(record));
      }
      const bad = await runCli(
        ["mount", "--backend", "fuse", ref, sandbox.target, "--index", `${work}/idx`],
        { env, ...LONG },
      );
      assertCliError(bad, 1, /the index was made for layer .* bytes\), not/);
    }),
});

Deno.test({
  name:
    "mount umoci image (skopeo, Docker v2s2 tar+gzip, 3 layers) via index --push equals umoci unpack",
  ignore: ignore || requires(command("umoci"), command("skopeo")),
  fn: () =>
    withRig(async (rig) => {
      const { registry, sandbox, env, work } = rig;
      const image = await makeUmociImage(work);
      await copyToRegistry(image, registry, "src/app:v2s2", ["--format", "v2s2"]);
      const ref = `${registry.host}/src/app:v2s2`;
      const indexed = await runCli(["index", ref, "--push"], LONG);
      assertSuccess(indexed);
      assert.match(indexed.stdout, /pushed index sha256:[0-9a-f]{64} .* \(fallback-tag\)/);
      const mounted = await mountFuseOk(rig, [ref]);
      assert.match(mounted.stdout, /3 layers/);
      assert.match(mounted.stderr, /layers 0–2: tar index from the registry \(a referrer\)/);
      assert.deepEqual(
        comparableListing(await treeListing(sandbox.target)),
        comparableListing(await treeListing(image.rootfs)),
      );
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
      // --require-verified takes none of them.
      assertCliError(
        await runCli(["mount", "--require-verified", ref, `${sandbox.target}`], { env }),
        1,
        /--require-verified: layer 0 is tar\+gzip with no index made on this host/,
      );
    }),
});

Deno.test({
  name: "mount --platform of a multi-platform tar.gz image: the hint's command indexes that one",
  ignore,
  fn: () =>
    withRig(async (rig) => {
      const { registry, sandbox, env } = rig;
      const gz = await Deno.readFile(`${FIXTURES}/big.tar.gz`);
      const other = await Deno.readFile(`${FIXTURES}/layer.tar.gz`);
      await pushIndex(registry, "gz/multi", "v1", [
        {
          platform: { os: "linux", architecture: "amd64" },
          layers: [{ bytes: other, mediaType: GZIP_LAYER }],
        },
        {
          platform: { os: "linux", architecture: "arm64" },
          layers: [{ bytes: gz, mediaType: GZIP_LAYER }],
        },
      ]);
      const ref = `${registry.host}/gz/multi:v1`;
      const mountArm = ["mount", "--backend", "fuse", "--platform", "linux/arm64", ref];
      const none = await runCli([...mountArm, sandbox.target], { env });
      assertCliError(none, 1, /layer 0 .* is tar\+gzip and has no index/);
      const hinted = none.stderr.match(/hint: make one: `erofs-oci (index [^`]*)`/);
      assert(hinted, none.stderr);
      assert.match(hinted[1], /--platform linux\/arm64 --push$/);
      // What the hint says to run makes the index this mount finds.
      assertSuccess(await runCli(hinted[1].split(" "), LONG));
      await mountFuseOk(rig, ["--platform", "linux/arm64", ref]);
      // The tar lists no root: its mtime is the time of indexing, left out.
      const withoutRoot = (listing: string) => listing.replace(/^\.\t[^\n]*\n/, "");
      assert.equal(
        withoutRoot(await manifestOf(sandbox.target)),
        withoutRoot(expectedTarListing("big.meta.txt")),
      );
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
    }),
});

Deno.test({
  name:
    "mount --index-missing: a broken index artifact by referrer is passed over, the layer indexed here",
  ignore,
  fn: () =>
    withRig(async (rig) => {
      const { registry, sandbox, env } = rig;
      const repository = "gz/broken";
      const pushed = await pushImage(registry, repository, "v1", [
        { bytes: await Deno.readFile(`${FIXTURES}/big.tar.gz`), mediaType: GZIP_LAYER },
      ]);
      // Anyone who may push can add one: an index artifact whose record is no record.
      const empty = await uploadBlob(
        registry,
        repository,
        new TextEncoder().encode("{}"),
        "application/vnd.oci.empty.v1+json",
      );
      const record = await uploadBlob(
        registry,
        repository,
        new TextEncoder().encode("not a record"),
        "application/vnd.io.github.erofs-oci.tar-index.record.v1+json",
      );
      const artifact = await putManifestDescriptor(registry, repository, "broken-index", {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        artifactType: TAR_INDEX_ARTIFACT_TYPE,
        config: empty,
        layers: [{
          ...record,
          annotations: { [LAYER_ANNOTATION]: pushed.layers[0].digest },
        }],
        subject: {
          mediaType: OCI_MANIFEST,
          digest: pushed.manifestDigest,
          size: pushed.manifestSize,
        },
      }, OCI_MANIFEST);
      await putManifestDescriptor(registry, repository, pushed.manifestDigest.replace(":", "-"), {
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [{ ...artifact, artifactType: TAR_INDEX_ARTIFACT_TYPE }],
      }, OCI_INDEX);

      // It failed the mount ("index record … is not JSON") though --index-missing asked for
      // an index made here.
      const mounted = await mountFuseOk(rig, [
        `${registry.host}/${repository}:v1`,
        "--index-missing",
      ]);
      assert.match(
        mounted.stderr,
        /the registry's tar index cannot be used .*: indexing here instead/,
      );
      // Below the root (whose implied mtime is the time it was indexed here).
      const belowRoot = (listing: string) => listing.split("\n").slice(1).join("\n");
      assert.equal(
        belowRoot(await manifestOf(sandbox.target)),
        belowRoot(expectedTarListing("big.meta.txt")),
        // Seen once in CI (an empty DIR): what was mounted there, and what the mount said.
        `mounts: ${mountsBelow(sandbox.target).join(", ")}\n${mounted.stderr}\n` +
          sandbox.serverLogs(),
      );
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
      // Without --index-missing the broken index is still an error, not a silent fallback.
      assertCliError(
        await runCli([
          "mount",
          "--backend",
          "fuse",
          `${registry.host}/${repository}:v1`,
          sandbox.target,
        ], {
          env: { ...env, EROFS_OCI_STATE_DIR: `${rig.stateEnv.EROFS_OCI_STATE_DIR}-2` },
        }),
        1,
      );
    }),
});

Deno.test({
  name:
    "a refused index artifact of another image of the same layer leaves the index files other mounts keep",
  ignore,
  fn: () =>
    withRig(async (rig) => {
      const { registry, sandbox, env } = rig;
      const repository = "gz/shared";
      const gz = await Deno.readFile(`${FIXTURES}/big.tar.gz`);
      await pushImage(registry, repository, "v1", [{ bytes: gz, mediaType: GZIP_LAYER }]);
      assertSuccess(await runCli(["index", `${registry.host}/${repository}:v1`, "--push"], LONG));
      await mountFuseOk(rig, [`${registry.host}/${repository}:v1`]);
      const indexDir = `${rig.stateEnv.EROFS_OCI_STATE_DIR}/index`;
      const [kept] = [...Deno.readDirSync(indexDir)].map((e) => `${indexDir}/${e.name}`);
      const keptFiles = [...Deno.readDirSync(kept)].map((e) => e.name).sort();
      const good = JSON.parse(Deno.readTextFileSync(`${kept}/index.json`));

      // The same layer in another image (another platform: another manifest), whose index
      // artifact names the same files with a record that does not fit the layer.
      const other = await pushImage(registry, repository, "arm", [
        { bytes: gz, mediaType: GZIP_LAYER },
      ], { os: "linux", architecture: "arm64" });
      const layer = other.layers[0].digest;
      const annotated = (d: { mediaType: string; digest: string; size: number }) => ({
        ...d,
        annotations: { [LAYER_ANNOTATION]: layer },
      });
      const files = [good.meta, good.zinfo, good.pieces].map((f) => {
        const name = f.digest.replace(":", "-");
        return annotated({
          mediaType: "application/octet-stream",
          digest: f.digest,
          size: Deno.statSync(`${kept}/${name}`).size,
        });
      });
      const record = await uploadBlob(
        registry,
        repository,
        new TextEncoder().encode(JSON.stringify({ ...good, tarBytes: 100 })),
        "application/vnd.io.github.erofs-oci.tar-index.record.v1+json",
      );
      const empty = await uploadBlob(
        registry,
        repository,
        new TextEncoder().encode("{}"),
        "application/vnd.oci.empty.v1+json",
      );
      const artifact = await putManifestDescriptor(registry, repository, "bad-index", {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        artifactType: TAR_INDEX_ARTIFACT_TYPE,
        config: empty,
        layers: [annotated(record), ...files],
        subject: {
          mediaType: OCI_MANIFEST,
          digest: other.manifestDigest,
          size: other.manifestSize,
        },
      }, OCI_MANIFEST);
      await putManifestDescriptor(registry, repository, other.manifestDigest.replace(":", "-"), {
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [{ ...artifact, artifactType: TAR_INDEX_ARTIFACT_TYPE }],
      }, OCI_INDEX);

      await Deno.mkdir(`${sandbox.target}-2`);
      const refused = await runCli([
        "mount",
        "--backend",
        "fuse",
        `${registry.host}/${repository}:arm`,
        `${sandbox.target}-2`,
      ], { env, ...LONG });
      assertCliError(refused, 1, /refers to \d+ bytes of tar, the layer has 100/);
      // It was the whole layer directory: the first mount's reattach found nothing to serve.
      assert.deepEqual([...Deno.readDirSync(kept)].map((e) => e.name).sort(), keptFiles);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
    }),
});
