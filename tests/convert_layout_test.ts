/**
 * `erofs-oci convert` into an OCI layout that already holds other images: their index.json
 * entries stay exactly as written (fields this tool does not model included), the tag's entry is
 * replaced rather than duplicated, and every written blob matches its name.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { command, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import { makeUmociImage } from "./_support/umoci_image.ts";
import { runOk, sparseTar } from "./_support/erofs_tree.ts";
import { writeOciLayout } from "./_support/oci_layout_writer.ts";
import { BASE_B, TAR_LAYER, UPPER, writeOneUpperTwoBases } from "./_support/one_upper_two_bases.ts";

const ignore = requires(command("umoci"));

Deno.test({
  name: "convert into an existing OCI layout: other entries kept verbatim, the tag replaced",
  ignore,
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-layout-" });
    try {
      const image = await makeUmociImage(work);
      const dst = `${work}/dst`;
      await Deno.mkdir(`${dst}/blobs/sha256`, { recursive: true });
      await Deno.writeTextFile(`${dst}/oci-layout`, '{"imageLayoutVersion":"1.0.0"}');
      const other = {
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        digest: `sha256:${"ab".repeat(32)}`,
        size: 123,
        artifactType: "application/vnd.example.sbom",
        annotations: { "org.opencontainers.image.ref.name": "other", "example.keep": "me" },
      };
      await Deno.writeTextFile(
        `${dst}/index.json`,
        JSON.stringify({ schemaVersion: 2, manifests: [other] }),
      );
      for (let round = 0; round < 2; round++) {
        assertSuccess(
          await runCli([
            "convert",
            "--no-reuse",
            `oci:${image.layout}:${image.tag}`,
            `oci:${dst}:new`,
          ], {
            timeoutMs: 120_000,
          }),
        );
      }
      const index = JSON.parse(await Deno.readTextFile(`${dst}/index.json`));
      assert.deepEqual(index.manifests[0], other);
      assert.equal(index.manifests.length, 2);
      assert.equal(index.manifests[1].annotations["org.opencontainers.image.ref.name"], "new");
      for (const entry of Deno.readDirSync(`${dst}/blobs/sha256`)) {
        const bytes = await Deno.readFile(`${dst}/blobs/sha256/${entry.name}`);
        assert.equal(createHash("sha256").update(bytes).digest("hex"), entry.name);
      }
      const inspected = await runCli(["inspect", `oci:${dst}:new`, "--json"]);
      assertSuccess(inspected);
      assert.equal(JSON.parse(inspected.stdout).layers.length, 3);
      // A layout's blobs are hashed whole by a mount: no table is needed, none is "-" (none).
      const table = await runCli(["inspect", `oci:${dst}:new`]);
      assertSuccess(table);
      const rows = table.stdout.split("\n").filter((line) => /^\s*\d+\s+sha256:/.test(line));
      assert.equal(rows.length, 3, table.stdout);
      assert(rows.every((row) => /\swhole\s*$/.test(row)), table.stdout);
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "convert onto its own name (layout or registry) is refused; the source keeps its tag",
  ignore,
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-same-" });
    try {
      const image = await makeUmociImage(work);
      const indexBefore = await Deno.readTextFile(`${image.layout}/index.json`);
      for (
        const [src, dst] of [
          [`oci:${image.layout}:${image.tag}`, `oci:${image.layout}:${image.tag}`],
          // The same layout by another path.
          [
            `oci:${image.layout}:${image.tag}`,
            `oci:${image.layout}/../${image.layout.split("/").pop()}:${image.tag}`,
          ],
          ["127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v1"],
          ["alpine", "docker.io/library/alpine:latest"],
        ]
      ) {
        const result = await runCli(["convert", src, dst]);
        assertCliError(result, 2, /SRC and DST are the same image/);
      }
      assert.equal(await Deno.readTextFile(`${image.layout}/index.json`), indexBefore);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("convert and build: a negative --timestamp or SOURCE_DATE_EPOCH is refused", async () => {
  for (const args of [["--timestamp=-5"], ["--timestamp=-1x"]]) {
    assertCliError(
      await runCli(["convert", "oci:/nonexistent:v1", "oci:/nonexistent2:v1", ...args]),
      2,
      /--timestamp wants whole seconds since 1970 \(0 or more\), not '-/,
    );
    assertCliError(
      await runCli(["build", "/nonexistent", "-o", "/nonexistent.erofs", ...args]),
      2,
      /--timestamp wants whole seconds/,
    );
  }
  assertCliError(
    await runCli(["build", "/nonexistent", "-o", "/nonexistent.erofs"], {
      env: { SOURCE_DATE_EPOCH: "-7" },
    }),
    2,
    /SOURCE_DATE_EPOCH wants whole seconds since 1970/,
  );
});

Deno.test("convert: a layer is reused only over the same layers below (its implied directories and whiteouts depend on them)", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-lower-" });
  try {
    await writeOneUpperTwoBases(work);
    const dst = `oci:${work}/dst:t`;
    assertSuccess(await runCli(["convert", `oci:${work}/a:v1`, dst, "--timestamp", "0"]));
    const layersOf = async (): Promise<string[]> => {
      const inspected = await runCli(["inspect", dst, "--json"]);
      assertSuccess(inspected);
      return JSON.parse(inspected.stdout).layers.map((l: { digest: string }) => l.digest);
    };
    const [, upperOverA] = await layersOf();
    const b = await runCli(["convert", `oci:${work}/b:v1`, dst, "--timestamp", "0"]);
    assertSuccess(b);
    assert.match(b.stderr, /2 EROFS layer\(s\), 2 converted/, b.stderr);
    const [, upperOverB] = await layersOf();
    assert.notEqual(upperOverB, upperOverA, "the upper layer made again over B's base");
    // In one image: the same layer again higher up is not the lower one's conversion either.
    await writeOciLayout(`${work}/c`, [
      { bytes: BASE_B, mediaType: TAR_LAYER },
      { bytes: UPPER, mediaType: TAR_LAYER },
      { bytes: BASE_B, mediaType: TAR_LAYER },
    ]);
    const c = await runCli(["convert", "--no-reuse", `oci:${work}/c:v1`, `oci:${work}/dst-c:t`]);
    assertSuccess(c);
    assert.match(c.stderr, /3 EROFS layer\(s\), 3 converted/, c.stderr);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test({
  name: "convert into an OCI layout: a sparse member's holes stay holes in the written blob",
  ignore: requires(command("tar")),
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-sparse-" });
    try {
      // 1 GiB of holes around 4 bytes: a tar of a few KiB.
      await sparseTar(work, 1 << 30, 512 << 20, new TextEncoder().encode("data"));
      const tar = await Deno.readFile(`${work}/sparse.tar`);
      await writeOciLayout(`${work}/src`, [{ bytes: tar, mediaType: TAR_LAYER }]);
      assertSuccess(
        await runCli(["convert", `oci:${work}/src:v1`, `oci:${work}/dst:v1`], {
          timeoutMs: 120_000,
        }),
      );
      const blobs = [...Deno.readDirSync(`${work}/dst/blobs/sha256`)].map((e) =>
        Deno.statSync(`${work}/dst/blobs/sha256/${e.name}`)
      );
      const image = blobs.reduce((a, b) => a.size > b.size ? a : b);
      assert.ok(image.size > 1 << 30, `the layer image holds the file: ${image.size}`);
      // It was written out whole (1 GiB on disk).
      assert.ok(image.blocks! * 512 < 1 << 20, `${image.blocks! * 512} bytes on disk`);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "convert into a read-only OCI layout: refused before the conversion, the layout unchanged",
  ignore: requires(root(), command("tar")),
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-ro-" });
    const mount = (...args: string[]) => runOk("mount", args);
    try {
      await sparseTar(work, 1 << 20, 0, new TextEncoder().encode("data"));
      const tar = await Deno.readFile(`${work}/sparse.tar`);
      await writeOciLayout(`${work}/src`, [{ bytes: tar, mediaType: TAR_LAYER }]);
      await writeOciLayout(`${work}/dst`, [{ bytes: tar, mediaType: TAR_LAYER }], "old");
      const before = Deno.readTextFileSync(`${work}/dst/index.json`);
      await mount("--bind", `${work}/dst`, `${work}/dst`);
      try {
        await mount("-o", "remount,bind,ro", `${work}/dst`);
        const result = await runCli(["convert", `oci:${work}/src:v1`, `oci:${work}/dst:v1`]);
        assertCliError(result, 1, /cannot write OCI layout \S+\/dst: Read-only file system$/m);
        assert.match(result.stderr, /hint: make it writable, or convert to another destination/);
        // Before: converted the layer first, then failed at its first blob.
        assert.doesNotMatch(result.stderr, /layer 0|converted/i);
      } finally {
        await runOk("umount", [`${work}/dst`]);
      }
      assert.equal(Deno.readTextFileSync(`${work}/dst/index.json`), before);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
