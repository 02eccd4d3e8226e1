import assert from "node:assert/strict";
import { DiskCache } from "./disk_cache.ts";
import type { DiskCachedSource } from "./disk_cached.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";

const DIGEST = `sha256:${"5e".repeat(32)}`;

async function withCache(body: (cache: DiskCache, dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "sidecar-ahead-" });
  try {
    await body(DiskCache.open({ checkCompleteBlobs: false, dir, onWarning: () => {} })!, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function sidecarFiles(dir: string): string[] {
  return [...Deno.readDirSync(`${dir}/blobs`)].filter((e) => e.name.endsWith(".meta"))
    .map((e) => `${dir}/blobs/${e.name}`);
}

Deno.test("DiskCache.readSidecarAhead: the source wrapped for the key reads what was read ahead", async () => {
  await withCache(async (cache, dir) => {
    const kept = patternBytes(100_000, 3);
    const key = { digest: DIGEST, origin: "https://registry.test#t-0123456789abcdef" };
    const first = cache.wrap(new MemorySource(patternBytes(1 << 20)), key) as DiskCachedSource;
    first.writeSidecar(kept);
    await first.close();
    const [file] = sidecarFiles(dir);
    assert.ok(file, "no sidecar written");

    cache.readSidecarAhead(key, 1 << 20);
    // Gone after the read ahead finished: only that read can still produce its bytes.
    await new Promise((resolve) => setTimeout(resolve, 50));
    Deno.removeSync(file);
    const second = cache.wrap(new MemorySource(patternBytes(1 << 20)), key) as DiskCachedSource;
    assert.deepEqual(await second.readSidecar(1 << 20), kept);
    // Once: a later read looks at the file again.
    assert.equal(await second.readSidecar(1 << 20), undefined);
    await second.close();
  });
});

Deno.test("DiskCache.readSidecarAhead: a sidecar larger than asked, or another key's, is not taken", async () => {
  await withCache(async (cache) => {
    const key = { digest: DIGEST, origin: "https://registry.test" };
    const first = cache.wrap(new MemorySource(patternBytes(1 << 20)), key) as DiskCachedSource;
    first.writeSidecar(patternBytes(5000));
    await first.close();
    cache.readSidecarAhead(key, 1 << 20);
    cache.readSidecarAhead({ ...key, origin: "https://other.test" }, 1 << 20);
    const again = cache.wrap(new MemorySource(patternBytes(1 << 20)), key) as DiskCachedSource;
    // The caller's bound applies to what was read ahead too.
    assert.equal(await again.readSidecar(4999), undefined);
    assert.deepEqual(await again.readSidecar(5000), patternBytes(5000));
    await again.close();
    const other = cache.wrap(
      new MemorySource(patternBytes(1 << 20)),
      { ...key, origin: "https://other.test" },
    ) as DiskCachedSource;
    assert.equal(await other.readSidecar(1 << 20), undefined);
    await other.close();
  });
});
