/**
 * VerifiedSource.readTo over a real registry reads the body straight into its chunk buffer
 * (PlacedBodySink, lib/oci/blob_range.ts): the bytes must come out right also when the body
 * breaks off in the middle of a chunk (the read takes the buffer with it: that chunk is
 * fetched again from its start), when the registry ignores Range (the leading bytes go
 * through the scratch buffer) and at the blob's short last chunk.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { type FaultRule, isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { uploadBlob } from "./_support/oci_raw.ts";
import { patternBytes } from "./_support/memory_source.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { RegistryBlob } from "../lib/oci/registry_blob.ts";
import { ChunkTableBuilder } from "../lib/verify/chunk_table.ts";
import { VerifiedSource } from "../lib/verify/verified_source.ts";
import { digestOf } from "../lib/oci/digest.ts";

const CHUNK = 1 << 20;
const ignore = requires(command("docker-registry"), command("htpasswd"), command("openssl"));

async function readThrough(
  faults: (digest: string) => FaultRule[],
  offset: number,
  length: number,
) {
  const bytes = new Uint8Array(patternBytes(3 * CHUNK + 12_345));
  const builder = new ChunkTableBuilder(CHUNK);
  builder.update(bytes);
  const table = builder.finish(digestOf(bytes));
  await using registry = await startRegistry({ auth: "none" });
  const blob = await uploadBlob(registry, "placed/blob", bytes, "application/octet-stream");
  await using proxy = await startFaultProxy(registry.host, faults(blob.digest));
  const client = new RegistryClient(proxy.host, { plainHttp: true });
  const source = new RegistryBlob(client, "placed/blob", {
    index: 0,
    digest: blob.digest,
    sizeBytes: bytes.length,
    mediaType: blob.mediaType,
  });
  const verified = new VerifiedSource(source, table, { origin: "test", onMismatch: () => {} });
  const out = new Uint8Array(length);
  let next = 0;
  await verified.readTo(offset, length, (piece, at) => {
    assert.equal(at, next, "pieces in order, each once");
    out.set(piece, at);
    next = at + piece.length;
  });
  assert.equal(next, length);
  assert.deepEqual(out, bytes.subarray(offset, offset + length));
  assert.equal(verified.mismatches, 0);
  const ranges = proxy.requests.filter((r) => r.path.endsWith(blob.digest)).map((r) => r.range);
  return { ranges, verified };
}

Deno.test({
  name: "VerifiedSource.readTo (registry): the whole blob, its short last chunk included",
  ignore,
  async fn() {
    const length = 3 * CHUNK + 12_345;
    const { ranges, verified } = await readThrough(() => [], 0, length);
    assert.deepEqual(ranges, [`bytes=0-${length - 1}`]);
    assert.equal(verified.verifiedChunks, 4);
  },
});

Deno.test({
  name: "VerifiedSource.readTo (registry): a body broken off mid-chunk starts that chunk again",
  ignore,
  async fn() {
    const afterBytes = CHUNK + 300_000;
    const { ranges } = await readThrough(
      (digest) => [{ match: isBlobGetOf(digest), fault: { kind: "reset", afterBytes }, times: 1 }],
      100,
      3 * CHUNK,
    );
    // The chunk being assembled when the body broke off is asked for again from its start
    // (its bytes left with the buffer the failed read took), and nothing else: a resume from
    // where the body broke would be refused by that chunk (it was sent and dropped before).
    const end = 3 * CHUNK + 12_345 - 1;
    assert.deepEqual(ranges, [`bytes=0-${end}`, `bytes=${CHUNK}-${end}`]);
  },
});

Deno.test({
  name: "VerifiedSource.readTo (registry): a 200 that ignores Range still gives the right bytes",
  ignore,
  async fn() {
    const { ranges } = await readThrough(
      (digest) => [{ match: isBlobGetOf(digest), fault: { kind: "ignore-range" }, times: 1 }],
      2 * CHUNK + 7,
      CHUNK,
    );
    assert.equal(ranges.length, 1, JSON.stringify(ranges));
  },
});

Deno.test({
  name: "VerifiedSource.readTo (registry): a body that keeps breaking off mid-chunk is resumed",
  ignore,
  async fn() {
    // Every GET breaks off half a chunk in: starting the chunk again each time never gets
    // past it (the read failed after 3 restarts); resumed where each broke off, as readBlobRange
    // does, the run completes.
    const { ranges } = await readThrough(
      (digest) => [{
        match: isBlobGetOf(digest),
        fault: { kind: "reset", afterBytes: CHUNK / 2 + 1000 },
        times: 12,
      }],
      0,
      3 * CHUNK + 12_345,
    );
    assert.ok(ranges.length >= 7, JSON.stringify(ranges));
  },
});
