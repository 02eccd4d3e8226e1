/**
 * `erofs-oci convert` / `build IMAGE` refusing bad sources: a layer blob whose bytes do not hash
 * to its digest (still a valid tar.gz: only the gzip header's MTIME changed, so nothing but the
 * digest check can notice) aborts with one error line, pushes nothing, tags nothing and leaves
 * no work files; layers that are not tar are refused before any work.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { startRegistry, storedBlobPath } from "./_support/registry.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import { getManifest } from "./_support/oci_raw.ts";
import {
  copyToRegistry,
  makeUmociImage,
  type UmociImage,
  withUmociRegistry,
} from "./_support/umoci_image.ts";
import { FIXTURES } from "./_support/requires.ts";
import { writeOciLayout } from "./_support/oci_layout_writer.ts";

const ignore = requires(root(), command("docker-registry"), command("umoci"), command("skopeo"));
const LONG = { timeoutMs: 120_000 };

/** Digest of layer `index` of the image's manifest in its OCI layout. */
function layoutLayer(image: UmociImage, tag: string, index: number): string {
  const top = JSON.parse(Deno.readTextFileSync(`${image.layout}/index.json`));
  const entry = top.manifests.find((m: { annotations?: Record<string, string> }) =>
    m.annotations?.["org.opencontainers.image.ref.name"] === tag
  );
  const manifest = JSON.parse(
    Deno.readTextFileSync(`${image.layout}/blobs/sha256/${entry.digest.slice(7)}`),
  );
  return manifest.layers[index].digest;
}

/** Changes the gzip header's MTIME (RFC 1952 §2.3.1, bytes 4-7): same content, other digest. */
function retimeGzip(file: string): void {
  const bytes = Deno.readFileSync(file);
  assert.deepEqual([...bytes.subarray(0, 2)], [0x1f, 0x8b], `${file} is not gzip`);
  bytes[4] ^= 0x5a;
  Deno.writeFileSync(file, bytes);
}

function listDir(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name);
}

Deno.test({
  name: "convert: a registry layer that does not match its digest aborts; nothing pushed or tagged",
  ignore,
  fn: () =>
    withUmociRegistry("erofs-oci-convert-fail-", async (image, registry, work) => {
      await copyToRegistry(image, registry, "src/app:v1");
      const digest = layoutLayer(image, image.tag, 0);
      retimeGzip(storedBlobPath(registry, digest));
      const tmp = `${work}/tmp`;
      Deno.mkdirSync(tmp);

      const result = await runCli(
        ["convert", `${registry.host}/src/app:v1`, `${registry.host}/dst/app:v1`, "--tmpdir", tmp],
        LONG,
      );
      assertCliError(result, 1, new RegExp(`layer ${digest} failed verification`));
      assert.equal((await getManifest(registry, "dst/app", "v1")).status, 404);
      const repositories = `${registry.storageDir}/docker/registry/v2/repositories`;
      assert.ok(!listDir(repositories).includes("dst"), "a blob was pushed for dst/app");
      assert.deepEqual(listDir(tmp), []);

      const built = await runCli(
        ["build", `${registry.host}/src/app:v1`, "-o", `${work}/out.erofs`],
        LONG,
      );
      assertCliError(built, 1, /failed verification/);
      assert.ok(!listDir(work).some((name) => name.includes("out.erofs")));
    }),
});

