import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { ChunkTable, DEFAULT_TABLE_CHUNK_BYTES } from "../verify/chunk_table.ts";
import { VerifiedSource } from "../verify/verified_source.ts";
import { layerFetchMetrics } from "./layer_metrics.ts";
import { renderPrometheus } from "./prometheus.ts";
import { listedLayers } from "./listed_layer.ts";

Deno.test("a chunk refused by its table is counted per layer and exported", async () => {
  const chunk = DEFAULT_TABLE_CHUNK_BYTES;
  const data = crypto.getRandomValues(new Uint8Array(65536));
  const blob = new Uint8Array(chunk + 4096);
  for (let i = 0; i < blob.length; i += data.length) blob.set(data.subarray(0, blob.length - i), i);
  const digest = "sha256:" + createHash("sha256").update(blob).digest("hex");
  const digests = new Uint8Array(64);
  digests.set(createHash("sha256").update(blob.subarray(0, chunk)).digest(), 0);
  digests.set(createHash("sha256").update(blob.subarray(chunk)).digest(), 32);
  const table = ChunkTable.of(digest, blob.length, chunk, digests);
  // A source that lies about byte 10 every time: the read must fail, and be counted.
  const lying = {
    size: blob.length,
    read: (offset: number, length: number) => {
      const out = blob.slice(offset, offset + length);
      if (offset <= 10 && 10 < offset + length) out[10 - offset] ^= 1;
      return Promise.resolve(out);
    },
  };
  const layer = {
    kind: "registry" as const,
    registry: "r",
    repository: "x",
    reference: "r/x:y",
    platform: "",
    layerIndex: 0,
    digest,
    mediaType: "application/vnd.erofs",
    sizeBytes: blob.length,
    plainHttp: true,
  };
  assert.equal(layerFetchMetrics(layer).verifyFailures, 0);
  const verified = new VerifiedSource(lying, table, { origin: "test", onMismatch: () => {} });
  await assert.rejects(verified.read(0, 100));
  assert.deepEqual(await verified.read(chunk, 4096), blob.subarray(chunk));
  const metrics = layerFetchMetrics(layer);
  assert.equal(metrics.verifyFailures, 1, "one chunk refused (its refetch failed too)");
  const stats = { bytesRequested: 0, bytesFetched: 0, fetches: 0, hits: 0, misses: 0 };
  const text = renderPrometheus([{
    target: "/m",
    image: "r/x:y",
    backend: "fuse",
    devices: [],
    serverPid: 1,
    state: "serving",
    layers: listedLayers([{ ...stats, ...metrics }]),
  }]);
  assert.match(text, /^erofs_oci_layer_verify_failures_total\{[^}]*\} 1$/m);
});
