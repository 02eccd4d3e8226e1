/**
 * The persistent disk cache with real files, real processes and a real (tiny) tmpfs: bytes
 * fetched once across processes, crash safety under kill -9, eviction under the bound, a full
 * disk degrading to memory-only, and the verify hook.
 */
import assert from "node:assert/strict";
import { DEFAULT_DISK_CHUNK_BYTES as CHUNK, DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { isPresent } from "../lib/source/disk_cache_present.ts";
import { SYNC_QUIET_MS } from "../lib/source/disk_cache_sync.ts";
import { currentBootId } from "../lib/source/disk_cache_boot.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { REPO_ROOT, requires, root } from "./_support/requires.ts";

const MiB = 1 << 20;
/** The digest tests/_support/disk_cache_child.ts caches its blob under. */
const TEST_DIGEST = "sha256:" + "ab".repeat(32);
const CHILD = `${REPO_ROOT}/tests/_support/disk_cache_child.ts`;
const DENO = Deno.execPath();

interface ChildStats {
  fetchedBytes: number;
  diskHitBytes: number;
  waitedForOthers: number;
  wrong: number;
  innerReads: number;
}

function child(
  dir: string,
  size: number,
  readBytes: number,
  seed: number,
  delayMs: number,
  barrier?: string,
) {
  return new Deno.Command(DENO, {
    args: ["run", "-A", CHILD, dir, `${size}`, `${readBytes}`, `${seed}`, `${delayMs}`],
    env: barrier ? { DISK_CACHE_CHILD_BARRIER: barrier } : {},
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

async function runChild(...args: Parameters<typeof child>): Promise<ChildStats> {
  return await childStats(child(...args));
}

async function childStats(proc: Deno.ChildProcess): Promise<ChildStats> {
  const out = await proc.output();
  const text = new TextDecoder().decode(out.stdout);
  assert(out.success, `child failed: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(text.trim().split("\n").pop()!);
}

function blobBase(
  dir: string,
  digest = TEST_DIGEST,
  origin = "o-test",
  chunkBytes = CHUNK,
): string {
  return `${dir}/blobs/${digest.replace(":", "-")}.${origin}.c${chunkBytes}`;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function allocatedBytes(dir: string): number {
  let total = 0;
  for (const entry of Deno.readDirSync(`${dir}/blobs`)) {
    total += (Deno.statSync(`${dir}/blobs/${entry.name}`).blocks ?? 0) * 512;
  }
  return total;
}

Deno.test("disk cache: a second process re-reads the blob from disk with zero fetches", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-" });
  try {
    const size = 9 * MiB + 12345;
    const first = await runChild(dir, size, 256 * 1024, 3, 0);
    assert.deepEqual(first.wrong, 0);
    assert.deepEqual(first.fetchedBytes, size, "each chunk fetched once");
    const second = await runChild(dir, size, 100_000, 5, 0);
    assert.deepEqual(second.wrong, 0);
    assert.deepEqual(second.innerReads, 0, "no read reached the registry side");
    assert.deepEqual(second.diskHitBytes, size);
    assert.deepEqual(Deno.statSync(dir).mode! & 0o777, 0o700);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: two processes filling one blob at once fetch each chunk once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-" });
  try {
    const size = 24 * MiB;
    // Both start reading together (a start-up seconds apart under load once let one finish
    // before the other began: "the two fills met" failed).
    const barrier = `${dir}/go`;
    const procs = [11, 12].map((seed) => child(dir, size, 512 * 1024, seed, 20, barrier));
    const stats = Promise.all(procs.map(childStats));
    for (let waitedMs = 0; waitedMs < 60_000; waitedMs += 10) {
      if (exists(`${barrier}.ready-11`) && exists(`${barrier}.ready-12`)) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    Deno.writeTextFileSync(barrier, "");
    const [a, b] = await stats;
    assert.deepEqual(a.wrong + b.wrong, 0);
    assert.deepEqual(a.fetchedBytes + b.fetchedBytes, size, JSON.stringify({ a, b }));
    assert(a.waitedForOthers + b.waitedForOthers > 0, "the two fills met");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: kill -9 in the middle of fills leaves no chunk present with other bytes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-" });
  try {
    const size = 96 * MiB;
    const expected = patternBytes(size, 7);
    const base = blobBase(dir);
    let partial = 0;
    for (let round = 0; round < 10; round++) {
      // Each source read takes 100 ms, so the blob takes over a second to fill whatever the
      // machine's speed; the kill comes right after the first chunk is marked present, plus
      // a random part of a read, so it lands among fills in flight (not after the last one).
      const proc = child(dir, size, 8 * MiB, round + 1, 100);
      for (let waitedMs = 0; waitedMs < 20_000; waitedMs += 5) {
        if (exists(`${base}.map`) && Deno.readFileSync(`${base}.map`).some(isPresent)) break;
        await new Promise((r) => setTimeout(r, 5));
      }
      await new Promise((r) => setTimeout(r, Math.random() * 150));
      try {
        proc.kill("SIGKILL");
      } catch { /* finished already */ }
      await proc.output();
      let map: Uint8Array, data: Uint8Array;
      try {
        map = Deno.readFileSync(`${base}.map`);
        data = Deno.readFileSync(`${base}.data`);
      } catch {
        continue; // killed before it created the files
      }
      // WRITTEN (2) as well as PRESENT (1): the killed process's page cache outlives it.
      const present = map.filter(isPresent).length;
      if (present > 0 && present < map.length) partial++;
      map.forEach((byte, chunk) => {
        if (!isPresent(byte)) return;
        const from = chunk * CHUNK, to = Math.min(size, from + CHUNK);
        for (let i = from; i < to; i++) {
          if (data[i] !== expected[i]) throw new Error(`chunk ${chunk} present with wrong bytes`);
        }
      });
      if (present === map.length) Deno.removeSync(`${dir}/blobs`, { recursive: true });
    }
    assert(partial > 0, "some kill landed mid-blob");
    const finish = await runChild(dir, size, 4 * MiB, 0, 0);
    assert.deepEqual(finish.wrong, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: stays under its bound, evicting old blobs then old chunks", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-" });
  try {
    const bound = 8 * MiB;
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir, maxBytes: bound })!;
    const digests = [1, 2, 3, 4].map((n) => "sha256:" + `${n}`.repeat(64));
    for (const [n, digest] of digests.entries()) {
      const bytes = patternBytes(3 * MiB, n + 1);
      const source = cache.wrap(new MemorySource(bytes), { digest, origin: "test" });
      assert.deepEqual(await source.read(0, bytes.length), bytes);
      await source.close!();
      assert(allocatedBytes(dir) <= bound, `after blob ${n}: ${allocatedBytes(dir)}`);
    }
    const names = [...Deno.readDirSync(`${dir}/blobs`)].map((e) => e.name).join(" ");
    assert(!names.includes(digests[0].slice(7, 20)), `oldest blob evicted: ${names}`);
    assert(names.includes(digests[3].slice(7, 20)), "newest blob kept");

    // One blob larger than the bound: its own least recently read chunks go.
    const big = patternBytes(20 * MiB, 9);
    const inner = new MemorySource(big);
    const source = cache.wrap(inner, { digest: "sha256:" + "9".repeat(64), origin: "test" });
    for (let offset = 0; offset < big.length; offset += 2 * MiB) {
      assert.deepEqual(await source.read(offset, 2 * MiB), big.subarray(offset, offset + 2 * MiB));
      // Reads do not wait for their fill's sync; the bound is kept once the fill is durable.
      await (source as DiskCachedSource).whenDurable();
      assert(allocatedBytes(dir) <= bound, `at ${offset}: ${allocatedBytes(dir)}`);
    }
    assert((source as DiskCachedSource).diskStats().evictedChunks > 0);
    const before = inner.reads.length;
    assert.deepEqual(await source.read(0, MiB), big.subarray(0, MiB), "evicted chunk refetched");
    assert.deepEqual(inner.reads.length, before + 1);
    await source.close!();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "disk cache: a full disk degrades to memory-only with one warning, right bytes",
  ignore: requires(root()),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "disk-cache-tmpfs-" });
    const mount = new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=4m", "tmpfs", dir],
    });
    assert((await mount.output()).success, "mount tmpfs");
    try {
      Deno.chmodSync(dir, 0o700);
      const warnings: string[] = [];
      // No reserve: the disk filled by others between two looks at it (and the bound alike).
      const cache = DiskCache.open({
        checkCompleteBlobs: false,
        dir,
        keepFreeBytes: 0,
        onWarning: (m) => warnings.push(m),
      })!;
      const bytes = patternBytes(16 * MiB, 5);
      const source = cache.wrap(new MemorySource(bytes), { digest: TEST_DIGEST, origin: "test" });
      for (let offset = 0; offset < bytes.length; offset += MiB / 2) {
        assert.deepEqual(
          await source.read(offset, MiB / 2),
          bytes.subarray(offset, offset + MiB / 2),
        );
      }
      assert.deepEqual(await source.read(0, bytes.length), bytes);
      assert((source as DiskCachedSource).diskStats().degraded);
      assert.deepEqual(warnings.length, 1, warnings.join("\n"));
      assert(/No space left|ENOSPC|space/i.test(warnings[0]), warnings[0]);
      await source.close!();
    } finally {
      await new Deno.Command("umount", { args: ["-l", dir] }).output();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("disk cache: a chunk that fails verify is never stored and the read fails", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-" });
  try {
    const bytes = patternBytes(3 * MiB, 2);
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir, chunkBytes: MiB })!;
    const source = cache.wrap(new MemorySource(bytes), {
      digest: TEST_DIGEST,
      origin: "test",
      verify: (chunk) => chunk !== 1,
    });
    assert.deepEqual(await source.read(0, 1000), bytes.subarray(0, 1000));
    await assert.rejects(() => source.read(MiB + 5, 10), /failed verification/);
    assert.deepEqual(await source.read(2 * MiB, 10), bytes.subarray(2 * MiB, 2 * MiB + 10));
    await (source as DiskCachedSource).whenDurable();
    assert.deepEqual([...Deno.readFileSync(`${blobBase(dir, TEST_DIGEST, "verified", MiB)}.map`)], [
      1,
      0,
      1,
    ]);
    await source.close!();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: CachedSource in front keeps no chunks and reads ahead in windows", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-" });
  try {
    const bytes = patternBytes(32 * MiB, 4);
    const inner = new MemorySource(bytes);
    const warnings: string[] = [];
    const onWarning = (message: string) => warnings.push(message);
    const disk = DiskCache.open({ checkCompleteBlobs: false, dir, onWarning })!.wrap(inner, {
      digest: TEST_DIGEST,
      origin: "test",
    });
    assert.notEqual(disk, inner, `the blob is behind the disk cache: ${warnings.join("; ")}`);
    const cached = new CachedSource(disk);
    const step = 128 * 1024;
    for (let offset = 0; offset < bytes.length; offset += step) {
      const got = await cached.read(offset, step);
      assert.deepEqual(got, bytes.subarray(offset, offset + step));
    }
    const stats = cached.stats();
    assert.equal(stats.cachedBytes, 0, `bytes are served from the file, not held ${warnings}`);
    assert.equal(stats.disk?.fetchedBytes, bytes.length, "each byte fetched once");
    // 256 reads of 128 KiB: readahead windows (growing to 8 MiB) make a handful of fetches.
    assert(inner.reads.length <= 24, `${inner.reads.length} underlying reads`);
    await cached.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: readIfPresent finds an origin's own and table-checked files, no other origin's", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-" });
  try {
    const bytes = patternBytes(CHUNK * 3, 6);
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir })!;
    const probe = (origin: string) =>
      cache.readIfPresent({ digest: TEST_DIGEST, origin }, bytes.length, 100, 1000);
    assert.equal(probe("http://r"), undefined, "nothing cached yet");
    const tabled = cache.wrap(new MemorySource(bytes), {
      digest: TEST_DIGEST,
      origin: "http://r#t-0123456789abcdef",
    });
    await tabled.read(0, 10);
    // Not synced yet (WRITTEN, this boot's): found already.
    assert.deepEqual(probe("http://r"), bytes.subarray(100, 1100));
    await (tabled as DiskCachedSource).whenDurable();
    assert.deepEqual(probe("http://r"), bytes.subarray(100, 1100));
    assert.equal(probe("http://other"), undefined, "another origin's bytes are not used");
    assert.equal(
      cache.readIfPresent({ digest: TEST_DIGEST, origin: "http://r" }, bytes.length, CHUNK, 10),
      undefined,
      "a chunk not present",
    );
    await tabled.close!();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: reads do not wait for fdatasync; chunks are WRITTEN at once, PRESENT once synced", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-" });
  try {
    const bytes = patternBytes(10 * MiB, 7);
    const cache = DiskCache.open({ checkCompleteBlobs: false, dir, chunkBytes: MiB })!;
    const inner = new MemorySource(bytes);
    const source = cache.wrap(inner, {
      digest: TEST_DIGEST,
      origin: "test",
      verify: (chunk, got) => got[0] === bytes[chunk * MiB],
    }) as DiskCachedSource;
    const base = blobBase(dir, TEST_DIGEST, "verified", MiB);
    const map = () => [...Deno.readFileSync(`${base}.map`)];
    const waitForMap = async (expected: number[], withinMs: number) => {
      for (const start = Date.now(); Date.now() - start < withinMs;) {
        if (map().join() === expected.join()) return;
        await new Promise((r) => setTimeout(r, 5));
      }
      assert.deepEqual(map(), expected);
    };
    // Eight parallel cold reads of different chunks, as the metadata prefetch makes them.
    const reads = [0, 1, 2, 3, 4, 5, 6, 7].map((c) => source.read(c * MiB + 100, 4096));
    const got = await Promise.all(reads);
    got.forEach((g, c) => assert.deepEqual(g, bytes.subarray(c * MiB + 100, c * MiB + 4196)));
    // Readable by every process at once (WRITTEN, this boot's), not yet synced.
    await waitForMap([2, 2, 2, 2, 2, 2, 2, 2, 0, 0], 500);
    assert.equal(Deno.readTextFileSync(`${base}.boot`), currentBootId());
    assert.equal(source.diskStats().syncs, 0);
    assert.equal(source.diskStats().readsWaitedForSync, 0);
    await source.whenDurable();
    assert.deepEqual(map(), [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
    assert.equal(source.diskStats().syncs, 1, "one sync for all eight fills");
    // Now plain disk hits, still no second fetch.
    assert.deepEqual(await source.read(3 * MiB, 10), bytes.subarray(3 * MiB, 3 * MiB + 10));
    assert.equal(inner.reads.length, 8);
    // Without whenDurable: synced once the fills were quiet for SYNC_QUIET_MS.
    assert.deepEqual(await source.read(9 * MiB, 10), bytes.subarray(9 * MiB, 9 * MiB + 10));
    await waitForMap([1, 1, 1, 1, 1, 1, 1, 1, 0, 2], 500);
    await waitForMap([1, 1, 1, 1, 1, 1, 1, 1, 0, 1], SYNC_QUIET_MS + 1000);
    assert.equal(source.diskStats().syncs, 2);
    await source.close!();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: WRITTEN chunks of another boot are dropped at open and fetched again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-" });
  try {
    const bytes = patternBytes(4 * MiB, 5);
    const base = blobBase(dir, TEST_DIGEST, "o-test", MiB);
    const open = (inner: MemorySource) =>
      DiskCache.open({ checkCompleteBlobs: false, dir, chunkBytes: MiB })!.wrap(inner, {
        digest: TEST_DIGEST,
        origin: "test",
      }) as DiskCachedSource;
    const first = open(new MemorySource(bytes));
    assert.deepEqual(await first.read(0, 2 * MiB), bytes.subarray(0, 2 * MiB));
    await first.whenDurable();
    assert.deepEqual(await first.read(2 * MiB, MiB), bytes.subarray(2 * MiB, 3 * MiB));
    await first.whenDurable();
    // As a power loss would leave it: chunk 2 marked WRITTEN in that boot, its bytes lost.
    const mapFd = Deno.openSync(`${base}.map`, { write: true });
    mapFd.writeSync(new Uint8Array([1, 1, 2, 0]));
    mapFd.close();
    const dataFd = Deno.openSync(`${base}.data`, { write: true });
    dataFd.seekSync(2 * MiB, Deno.SeekMode.Start);
    dataFd.writeSync(new Uint8Array(MiB));
    dataFd.close();
    await first.close!();
    // Same boot: WRITTEN is trusted (here wrongly, as the bytes were zeroed by hand)...
    const again = new MemorySource(bytes);
    const sameBoot = open(again);
    assert.deepEqual(sameBoot.presentChunks(), 3);
    await sameBoot.close!();
    // ...another boot: dropped, so the chunk is fetched again with the right bytes.
    Deno.writeTextFileSync(`${base}.boot`, "00000000-0000-4000-8000-000000000000");
    const mapBefore = Deno.readFileSync(`${base}.map`);
    mapBefore[2] = 2;
    Deno.writeFileSync(`${base}.map`, mapBefore);
    const inner = new MemorySource(bytes);
    const nextBoot = open(inner);
    assert.deepEqual([...Deno.readFileSync(`${base}.map`)], [1, 1, 0, 0]);
    assert.equal(Deno.readTextFileSync(`${base}.boot`), currentBootId());
    assert.deepEqual(await nextBoot.read(0, 3 * MiB), bytes.subarray(0, 3 * MiB));
    assert.deepEqual(inner.reads.map(({ offset }) => offset), [2 * MiB]);
    await nextBoot.close!();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
