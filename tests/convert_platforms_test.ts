/**
 * `erofs-oci convert --all-platforms`: a two-platform index (the umoci image under two
 * configs, copied with `skopeo copy --all`) becomes an index of two EROFS manifests whose
 * layers are converted once and shared; each platform mounts equal to `umoci unpack`.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { command, path, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { getManifest } from "./_support/oci_raw.ts";
import { runOk, treeListing } from "./_support/erofs_tree.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { makeUmociImage, type UmociImage } from "./_support/umoci_image.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  command("umoci"),
  command("skopeo"),
  command("python3"),
);
const LONG = { timeoutMs: 120_000 };
const PLATFORMS = [["linux", "amd64"], ["linux", "arm64"]];

function writeBlob(layout: string, text: string): { digest: string; size: number } {
  const bytes = new TextEncoder().encode(text);
  const hex = createHash("sha256").update(bytes).digest("hex");
  Deno.writeFileSync(`${layout}/blobs/sha256/${hex}`, bytes);
  return { digest: `sha256:${hex}`, size: bytes.byteLength };
}

/** One entry of an index addIndex makes: what its config, manifest and descriptor get. */
interface IndexEntry {
  platform: Record<string, string>;
  manifestAnnotations?: Record<string, string>;
  annotations?: Record<string, string>;
}

/**
 * Adds tag `tag` to the image's layout: an index of the image's manifest, once per entry, each
 * under a config naming the entry's platform (`annotations`: the index's own).
 */
function addIndex(
  image: UmociImage,
  tag: string,
  entries: IndexEntry[],
  annotations?: Record<string, string>,
): string[] {
  const layoutIndex = JSON.parse(Deno.readTextFileSync(`${image.layout}/index.json`));
  const entry = layoutIndex.manifests.find((m: { annotations?: Record<string, string> }) =>
    m.annotations?.["org.opencontainers.image.ref.name"] === image.tag
  );
  const read = (digest: string) =>
    JSON.parse(Deno.readTextFileSync(`${image.layout}/blobs/sha256/${digest.slice(7)}`));
  const manifest = read(entry.digest);
  const config = read(manifest.config.digest);
  const manifests = entries.map(({ platform, manifestAnnotations, annotations }) => {
    const configBlob = writeBlob(image.layout, JSON.stringify({ ...config, ...platform }));
    const manifestBlob = writeBlob(
      image.layout,
      JSON.stringify({
        ...manifest,
        config: { ...manifest.config, ...configBlob },
        ...(manifestAnnotations ? { annotations: manifestAnnotations } : {}),
      }),
    );
    return {
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      ...manifestBlob,
      platform,
      ...(annotations ? { annotations } : {}),
    };
  });
  const index = writeBlob(
    image.layout,
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests,
      ...(annotations ? { annotations } : {}),
    }),
  );
  layoutIndex.manifests.push({
    mediaType: "application/vnd.oci.image.index.v1+json",
    ...index,
    annotations: { "org.opencontainers.image.ref.name": tag },
  });
  Deno.writeTextFileSync(`${image.layout}/index.json`, JSON.stringify(layoutIndex));
  return manifests.map((m) => m.digest);
}

interface Doc {
  mediaType: string;
  manifests?: { digest: string; platform?: { architecture: string } }[];
  layers?: { digest: string; mediaType: string }[];
}

