/**
 * A separate process using the disk cache (tests/disk_cache_*_test.ts): reads a whole
 * pattern blob through DiskCache in `readBytes` reads (shuffled by `seed` unless 0), checks
 * every byte, prints its stats as one JSON line. Killed with SIGKILL by the crash test.
 * Args: DIR SIZE_BYTES READ_BYTES SEED DELAY_MS [MAX_CACHE_BYTES]
 */
import { DiskCache } from "../../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../../lib/source/disk_cached.ts";
import { MemorySource, patternBytes } from "./memory_source.ts";

/**
 * The digest every child caches its blob under (tests/disk_cache_test.ts knows it), unless
 * DISK_CACHE_CHILD_DIGEST names another.
 */
const TEST_DIGEST = Deno.env.get("DISK_CACHE_CHILD_DIGEST") ?? "sha256:" + "ab".repeat(32);

const [dir, sizeText, readText, seedText, delayText, maxText] = Deno.args;
const size = Number(sizeText), readBytes = Number(readText), seed = Number(seedText);
const expected = patternBytes(size, 7);
const inner = new MemorySource(expected, { delayMs: () => Number(delayText) });
const cache = DiskCache.open({
  checkCompleteBlobs: false,
  dir,
  maxBytes: maxText ? Number(maxText) : undefined,
})!;
const source = cache.wrap(inner, { digest: TEST_DIGEST, origin: "test" }) as DiskCachedSource;
const offsets: number[] = [];
for (let offset = 0; offset < size; offset += readBytes) offsets.push(offset);
let x = seed;
for (let i = offsets.length - 1; seed && i > 0; i--) {
  x = (x * 1103515245 + 12345) >>> 0;
  const j = x % (i + 1);
  [offsets[i], offsets[j]] = [offsets[j], offsets[i]];
}
// A start line shared with other children (the concurrency test): each says it is ready, then
// waits for the parent's go, so a slow process start-up cannot let one finish before another.
const barrier = Deno.env.get("DISK_CACHE_CHILD_BARRIER");
if (barrier) {
  Deno.writeTextFileSync(`${barrier}.ready-${seed}`, "");
  for (let waitedMs = 0; waitedMs < 60_000; waitedMs += 5) {
    try {
      Deno.statSync(barrier);
      break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }
}
let wrong = 0;
await Promise.all([0, 1, 2, 3].map(async (lane) => {
  for (let i = lane; i < offsets.length; i += 4) {
    const offset = offsets[i];
    const length = Math.min(readBytes, size - offset);
    const got = await source.read(offset, length);
    for (let k = 0; k < length; k++) if (got[k] !== expected[offset + k]) wrong++;
  }
}));
console.log(JSON.stringify({ ...source.diskStats(), wrong, innerReads: inner.reads.length }));
await source.close();
