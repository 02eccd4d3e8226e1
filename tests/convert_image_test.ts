/**
 * `erofs-oci convert` and `build IMAGE` against real producers: an image made by umoci (plus a
 * GNU tar layer with an opaque directory), copied into a real registry by skopeo as Docker v2s2
 * (tar+gzip) and as OCI tar+zstd. A converted image mounted with `erofs-oci mount` (FUSE) must
 * equal `umoci unpack` of the source, deletions included; every EROFS layer passes fsck.erofs
 * 1.9.3; the config's diff_ids and history match the layers.
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import type { TestRegistry } from "./_support/registry.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { getBlob, getManifest } from "./_support/oci_raw.ts";
import { fsckImage, treeListing, withMountedImage } from "./_support/erofs_tree.ts";
import { mountSandbox } from "./_support/mounts.ts";
import {
  comparableListing,
  copyToRegistry,
  makeUmociImage,
  type UmociImage,
  withUmociRegistry,
} from "./_support/umoci_image.ts";

const ignore = requires(
  root(),
  path("/dev/fuse"),
  command("docker-registry"),
  command("umoci"),
  command("skopeo"),
  command("python3"),
  path(`${PEER_BIN}/fsck.erofs`, "fsck.erofs 1.9.3"),
);
const LONG = { timeoutMs: 120_000 };
const EROFS = "application/vnd.erofs";
const SOURCE_ANNOTATION = "io.github.erofs-oci.source.layers";

/** Mounts `ref` with the CLI (FUSE), returns its listing, always unmounts. */
async function mountedListing(ref: string): Promise<string[]> {
  const sandbox = await mountSandbox();
  try {
    const mounted = await runCli(["mount", "--backend", "fuse", ref, sandbox.target], {
      env: sandbox.env,
      timeoutMs: 60_000,
    });
    assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
    const listing = await treeListing(sandbox.target);
    const unmounted = await runCli(["umount", sandbox.target], { env: sandbox.env });
    assertSuccess(unmounted);
    return listing;
  } finally {
    await sandbox.cleanup();
  }
}

/** The image `ref` mounted with the CLI has the tree of `umoci unpack`. */
async function assertMountEqualsUnpack(ref: string, image: UmociImage): Promise<void> {
  assert.deepEqual(
    comparableListing(await mountedListing(ref)),
    comparableListing(await treeListing(image.rootfs)),
  );
}

interface PushedManifest {
  layers: {
    mediaType: string;
    digest: string;
    size: number;
    annotations?: Record<string, string>;
  }[];
  config: { digest: string };
}

/** Checks the pushed image's layers (EROFS, fsck-clean, annotated) and config; returns them. */
async function checkPushed(
  registry: TestRegistry,
  repository: string,
  tag: string,
  work: string,
  sourceLayers: number,
): Promise<PushedManifest> {
  const got = await getManifest(registry, repository, tag);
  assert.equal(got.status, 200, JSON.stringify(got.json));
  const manifest = got.json as PushedManifest;
  assert.equal(manifest.layers.length, sourceLayers);
  for (const layer of manifest.layers) {
    assert.equal(layer.mediaType, EROFS);
    assert.match(layer.annotations?.[SOURCE_ANNOTATION] ?? "", /^sha256:[0-9a-f]{64}/);
    const file = `${work}/${layer.digest.slice(7, 19)}.erofs`;
    await Deno.writeFile(file, await getBlob(registry, repository, layer.digest));
    await fsckImage(file, `${file}.extracted`);
  }
  const config = JSON.parse(
    new TextDecoder().decode(await getBlob(registry, repository, manifest.config.digest)),
  );
  assert.deepEqual(config.rootfs, {
    type: "layers",
    diff_ids: manifest.layers.map((l) => l.digest),
  });
  const layered = (config.history ?? []).filter((h: { empty_layer?: boolean }) => !h.empty_layer);
  assert.equal(layered.length, manifest.layers.length, JSON.stringify(config.history));
  return manifest;
}

Deno.test({
  name: "convert: umoci image as Docker v2s2 tar+gzip → EROFS layers; mount equals umoci unpack",
  ignore,
  fn: () =>
    withUmociRegistry("erofs-oci-convert-test-", async (image, registry, work) => {
      await copyToRegistry(image, registry, "src/app:v2s2", ["--format", "v2s2"]);
      const source = await getManifest(registry, "src/app", "v2s2");
      assert.match(source.mediaType, /docker\.distribution\.manifest\.v2/);

      const dst = `${registry.host}/dst/app:erofs`;
      const first = await runCli(["convert", `${registry.host}/src/app:v2s2`, dst], LONG);
      assertSuccess(first);
      assert.match(first.stdout, new RegExp(`^${dst}@sha256:[0-9a-f]{64}\\n$`));
      const manifest = await checkPushed(registry, "dst/app", "erofs", work, 3);
      const sources = (source.json as PushedManifest).layers.map((l) => l.digest);
      assert.deepEqual(manifest.layers.map((l) => l.annotations?.[SOURCE_ANNOTATION]), sources);

      await assertMountEqualsUnpack(dst, image);

      // Converted layers are found by their source digest and not converted again.
      const again = await runCli(["convert", `${registry.host}/src/app:v2s2`, dst], LONG);
      assertSuccess(again);
      assert.equal(again.stdout, first.stdout, describe(again));
      assert.equal((again.stderr.match(/reused/g) ?? []).length, 4, describe(again));
    }),
});