Deno.test({
  name:
    "convert --all-platforms: an index of two platforms → an index of EROFS manifests sharing layers",
  ignore,
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-platforms-" });
    await using registry = await startRegistry({ auth: "none" });
    const sandbox = await mountSandbox();
    try {
      const image = await makeUmociImage(work);
      addIndex(
        image,
        "multi",
        PLATFORMS.map(([os, architecture]) => ({ platform: { os, architecture } })),
      );
      await runOk("skopeo", [
        "copy",
        "--quiet",
        "--all",
        "--dest-tls-verify=false",
        `oci:${image.layout}:multi`,
        `docker://${registry.host}/src/multi:v1`,
      ]);
      const dst = `${registry.host}/dst/multi:v1`;
      const converted = await runCli(
        ["convert", "--all-platforms", `${registry.host}/src/multi:v1`, dst],
        LONG,
      );
      assertSuccess(converted);
      // The second platform has the same layers: converted once, then reused.
      assert.match(
        converted.stderr,
        /linux\/arm64: 3 EROFS layer\(s\), 0 converted/,
        describe(converted),
      );

      const top = (await getManifest(registry, "dst/multi", "v1")).json as Doc;
      assert.equal(top.mediaType, "application/vnd.oci.image.index.v1+json");
      assert.deepEqual(top.manifests!.map((m) => m.platform?.architecture), ["amd64", "arm64"]);
      const layerSets = [];
      for (const entry of top.manifests!) {
        const child = (await getManifest(registry, "dst/multi", entry.digest)).json as Doc;
        assert.ok(child.layers!.every((l) => l.mediaType === "application/vnd.erofs"));
        layerSets.push(child.layers!.map((l) => l.digest));
      }
      assert.deepEqual(layerSets[0], layerSets[1]);
      assert.equal(layerSets[0].length, 3);

      const mounted = await runCli(
        ["mount", "--backend", "fuse", "--platform", "linux/arm64", dst, sandbox.target],
        { env: sandbox.env, timeoutMs: 60_000 },
      );
      assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
      const drop = (lines: string[]) =>
        lines.filter((l) => !l.startsWith(".\t")).map((l) => {
          const f = l.split("\t");
          if (f[1] === "d") f[4] = "-";
          return f.join("\t");
        });
      assert.deepEqual(
        drop(await treeListing(sandbox.target)),
        drop(await treeListing(image.rootfs)),
      );
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));

      // The same from the OCI layout into another layout.
      const fromLayout = await runCli(
        ["convert", "--all-platforms", `oci:${image.layout}:multi`, `oci:${work}/out:multi`],
        LONG,
      );
      assertSuccess(fromLayout);
      for (const platform of ["linux/amd64", "linux/arm64"]) {
        const inspected = await runCli([
          "inspect",
          `oci:${work}/out:multi`,
          "--platform",
          platform,
          "--json",
        ]);
        assertSuccess(inspected);
        assert.equal(JSON.parse(inspected.stdout).layers.length, 3, describe(inspected));
      }
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "convert --all-platforms: entries sharing os/arch (Windows os.version) each kept, with " +
    "their platform fields and the index's, entries' and manifests' annotations",
  ignore: requires(command("umoci"), command("python3")),
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-versions-" });
    try {
      const image = await makeUmociImage(work);
      const versions = ["10.0.17763.1", "10.0.20348.1"];
      const sources = addIndex(
        image,
        "win",
        versions.map((version) => ({
          platform: { os: "windows", architecture: "amd64", "os.version": version },
          manifestAnnotations: {
            "org.example.manifest": version,
            "org.opencontainers.image.base.digest": `sha256:${"1".repeat(64)}`,
          },
          annotations: { "org.example.entry": version },
        })),
        { "org.example.index": "yes" },
      );

      const converted = await runCli(
        ["convert", "--all-platforms", `oci:${image.layout}:win`, `oci:${work}/out:win`],
        LONG,
      );
      assertSuccess(converted);
      for (const version of versions) {
        assert.match(converted.stderr, new RegExp(`windows/amd64 \\(${version}\\): 3 EROFS`));
      }
      const out = JSON.parse(Deno.readTextFileSync(`${work}/out/index.json`));
      const blob = (digest: string) =>
        JSON.parse(Deno.readTextFileSync(`${work}/out/blobs/sha256/${digest.slice(7)}`));
      const top = blob(out.manifests[0].digest);
      assert.equal(top.mediaType, "application/vnd.oci.image.index.v1+json", "an index, not one");
      assert.deepEqual(top.annotations, { "org.example.index": "yes" });
      assert.deepEqual(
        top.manifests.map((m: { platform: unknown; annotations: unknown }) => [
          m.platform,
          m.annotations,
        ]),
        versions.map((version) => [
          { os: "windows", architecture: "amd64", "os.version": version },
          { "org.example.entry": version },
        ]),
      );
      for (const [i, version] of versions.entries()) {
        const child = blob(top.manifests[i].digest);
        assert.equal(child.annotations["org.example.manifest"], version);
        assert.equal(child.annotations["org.opencontainers.image.base.digest"], undefined);
        assert.equal(child.annotations["io.github.erofs-oci.source.manifest"], sources[i]);
      }
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "convert --all-platforms: one manifest listed under two platforms is converted once, " +
    "listed under both",
  ignore: requires(command("umoci"), command("python3")),
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-shared-" });
    try {
      const image = await makeUmociImage(work);
      const layoutIndex = JSON.parse(Deno.readTextFileSync(`${image.layout}/index.json`));
      const source = layoutIndex.manifests.find((m: { annotations?: Record<string, string> }) =>
        m.annotations?.["org.opencontainers.image.ref.name"] === image.tag
      );
      const platforms = PLATFORMS.map(([os, architecture]) => ({ os, architecture }));
      const index = writeBlob(
        image.layout,
        JSON.stringify({
          schemaVersion: 2,
          mediaType: "application/vnd.oci.image.index.v1+json",
          manifests: platforms.map((platform) => ({
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            digest: source.digest,
            size: source.size,
            platform,
          })),
        }),
      );
      layoutIndex.manifests.push({
        mediaType: "application/vnd.oci.image.index.v1+json",
        ...index,
        annotations: { "org.opencontainers.image.ref.name": "both" },
      });
      Deno.writeTextFileSync(`${image.layout}/index.json`, JSON.stringify(layoutIndex));

      const converted = await runCli(
        ["convert", "--all-platforms", `oci:${image.layout}:both`, `oci:${work}/out:both`],
        LONG,
      );
      assertSuccess(converted);
      const out = JSON.parse(Deno.readTextFileSync(`${work}/out/index.json`));
      const top = JSON.parse(
        Deno.readTextFileSync(`${work}/out/blobs/sha256/${out.manifests[0].digest.slice(7)}`),
      );
      // It kept the first platform's entry only: arm64 was gone without a word.
      assert.deepEqual(top.manifests.map((m: { platform: unknown }) => m.platform), platforms);
      assert.equal(top.manifests[0].digest, top.manifests[1].digest, "one converted manifest");
      assert.equal(
        converted.stderr.match(/platform linux\//g)?.length,
        1,
        `converted once: ${converted.stderr}`,
      );
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
