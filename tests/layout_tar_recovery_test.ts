/**
 * Recovery of an OCI layout's tar+gzip layer served through its index: the LayerSpec becomes a
 * `TARINDEX_LOCAL <blob path>` line (erofs-oci's own: erofs-utils has no such source and must
 * not serve the raw blob) with the index paths, digest and record in the companion; reattach
 * rebuilds the same spec and the rebuilt source serves the same device bytes, the tar's after
 * the meta image. A device of another size, a blob that changed, or a meta that is gone is
 * refused.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires } from "./_support/requires.ts";
import { runOk } from "./_support/erofs_tree.ts";
import { withTempDir } from "./_support/temp_dir.ts";
import { resolveLayoutImage } from "../lib/mount/resolve_layers.ts";
import { layerForRecord, recordForLayer } from "../lib/recovery/layer_record.ts";
import { formatRecoveryLine, parseRecoveryLine } from "../lib/state/recovery_record.ts";
import { openLayerSource } from "../lib/mount/layer_source.ts";
import { openTarIndexSource } from "../lib/mount/tar_index_source.ts";
import type { LayerSpec } from "../lib/state/mount_spec.ts";

type LocalLayer = Extract<LayerSpec, { kind: "local" }>;

async function served(layer: LocalLayer): Promise<Uint8Array> {
  const source = await openTarIndexSource(
    await openLayerSource(layer),
    layer.tarIndex!,
    { digest: layer.digest!, size: layer.sizeBytes },
    8 << 20,
  );
  try {
    return await source.read(0, source.size);
  } finally {
    await source.close();
  }
}

Deno.test({
  name: "layout tar-index layer → TARINDEX_LOCAL line + companion → reattach spec serves it",
  ignore: requires(command("umoci"), path(`${FIXTURES}/layer.tar`, "fixtures")),
  fn: () =>
    withTempDir("erofs-oci-layout-recovery-", async (work) => {
      const layout = `${work}/lay`;
      await runOk("umoci", ["init", "--layout", layout]);
      await runOk("umoci", ["new", "--image", `${layout}:t`]);
      await runOk("umoci", ["raw", "add-layer", "--image", `${layout}:t`, `${FIXTURES}/layer.tar`]);
      const resolved = await resolveLayoutImage(`oci:${layout}:t`, undefined, {}, {
        cacheDir: `${work}/state/index`,
        hereDir: `${work}/state/indexed-here`,
        indexMissing: true,
      });
      const [resolvedLayer] = resolved!.layers;
      assert.ok(resolvedLayer.kind === "local" && resolvedLayer.tarIndex && resolvedLayer.digest);
      // What the server records: the layout its source chose.
      const layer = { ...resolvedLayer, tarIndex: { ...resolvedLayer.tarIndex, layout: "512" } };
      assert.ok(layer.tarIndex.meta.startsWith(`${work}/state/index/`));

      const { record, extra } = recordForLayer(layer as LayerSpec, undefined, "m1", 0);
      const line = formatRecoveryLine(record);
      assert.equal(line, `TARINDEX_LOCAL ${layer.path}`);
      const companion = JSON.parse(JSON.stringify(extra));
      assert.equal(companion.digest, layer.digest);
      assert.equal(companion.tarIndex.meta, layer.tarIndex.meta);
      assert.equal(companion.tarIndex.zinfo, layer.tarIndex.zinfo);

      const device = await served(layer as LocalLayer);
      const tarStart = (await Deno.stat(layer.tarIndex.meta)).size;
      const tar = await Deno.readFile(`${FIXTURES}/layer.tar`);
      const tarPart = device.subarray(tarStart, tarStart + Math.min(tar.length, device.length));
      assert.deepEqual(tarPart, tar.subarray(0, tarPart.length));

      const deviceBytes = Math.ceil(device.length / 4096) * 4096;
      const parsed = parseRecoveryLine(line);
      const rebuilt = await layerForRecord(parsed, companion, deviceBytes);
      assert.deepEqual(rebuilt.layer, layer);
      assert.deepEqual(await served(rebuilt.layer as LocalLayer), device);

      await assert.rejects(layerForRecord(parsed, companion, deviceBytes + 65536), /does not fit/);
      const otherDigest = { ...companion, digest: `sha256:${"0".repeat(64)}` };
      await assert.rejects(
        layerForRecord(parsed, otherDigest, deviceBytes),
        /not the one its index/,
      );
      const noIndex = { ...companion, tarIndex: { ...companion.tarIndex, meta: undefined } };
      await assert.rejects(
        layerForRecord(parsed, noIndex, deviceBytes),
        /does not name the tar index/,
      );
      await Deno.remove(layer.tarIndex.meta);
      await assert.rejects(layerForRecord(parsed, companion, deviceBytes), /is gone/);
    }),
});