Deno.test({
  name:
    "convert: layers converted for another tag are reused; the new layer gets their directories",
  ignore,
  fn: () =>
    withUmociRegistry("erofs-oci-convert-test-", async (image, registry, work) => {
      const src = `${registry.host}/src/app`;
      const dst = `${registry.host}/dst/app:latest`;
      await copyToRegistry(image, registry, "src/app:two", [], image.twoLayerTag);
      await copyToRegistry(image, registry, "src/app:three", []);
      assertSuccess(await runCli(["convert", `${src}:two`, dst], LONG));
      const next = await runCli(["convert", `${src}:three`, dst], LONG);
      assertSuccess(next);
      assert.match(next.stderr, /layer 1\/3: already converted/, describe(next));
      assert.match(next.stderr, /layer 2\/3: already converted/, describe(next));
      assert.match(next.stderr, /3 EROFS layer\(s\), 1 converted/, describe(next));
      await checkPushed(registry, "dst/app", "latest", work, 3);
      await assertMountEqualsUnpack(dst, image);
    }),
});

Deno.test({
  name:
    "convert --flatten: OCI tar+zstd from a registry → one layer in an OCI layout; mount equals umoci unpack",
  ignore,
  fn: () =>
    withUmociRegistry("erofs-oci-convert-test-", async (image, registry, work) => {
      await copyToRegistry(image, registry, "src/app:zstd", [
        "--format",
        "oci",
        "--dest-compress-format",
        "zstd",
      ]);
      const source = await getManifest(registry, "src/app", "zstd");
      for (const layer of (source.json as PushedManifest).layers) {
        assert.equal(layer.mediaType, "application/vnd.oci.image.layer.v1.tar+zstd");
      }
      const dst = `oci:${work}/out:flat`;
      const converted = await runCli(
        ["convert", "--flatten", `${registry.host}/src/app:zstd`, dst],
        LONG,
      );
      assertSuccess(converted);
      const inspected = await runCli(["inspect", dst, "--json"]);
      assertSuccess(inspected);
      const layers = JSON.parse(inspected.stdout).layers;
      assert.equal(layers.length, 1, inspected.stdout);
      await fsckImage(`${work}/out/blobs/sha256/${layers[0].digest.slice(7)}`);
      await assertMountEqualsUnpack(dst, image);
    }),
});

Deno.test({
  name:
    "build IMAGE: the merged tree of an OCI layout equals umoci unpack; --layer 2 keeps whiteouts",
  ignore,
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-test-" });
    try {
      const image = await makeUmociImage(work);
      const out = `${work}/merged.erofs`;
      const built = await runCli(
        ["build", `oci:${image.layout}:${image.tag}`, "-o", out, "--timestamp", "0"],
        LONG,
      );
      assertSuccess(built);
      await fsckImage(out, `${work}/merged`);
      assert.deepEqual(
        comparableListing(await treeListing(`${work}/merged`)),
        comparableListing(await treeListing(image.rootfs)),
      );
      // Its summary counts the merged tree's entries (the root too, as for a directory): it
      // counted every layer's members, whiteouts and replaced files included.
      const found = await new Deno.Command("find", { args: [`${work}/merged`], stdout: "piped" })
        .output();
      const entries = new TextDecoder().decode(found.stdout).trim().split("\n").length;
      assert.match(
        built.stderr,
        new RegExp(`: [0-9.]+ [KM]iB, ${entries} entries, `),
        built.stderr,
      );

      const top = `${work}/top.erofs`;
      assertSuccess(
        await runCli(["build", `oci:${image.layout}:${image.tag}`, "--layer", "2", "-o", top]),
      );
      await fsckImage(top);
      // A kernel mount: fsck's extraction leaves trusted.* xattrs out.
      const listing = await withMountedImage(top, (dir) => treeListing(dir));
      assert.ok(listing.some((l) => /^d\/five-k\tc\t0000\t.*\t0:0\t/.test(l)), listing.join("\n"));
      // private/ is only implied by the top layer's tar: it keeps the 0700 of the layers below.
      assert.ok(listing.some((l) => /^private\td\t0700\t/.test(l)), listing.join("\n"));
      assert.ok(
        listing.some((l) => /^opq\td\t.*trusted\.overlay\.opaque=b'y'/.test(l)),
        listing.join("\n"),
      );
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