Deno.test({
  name: "convert: an OCI layout layer that does not match its digest aborts; DST index not written",
  ignore,
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-fail-" });
    try {
      const image = await makeUmociImage(work);
      const digest = layoutLayer(image, image.tag, 2);
      retimeGzip(`${image.layout}/blobs/sha256/${digest.slice(7)}`);
      const result = await runCli(
        ["convert", `oci:${image.layout}:${image.tag}`, `oci:${work}/out:v1`, "--tmpdir", work],
        LONG,
      );
      assertCliError(result, 1, new RegExp(`layer ${digest} failed verification`));
      // The layout this run created holds no tag: it goes (it was left as an empty skeleton).
      assert.ok(!listDir(work).includes("out"), "the new layout removed");
      assert.ok(!listDir(work).some((name) => name.startsWith("erofs-oci-convert-")));

      // A byte of the deflate data changed: the inflater fails before the digest is known,
      // and says which layer (it named none: "gzip: corrupt or truncated data …").
      const blob = `${image.layout}/blobs/sha256/${digest.slice(7)}`;
      retimeGzip(blob); // back to the bytes the digest names
      const bytes = Deno.readFileSync(blob);
      bytes[Math.floor(bytes.length / 2)] ^= 0xff;
      Deno.writeFileSync(blob, bytes);
      for (
        const args of [
          ["convert", `oci:${image.layout}:${image.tag}`, `oci:${work}/out:v1`, "--tmpdir", work],
          ["build", `oci:${image.layout}:${image.tag}`, "-o", `${work}/out.erofs`],
        ]
      ) {
        const corrupt = await runCli(args, LONG);
        assertCliError(corrupt, 1, new RegExp(`layer 3/3 \\(${digest}\\): `));
        assert.ok(!listDir(work).some((name) => name === "out" || name.includes("out.erofs")));
      }
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "convert: EROFS or other non-tar layers are refused with one line before any work",
  ignore: requires(command("docker-registry"), path(`${FIXTURES}/layer1.erofs`)),
  fn: async () => {
    await using registry = await startRegistry({ auth: "none" });
    const image = `${registry.host}/erofs/app:v1`;
    assertSuccess(await runCli(["push", image, `${FIXTURES}/layer1.erofs`]));
    const result = await runCli(["convert", image, `${registry.host}/erofs/again:v1`]);
    assertCliError(result, 1, /already EROFS/);
    // The hint is a command to run, with the image and the layer in it.
    assert.match(
      result.stderr,
      new RegExp(
        `hint: mount it as it is \\(\`erofs-oci mount ${image} DIR\`\\), or take the ` +
          `layer's file with \`erofs-oci pull ${image} --layer 0 -o FILE\``,
      ),
    );
    assert.equal((await getManifest(registry, "erofs/again", "v1")).status, 404);
  },
});

Deno.test({
  name: "convert --max-layer-size: a layer expanding past the limit aborts with one line, no tag",
  ignore: requires(command("umoci")),
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-fail-" });
    try {
      const image = await makeUmociImage(work);
      const src = `oci:${image.layout}:${image.tag}`;
      const result = await runCli(
        ["convert", src, `oci:${work}/out:v1`, "--max-layer-size", "512K", "--tmpdir", work],
        LONG,
      );
      assertCliError(result, 1, /(exceeds|files hold more than) 524288 bytes/);
      // The layout this run created holds no tag: it goes (it was left as an empty skeleton).
      assert.ok(!listDir(work).includes("out"), "the new layout removed");
      assert.ok(!listDir(work).some((name) => name.startsWith("erofs-oci-convert-")));
      assertSuccess(
        await runCli(["convert", src, `oci:${work}/out:v1`, "--max-layer-size", "2M"], LONG),
      );
      // A layout that was there before stays, whatever fails.
      assertCliError(
        await runCli(["convert", src, `oci:${work}/out:v2`, "--max-layer-size", "512K"], LONG),
        1,
        /(exceeds|files hold more than) 524288 bytes/,
      );
      assert.ok(listDir(`${work}/out`).includes("index.json"), "the existing layout kept");
      assertCliError(
        await runCli(["convert", src, `oci:${work}/out:v1`, "--max-layer-size", "lots"]),
        2,
        /--max-layer-size/,
      );
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "convert --max-layer-size: a sparse file counts at its full size (a tiny tar of 64 MiB)",
  ignore: requires(command("tar"), command("truncate")),
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-sparse-" });
    try {
      // GNU tar --sparse stores a 64 MiB hole in a few blocks.
      for (
        const [cmd, args] of [
          ["truncate", ["-s", "64M", `${work}/hole`]],
          ["tar", ["--sparse", "-C", work, "-cf", `${work}/layer.tar`, "hole"]],
        ] as const
      ) {
        const done = await new Deno.Command(cmd, { args: [...args] }).output();
        assert.ok(done.success, new TextDecoder().decode(done.stderr));
      }
      const bytes = await Deno.readFile(`${work}/layer.tar`);
      assert.ok(bytes.length < 64 * 1024, `${bytes.length}-byte tar`);
      await writeOciLayout(`${work}/src`, [
        { bytes, mediaType: "application/vnd.oci.image.layer.v1.tar" },
      ]);
      assertCliError(
        await runCli(
          ["convert", `oci:${work}/src:v1`, `oci:${work}/out:v1`, "--max-layer-size", "1M"],
          LONG,
        ),
        1,
        /the layer's files hold more than 1048576 bytes \(at "hole"; a sparse file counts at its full size\)/,
      );
      assert.ok(!listDir(work).includes("out"), "nothing written");
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
