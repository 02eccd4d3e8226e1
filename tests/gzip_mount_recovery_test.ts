/**
 * Recovery of a tar-index layer: the mount's LayerSpec becomes a `TARINDEX_OCI_BLOB` line as
 * erofs-utils 1.9 writes it (meta and zinfo paths in the durable state dir) plus a companion
 * with the record and pieces; reattach rebuilds the same spec from them, against the real
 * registry, and the rebuilt source serves the tar's bytes. A meta that is gone, or a device of
 * another size, is refused. The 4 KiB layout (kernels before 6.4) keeps the same line, says
 * "4k" in the companion, and reattach serves the same device bytes again.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { runCli } from "./_support/cli.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { parseReference } from "../lib/oci/reference.ts";
import { resolveRegistryImage } from "../lib/mount/resolve_layers.ts";
import { layerForRecord, recordForLayer } from "../lib/recovery/layer_record.ts";
import { formatRecoveryLine, parseRecoveryLine } from "../lib/state/recovery_record.ts";
import { openLayerSource } from "../lib/mount/layer_source.ts";
import { openTarIndexSource } from "../lib/mount/tar_index_source.ts";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";

for (const deviceLayout of ["512", "4k"] as const) {
  Deno.test({
    name:
      `tar-index layer (${deviceLayout}) → TARINDEX_OCI_BLOB line + companion → reattach spec serves the tar`,
    ignore: requires(command("docker-registry"), path(`${FIXTURES}/layer.tar.gz`, "fixtures")),
    async fn() {
      const work = await Deno.makeTempDir({ prefix: "erofs-oci-gzip-recovery-" });
      await using registry = await startRegistry({ auth: "none" });
      const client = new RegistryClient(registry.host, { plainHttp: true });
      try {
        const gz = await Deno.readFile(`${FIXTURES}/layer.tar.gz`);
        await pushImage(registry, "gz/rec", "v1", [{ bytes: gz, mediaType: GZIP_LAYER }]);
        const name = `${registry.host}/gz/rec:v1`;
        const indexed = await runCli(["index", name, "--push"], { timeoutMs: 60_000 });
        assert.equal(indexed.code, 0, indexed.stderr);
        const resolved = await resolveRegistryImage(
          { ref: parseReference(name), client, insecure: false },
          {},
          { cacheDir: `${work}/state/index`, hereDir: `${work}/state/indexed-here` },
        );
        const [resolvedLayer] = resolved.layers;
        assert.ok(resolvedLayer.kind === "registry" && resolvedLayer.tarIndex);
        // What the server records: the layout its source chose.
        const layer = {
          ...resolvedLayer,
          tarIndex: { ...resolvedLayer.tarIndex, layout: deviceLayout },
        };
        assert.ok(layer.tarIndex.meta.startsWith(`${work}/state/index/`));

        const { record, extra } = recordForLayer(layer, undefined, "m1", 0);
        const line = formatRecoveryLine(record);
        const fields = line.split(" ");
        assert.equal(fields[0], "TARINDEX_OCI_BLOB");
        assert.equal(fields[3], layer.digest);
        assert.equal(fields[5], layer.tarIndex.meta);
        assert.equal(fields[6], layer.tarIndex.zinfo);
        assert.equal(fields.length, 7);
        const recordedLayout = (extra as { tarIndex?: { layout?: string } }).tarIndex?.layout;
        assert.equal(recordedLayout, deviceLayout === "4k" ? "4k" : undefined);

        const parsed = parseRecoveryLine(line);
        const companion = JSON.parse(JSON.stringify(extra));
        const tar = await Deno.readFile(`${FIXTURES}/layer.tar`);
        const device = await openTarIndexSource(
          await openLayerSource(layer),
          layer.tarIndex,
          { digest: layer.digest, size: layer.sizeBytes },
          8 << 20,
        );
        assert.equal(device.layout, deviceLayout);
        const deviceBytes = Math.ceil(device.size / 4096) * 4096;
        const served = await device.read(0, device.size);
        await device.close();
        const rebuilt = await layerForRecord(parsed, companion, deviceBytes);
        assert.deepEqual(rebuilt.layer, { ...layer, mediaType: GZIP_LAYER, reference: name });
        const rebuiltLayer = rebuilt.layer as typeof layer;
        const source = await openTarIndexSource(
          await openLayerSource(rebuiltLayer),
          rebuiltLayer.tarIndex!,
          { digest: layer.digest, size: layer.sizeBytes },
          8 << 20,
        );
        try {
          assert.equal(source.layout, deviceLayout);
          assert.deepEqual(await source.read(0, source.size), served);
          if (deviceLayout === "512") {
            const tarStart = (await Deno.stat(layer.tarIndex.meta)).size;
            const got = await source.read(tarStart, Math.min(source.size - tarStart, tar.length));
            assert.deepEqual(got, tar.subarray(0, got.length));
          }
        } finally {
          await source.close();
        }

        // The meta's and the zinfo's digests as the server opened them go with the record too;
        // a reattach finding other bytes in a file is refused (a --tarindex file has no record).
        for (
          const [field, digest, refusal] of [
            ["metaDigest", `sha256:${"0".repeat(64)}`, /tar index .* changed since the mount/],
            ["zinfoDigest", `sha256:${"1".repeat(64)}`, /zinfo .* changed since the mount/],
          ] as const
        ) {
          const pinned = { ...layer, tarIndex: { ...layer.tarIndex, [field]: digest } };
          const again = recordForLayer(pinned, undefined, "m1", 0);
          const rebuiltPinned = (await layerForRecord(
            parseRecoveryLine(formatRecoveryLine(again.record)),
            JSON.parse(JSON.stringify(again.extra)),
            deviceBytes,
          )).layer as typeof layer;
          assert.equal(rebuiltPinned.tarIndex[field], digest);
          const blob = await openLayerSource(rebuiltPinned);
          try {
            const opened = openTarIndexSource(blob, rebuiltPinned.tarIndex, {
              digest: layer.digest,
              size: layer.sizeBytes,
            }, 8 << 20);
            await assert.rejects(opened, refusal);
            await assert.rejects(
              opened,
              new RegExp(`its sha256 is sha256:[0-9a-f]{64}, the mount was made from ${digest}`),
            );
          } finally {
            await blob.close?.();
          }
        }

        await assert.rejects(
          layerForRecord(parsed, companion, deviceBytes + 65536),
          /does not fit/,
        );
        await Deno.remove(layer.tarIndex.meta);
        await assert.rejects(layerForRecord(parsed, companion, deviceBytes), /is gone/);
      } finally {
        client.close();
        await Deno.remove(work, { recursive: true }).catch(() => {});
      }
    },
  });
}
