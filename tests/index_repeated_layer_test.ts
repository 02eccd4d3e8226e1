/**
 * An image that lists one tar+gzip layer blob twice, [T2, T1, T2] (docker's empty layer, a
 * layer added again): an index is kept per layer digest, and the one of the lower copy (made
 * with nothing below) served at the top showed a file the top copy deletes and lost a directory
 * mode the layer below gives it; `index --push` of such an image failed every time ("changed
 * after it was made": the second copy overwrote the first's files). Each blob is now indexed
 * where it sits topmost, and every copy mounts through that index: `index -o DIR`, `--push`,
 * `--layer N` of the lower copy, and `mount --index-missing` all give what a container sees.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { type IndexMountRig, mountFuseOk, withIndexMountRig } from "./_support/index_mounts.ts";
import { encodeTar } from "./_support/tar_encode.ts";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const LONG = { timeoutMs: 120_000 };
const text = (s: string) => new TextEncoder().encode(s);

async function gzip(bytes: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  const stream = new Blob([new Uint8Array(bytes)]).stream().pipeThrough(
    new CompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** What a container sees of [T2, T1, T2]: T1's mode on d (T2 only implies it), keep deleted. */
const MERGED = ["d 700 d", "d/x 644 f", "d/y 644 f"];

function listing(dir: string): string[] {
  const lines: string[] = [];
  const walk = (rel: string) => {
    for (
      const entry of [...Deno.readDirSync(`${dir}/${rel}`)].sort((a, b) => a.name < b.name ? -1 : 1)
    ) {
      const name = rel ? `${rel}/${entry.name}` : entry.name;
      const stat = Deno.lstatSync(`${dir}/${name}`);
      const kind = stat.isDirectory ? "d" : stat.isFile ? "f" : "o";
      lines.push(`${name} ${(stat.mode! & 0o7777).toString(8)} ${kind}`);
      if (stat.isDirectory) walk(name);
    }
  };
  walk("");
  return lines;
}

async function mountedListing(rig: IndexMountRig, args: string[]): Promise<string[]> {
  await mountFuseOk(rig, args);
  try {
    return listing(rig.sandbox.target);
  } finally {
    assertSuccess(await runCli(["umount", rig.sandbox.target], { env: rig.env }));
  }
}

Deno.test({
  name:
    "index of an image listing one tar.gz layer twice: made where it sits topmost, mounts right",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  fn: () =>
    withIndexMountRig("erofs-oci-repeated-layer-", async (rig) => {
      const { registry, work, stateEnv } = rig;
      const t1 = await gzip(encodeTar([
        { name: "d/", type: "5", mode: 0o700 },
        { name: "d/x", mode: 0o644, data: text("x from T1\n") },
        { name: "keep", mode: 0o644, data: text("keep from T1\n") },
      ]));
      const t2 = await gzip(encodeTar([
        { name: "d/y", mode: 0o644, data: text("y from T2\n") },
        { name: ".wh.keep", mode: 0o644 },
      ]));
      const layers = [t2, t1, t2].map((bytes) => ({ bytes, mediaType: GZIP_LAYER }));
      const pushed = await pushImage(registry, "repeat/app", "v1", layers);
      const ref = `${registry.host}/repeat/app:v1`;
      const plain = ["--plain-http"];

      // -o DIR: one set per blob, the top copy's.
      const written = await runCli(["index", ref, "-o", `${work}/idx`, ...plain], {
        ...LONG,
        env: stateEnv,
      });
      assertSuccess(written);
      assert.match(written.stderr, /2 layer index\(es\)/);
      const names = [...Deno.readDirSync(`${work}/idx`)].map((e) => e.name);
      assert.equal(names.filter((n) => n.endsWith(".index.json")).length, 2, names.join(" "));
      assert.ok(!names.some((n) => n.startsWith("lower-copy-")), names.join(" "));
      assert.deepEqual(
        await mountedListing(rig, ["--index", `${work}/idx`, ref, ...plain]),
        MERGED,
      );

      // --push (it failed every time: the lower copy's files were overwritten by the top's).
      assertSuccess(await runCli(["index", ref, "--push", ...plain], { ...LONG, env: stateEnv }));
      assert.deepEqual(await mountedListing(rig, [ref, ...plain]), MERGED);

      // --layer 0, the lower copy: indexed where it sits topmost, and said so.
      const lower = await runCli(["index", ref, "--push", "--force", "--layer", "0", ...plain], {
        ...LONG,
        env: stateEnv,
      });
      assertSuccess(lower);
      assert.match(lower.stderr, /layer 0 is also layer 2 of the image: indexed there/);
      assert.deepEqual(await mountedListing(rig, [ref, ...plain]), MERGED);

      // The lower copy alone through the registry's index (made for layer 2) would show layer
      // 2's view: refused, pointing at --index-missing.
      const alone = await runCli(
        ["mount", "--backend", "fuse", "--layer", "0", ref, ...plain, rig.sandbox.target],
        { env: rig.env, timeoutMs: 60_000 },
      );
      assertCliError(alone, 1, /layer 0 repeats layer 2's blob: an index from the registry/);
      assert.match(alone.stderr, /hint: mount it with --index-missing/);

      // Indexed on this host: the same view, and T1's file reads right.
      await mountFuseOk(rig, ["--index-missing", "--require-verified", ref, ...plain]);
      try {
        assert.deepEqual(listing(rig.sandbox.target), MERGED);
        assert.equal(Deno.readTextFileSync(`${rig.sandbox.target}/d/x`), "x from T1\n");
      } finally {
        assertSuccess(await runCli(["umount", rig.sandbox.target], { env: rig.env }));
      }
      // The lower copy mounted alone is that layer as it is: nothing from the layers above it
      // (T1's mode on d, the whiteout of T1's keep).
      // Without --require-verified too: the registry's index (made for layer 2) is passed over.
      await mountFuseOk(rig, ["--index-missing", "--layer", "0", ref, ...plain]);
      try {
        assert.deepEqual(listing(rig.sandbox.target), ["d 755 d", "d/y 644 f"]);
      } finally {
        assertSuccess(await runCli(["umount", rig.sandbox.target], { env: rig.env }));
      }
      assert.equal(pushed.layers[0].digest, pushed.layers[2].digest);
    }),
});
