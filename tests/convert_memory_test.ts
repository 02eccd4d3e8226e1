/**
 * `erofs-oci convert` holds no layer in memory: a 256 MiB incompressible plain-tar layer and a
 * gzip layer expanding to 512 MiB convert with a peak RSS far below either (GNU time's max RSS
 * of the whole process tree), and the converted files read back with the right bytes.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { command, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { runOk, withMountedImage } from "./_support/erofs_tree.ts";

const ignore = requires(root(), command("time"), command("tar"), command("gzip"));
const MAX_RSS_MB = 250;

async function addBlob(layout: string, file: string): Promise<{ digest: string; size: number }> {
  const hash = createHash("sha256");
  const handle = await Deno.open(file);
  for await (const chunk of handle.readable) hash.update(chunk);
  const hex = hash.digest("hex");
  await Deno.rename(file, `${layout}/blobs/sha256/${hex}`);
  return { digest: `sha256:${hex}`, size: (await Deno.stat(`${layout}/blobs/sha256/${hex}`)).size };
}

Deno.test({
  name: "convert: 256 MiB plain tar + 512 MiB-expanding gzip layers in bounded memory",
  ignore,
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-memory-" });
    try {
      const layout = `${work}/src`;
      await Deno.mkdir(`${layout}/blobs/sha256`, { recursive: true });
      await runOk("sh", [
        "-ec",
        `cd '${work}'
mkdir -p t1/data t2/data
head -c 268435456 /dev/urandom > t1/data/random
head -c 536870912 /dev/zero > t2/data/zeros
tar -C t1 --owner=0 --group=0 -cf l1.tar data
tar -C t2 --owner=0 --group=0 -cf - data | gzip -1 > l2.tar.gz
sha256sum t1/data/random | cut -d' ' -f1 > random.sha256
rm -rf t1 t2`,
      ]);
      const l1 = await addBlob(layout, `${work}/l1.tar`);
      const l2 = await addBlob(layout, `${work}/l2.tar.gz`);
      await Deno.writeTextFile(
        `${work}/config.json`,
        JSON.stringify({
          architecture: "amd64",
          os: "linux",
          rootfs: { type: "layers", diff_ids: [] },
        }),
      );
      const config = await addBlob(layout, `${work}/config.json`);
      await Deno.writeTextFile(
        `${work}/manifest.json`,
        JSON.stringify({
          schemaVersion: 2,
          mediaType: "application/vnd.oci.image.manifest.v1+json",
          config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
          layers: [
            { mediaType: "application/vnd.oci.image.layer.v1.tar", ...l1 },
            { mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", ...l2 },
          ],
        }),
      );
      const manifest = await addBlob(layout, `${work}/manifest.json`);
      await Deno.writeTextFile(
        `${layout}/index.json`,
        JSON.stringify({
          schemaVersion: 2,
          manifests: [{
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            ...manifest,
            annotations: { "org.opencontainers.image.ref.name": "v1" },
          }],
        }),
      );
      await Deno.writeTextFile(`${layout}/oci-layout`, '{"imageLayoutVersion":"1.0.0"}');

      const out = await new Deno.Command("time", {
        args: [
          "-f",
          "maxrss_kb=%M",
          `${REPO_ROOT}/scripts/erofs-oci-dev`,
          "convert",
          `oci:${layout}:v1`,
          `oci:${work}/dst:v1`,
          "--tmpdir",
          work,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, stderr);
      const rssKb = Number(/maxrss_kb=(\d+)/.exec(stderr)?.[1]);
      assert.ok(rssKb > 0, stderr);
      console.log(`convert peak RSS: ${Math.round(rssKb / 1024)} MB`);
      assert.ok(rssKb < MAX_RSS_MB * 1024, `peak RSS ${Math.round(rssKb / 1024)} MB`);

      const dstIndex = JSON.parse(await Deno.readTextFile(`${work}/dst/index.json`));
      const dstManifest = JSON.parse(
        await Deno.readTextFile(
          `${work}/dst/blobs/sha256/${dstIndex.manifests[0].digest.slice(7)}`,
        ),
      );
      const [first, second] = dstManifest.layers.map((l: { digest: string }) =>
        `${work}/dst/blobs/sha256/${l.digest.slice(7)}`
      );
      const expected = (await Deno.readTextFile(`${work}/random.sha256`)).trim();
      await withMountedImage(first, async (dir) => {
        const sum = (await runOk("sha256sum", [`${dir}/data/random`])).split(" ")[0];
        assert.equal(sum, expected);
      });
      await withMountedImage(second, async (dir) => {
        assert.equal((await Deno.stat(`${dir}/data/zeros`)).size, 536870912);
        const cmp = await runOk("sh", [
          "-c",
          `cmp -n 536870912 '${dir}/data/zeros' /dev/zero; true`,
        ]);
        assert.equal(cmp, "");
      });
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
