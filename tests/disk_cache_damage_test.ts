/**
 * The cache files of an open blob damaged under a reader (truncated by a crash of another tool,
 * an I/O error of the disk): reads go on from the source with the right bytes and one warning,
 * instead of failing with EIO from then on.
 */
import assert from "node:assert/strict";
import { DEFAULT_DISK_CHUNK_BYTES as CHUNK, DiskCache } from "../lib/source/disk_cache.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";

for (const damage of ["map", "data"] as const) {
  Deno.test(`disk cache: the ${damage} file truncated under an open blob: right bytes, one warning`, async () => {
    const dir = await Deno.makeTempDir();
    const warnings: string[] = [];
    try {
      const cache = DiskCache.open({
        checkCompleteBlobs: false,
        dir,
        onWarning: (message) => warnings.push(message),
      })!;
      const bytes = patternBytes(4 * CHUNK, 7);
      const source = cache.wrap(new MemorySource(bytes), {
        digest: `sha256:${"07".repeat(32)}`,
        origin: "https://r.test",
      });
      try {
        assert.deepEqual(await source.read(0, 2 * CHUNK), bytes.subarray(0, 2 * CHUNK));
        const [file] = [...Deno.readDirSync(`${dir}/blobs`)].filter((e) =>
          e.name.endsWith(`.${damage}`)
        ).map((e) => `${dir}/blobs/${e.name}`);
        Deno.truncateSync(file, damage === "map" ? 3 : 0);
        for (const [offset, length] of [[CHUNK, 100], [0, 4 * CHUNK], [3 * CHUNK + 5, 10]]) {
          assert.deepEqual(
            await source.read(offset, length),
            bytes.subarray(offset, offset + length),
          );
        }
        assert.equal(warnings.length, 1, warnings.join("\n"));
        assert.match(warnings[0], /continuing with the memory cache only/);
      } finally {
        await source.close?.();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
