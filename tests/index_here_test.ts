/**
 * lib/mount/index_here.ts settleIndexDir: two mounts that indexed the same layer at once both
 * end with one complete set in its directory (the first one there is kept); a directory that
 * holds no complete set is replaced.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires } from "./_support/requires.ts";
import { withTempDir } from "./_support/temp_dir.ts";
import { settleIndexDir } from "../lib/mount/index_here.ts";
import { layerFileStem, writeLayerIndex } from "../lib/mount/layer_index_files.ts";
import { digestOf } from "../lib/oci/digest.ts";

const LAYER = `${FIXTURES}/layer.tar.gz`;

async function indexInto(dir: string, digest: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const file = await Deno.open(LAYER);
  await writeLayerIndex(file.readable, dir, layerFileStem(digest), {
    spanBytes: 4 << 20,
    buildTimeSec: 1_700_000_000,
  });
}

Deno.test({
  name: "index here: the first complete set in a layer's directory is kept, a broken one replaced",
  ignore: requires(path(LAYER, "shared fixtures")),
  fn: () =>
    withTempDir("erofs-oci-index-here-", async (work) => {
      const bytes = await Deno.readFile(LAYER);
      const layer = { digest: digestOf(bytes), size: bytes.length };
      const dir = `${work}/here/${layerFileStem(layer.digest)}`;
      await Deno.mkdir(`${work}/here`);
      for (const name of ["a", "b", "c"]) await indexInto(`${work}/${name}`, layer.digest);

      const first = await settleIndexDir(`${work}/a`, dir, layer);
      assert.equal(first?.record.layer.digest, layer.digest);
      assert.ok(first?.meta.startsWith(`${dir}/`));
      const metaBefore = Deno.statSync(first!.meta).mtime;

      // The second one finds a complete set there: it is kept, the second dropped.
      const second = await settleIndexDir(`${work}/b`, dir, layer);
      assert.equal(second?.meta, first?.meta);
      assert.deepEqual(Deno.statSync(second!.meta).mtime, metaBefore);
      assert.throws(() => Deno.statSync(`${work}/b`), Deno.errors.NotFound);

      // A directory without a complete set (a crash while it was replaced) is replaced.
      Deno.removeSync(`${dir}/${layerFileStem(layer.digest)}.index.json`);
      Deno.writeTextFileSync(`${dir}/junk`, "x");
      const third = await settleIndexDir(`${work}/c`, dir, layer);
      assert.equal(third?.record.layer.digest, layer.digest);
      assert.throws(() => Deno.statSync(`${dir}/junk`), Deno.errors.NotFound);
    }),
});
