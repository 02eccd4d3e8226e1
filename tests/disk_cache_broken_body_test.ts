/**
 * A disk-cache fill of a table-checked layer (DiskCache over VerifiedSource over RegistryBlob,
 * as lib/mount/layer_source.ts stacks them) whose body breaks off in the middle of a table
 * chunk, through a real registry and a fault proxy. The broken read took the chunk buffer
 * being assembled (PlacedBodySink, lib/oci/blob_range.ts), so the bytes after the break cannot
 * complete that chunk: the fill must ask for the chunk again from its start, and must not first
 * send a resume GET from the break whose body it would only refuse.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { uploadBlob } from "./_support/oci_raw.ts";
import { patternBytes } from "./_support/memory_source.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { RegistryBlob } from "../lib/oci/registry_blob.ts";
import { ChunkTableBuilder } from "../lib/verify/chunk_table.ts";
import { VerifiedSource } from "../lib/verify/verified_source.ts";
import { digestOf } from "../lib/oci/digest.ts";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";

const TABLE_CHUNK = 1 << 20;
const DISK_CHUNK = 256 << 10;
const ignore = requires(command("docker-registry"), command("htpasswd"), command("openssl"));

Deno.test({
  name:
    "disk cache fill: a body broken off mid-chunk costs one GET from the chunk's start, no resume",
  ignore,
  async fn() {
    const size = 3 * TABLE_CHUNK + 12_345;
    const bytes = new Uint8Array(patternBytes(size, 7));
    const builder = new ChunkTableBuilder(TABLE_CHUNK);
    builder.update(bytes);
    const table = builder.finish(digestOf(bytes));
    await using registry = await startRegistry({ auth: "none" });
    const blob = await uploadBlob(registry, "broken/body", bytes, "application/octet-stream");
    // The first GET of the blob is reset 300 000 bytes into its second table chunk.
    await using proxy = await startFaultProxy(registry.host, [{
      match: isBlobGetOf(blob.digest),
      fault: { kind: "reset", afterBytes: TABLE_CHUNK + 300_000 },
      times: 1,
    }]);
    const dir = await Deno.makeTempDir({ prefix: "disk-cache-broken-" });
    try {
      const client = new RegistryClient(proxy.host, { plainHttp: true });
      const registryBlob = new RegistryBlob(client, "broken/body", {
        index: 0,
        digest: blob.digest,
        sizeBytes: size,
        mediaType: blob.mediaType,
      });
      const verified = new VerifiedSource(registryBlob, table, {
        origin: "test",
        onMismatch: () => {},
      });
      const cache = DiskCache.open({ dir, chunkBytes: DISK_CHUNK })!;
      const source = cache.wrap(verified, {
        digest: blob.digest,
        origin: "http://test#t-0123456789abcdef",
      }) as DiskCachedSource;
      try {
        assert.deepEqual(await source.read(0, size), bytes);
        await source.whenDurable();
        assert.equal(verified.mismatches, 0);
        assert.equal(verified.verifiedChunks, 4);
        const stats = source.diskStats();
        assert.equal(stats.fetchedBytes, size, "each chunk filled once");
        const ranges = proxy.requests
          .filter((r) => r.method === "GET" && r.path.endsWith(blob.digest))
          .map((r) => r.range);
        // The whole run, then the broken chunk again from its start. Before, a resume GET
        // from where the body broke came between them, and its body was dropped.
        assert.deepEqual(ranges, [`bytes=0-${size - 1}`, `bytes=${TABLE_CHUNK}-${size - 1}`]);
        // Served from the file now: no more GETs.
        assert.deepEqual(
          await source.read(TABLE_CHUNK, 1000),
          bytes.subarray(TABLE_CHUNK, TABLE_CHUNK + 1000),
        );
        assert.equal(proxy.requests.filter((r) => r.path.endsWith(blob.digest)).length, 2);
      } finally {
        await source.close!();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
