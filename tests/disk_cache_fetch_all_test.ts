/**
 * `--fetch-all`'s completion and whole-blob check against what else happens to the blob: a
 * registry serving bytes that fail their chunk-digest table is not asked again every second,
 * and a chunk evicted and refetched while the blob is hashed does not make a correct layer
 * fail its digest (which would drop it and fail every read with EIO).
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { ChunkTableBuilder } from "../lib/verify/chunk_table.ts";
import { VerifiedSource } from "../lib/verify/verified_source.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { sleep, waitFor } from "./_support/wait.ts";

const MiB = 1 << 20;

async function sha256(bytes: Uint8Array): Promise<string> {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes.slice()));
  return "sha256:" + [...hash].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

Deno.test("disk cache --fetch-all: bytes failing the chunk table stop the completion, said once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-fetch-all-" });
  const warnings: string[] = [];
  try {
    const good = patternBytes(4 * MiB, 5);
    const builder = new ChunkTableBuilder(MiB, 0);
    builder.update(good);
    const table = builder.finish();
    const served = good.slice();
    served[2 * MiB + 10] ^= 0xff; // the registry's chunk 2 is not the layer's
    const registry = new MemorySource(served, { delayMs: () => 1 });
    const inner = new VerifiedSource(registry, table, { origin: "r", onMismatch: () => {} });
    const cache = DiskCache.open({
      dir,
      keepFreeBytes: 0,
      completeInBackground: true,
      onWarning: (message) => warnings.push(message),
      onNotice: () => {},
    })!;
    const source = cache.wrap(inner, { digest: table.layerDigest, origin: "r#t-test" });
    await waitFor("the completion to give up", () => warnings.length > 0, 20_000);
    const gets = registry.reads.length;
    await sleep(2500); // it used to try again every second, two GETs each time
    assert.equal(registry.reads.length, gets, "no GET once stopped");
    assert.deepEqual(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0], /offset 2097152 .*; stopped, reads of those bytes fail/);
    // The good chunks are served, the bad one is refused.
    assert.deepEqual(await source.read(0, MiB), good.subarray(0, MiB));
    await assert.rejects(source.read(2 * MiB, 100), /do not match the chunk-digest table/);
    await source.close!();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: a chunk evicted and refetched while the whole blob is hashed is no mismatch", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-fetch-all-" });
  try {
    const cache = DiskCache.open({ dir, keepFreeBytes: 0, chunkBytes: MiB })!;
    const bytes = patternBytes(64 * MiB, 7);
    const digest = await sha256(bytes);
    const source = cache.wrap(new MemorySource(bytes), { digest, origin: "o" }) as DiskCachedSource;
    assert.deepEqual(await source.read(0, bytes.length), bytes);
    await source.whenDurable();
    // Chunk 20 the least recently read: the next eviction takes it.
    for (let chunk = 0; chunk < 64; chunk++) if (chunk !== 20) await source.read(chunk * MiB, 1);
    const check = source.checkDigest(digest); // hashes 16 MiB, then yields
    assert.equal(source.evictChunks(MiB), MiB, "chunk 20 evicted");
    await new Promise((resolve) => setTimeout(resolve)); // the hash goes on past chunk 20
    assert.deepEqual(
      await source.read(20 * MiB + 5, 10),
      bytes.subarray(20 * MiB + 5, 20 * MiB + 15),
    );
    // Either the hash saw chunk 20 back in place, or it stopped at the hole: never a mismatch.
    assert.notEqual(await check, "mismatch");
    assert.deepEqual(await source.read(0, 16), bytes.subarray(0, 16), "the layer still reads");
    assert.equal(source.presentChunks(), 64);
    assert.equal(await source.checkDigest(digest), "ok");
    await source.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
