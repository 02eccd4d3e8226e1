/**
 * The disk cache's bound as a host sees it: `--fetch-all` never fetches a layer again and
 * again when the cache cannot hold it, fills by another process count toward the bound, and
 * the cache leaves its file system's reserve free (a real tmpfs) instead of filling it.
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { statFs } from "../ffi/files.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { REPO_ROOT, requires, root } from "./_support/requires.ts";
import { sleep, waitFor } from "./_support/wait.ts";

const MiB = 1 << 20;
const CHILD = `${REPO_ROOT}/tests/_support/disk_cache_child.ts`;

function allocatedBytes(dir: string): number {
  let total = 0;
  for (const entry of Deno.readDirSync(`${dir}/blobs`)) {
    total += (Deno.statSync(`${dir}/blobs/${entry.name}`).blocks ?? 0) * 512;
  }
  return total;
}

function fetchedBytes(source: MemorySource): number {
  return source.reads.reduce((sum, read) => sum + read.length, 0);
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes.slice()));
  return "sha256:" + [...hash].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** A blob source answering after 1 ms, as a registry would, not in the same tick. */
function remoteBlob(size: number, seed: number): MemorySource {
  return new MemorySource(patternBytes(size, seed), { delayMs: () => 1 });
}

Deno.test("disk cache --fetch-all: a layer larger than the cache is not completed, nor fetched again and again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-bound-" });
  const warnings: string[] = [];
  try {
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      maxBytes: 8 * MiB,
      keepFreeBytes: 0,
      completeInBackground: true,
      onWarning: (message) => warnings.push(message),
      onNotice: () => {},
    })!;
    const inner = remoteBlob(20 * MiB, 3);
    const digest = "sha256:" + "7".repeat(64);
    const source = cache.wrap(inner, { digest, origin: "test" });
    await sleep(1500);
    assert.deepEqual(inner.reads, [], "nothing fetched that nobody read");
    assert.deepEqual(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0], new RegExp(`--fetch-all: ${digest} \\(20\\.0 MiB\\) is larger`));
    assert.match(warnings[0], /--disk-cache-size/);
    // Reads are served as ever.
    assert.deepEqual(
      await source.read(5 * MiB, 1000),
      inner.bytes.subarray(5 * MiB, 5 * MiB + 1000),
    );
    await source.close!();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache --fetch-all: layers that fit alone but not together stop once evicted", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-bound-" });
  const warnings: string[] = [], notices: string[] = [];
  try {
    const cache = DiskCache.open({
      dir,
      maxBytes: 16 * MiB,
      keepFreeBytes: 0,
      completeInBackground: true,
      onWarning: (message) => warnings.push(message),
      onNotice: (message) => notices.push(message),
    })!;
    const inners = [1, 2].map((seed) => remoteBlob(12 * MiB, seed));
    const digests = await Promise.all(inners.map((inner) => sha256(inner.bytes)));
    // Opened together, as a mount opens its layers: their completions run side by side.
    const sources = inners.map((inner, n) =>
      cache.wrap(inner, { digest: digests[n], origin: "test" })
    );
    await waitFor("both completions to end", () => warnings.length + notices.length >= 2, 30_000);
    const fetched = inners.map(fetchedBytes);
    await sleep(1000);
    assert.deepEqual(inners.map(fetchedBytes), fetched, "no fetch once ended");
    // Each blob at most twice over: one pass, then the pass that found its chunks evicted.
    for (const bytes of fetched) assert(bytes <= 2 * 12 * MiB, `${fetched}`);
    assert(warnings.length >= 1, `at least one stopped: ${notices.join("\n")}`);
    for (const warning of warnings) {
      assert.match(
        warning,
        /: the disk cache \(16\.0 MiB\) cannot hold it beside the other layers/,
      );
    }
    // One that completed before its chunks went says so, with its digest checked.
    for (const notice of notices) {
      assert.match(notice, /all 12582912 bytes local .*digest verified/);
    }
    assert(allocatedBytes(dir) <= 16 * MiB, `${allocatedBytes(dir)}`);
    for (const source of sources) await source.close!();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: another process's fills count toward the bound", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-bound-" });
  try {
    const bound = 8 * MiB;
    // Opened first, so what the other process writes is not in the count taken at open.
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      maxBytes: bound,
      keepFreeBytes: 0,
    })!;
    const inner = new MemorySource(patternBytes(6 * MiB, 4));
    const source = cache.wrap(inner, { digest: "sha256:" + "4".repeat(64), origin: "test" });
    const otherDigest = "sha256:" + "5".repeat(64);
    const other = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", CHILD, dir, `${6 * MiB}`, `${MiB}`, "0", "0", `${bound}`],
      env: { DISK_CACHE_CHILD_DIGEST: otherDigest },
    }).output();
    assert(other.success, new TextDecoder().decode(other.stderr));
    assert(allocatedBytes(dir) >= 6 * MiB, "the other process cached its blob");
    for (let offset = 0; offset < inner.size; offset += MiB) {
      assert.deepEqual(await source.read(offset, MiB), inner.bytes.subarray(offset, offset + MiB));
    }
    await (source as DiskCachedSource).whenDurable();
    assert(allocatedBytes(dir) <= bound, `${allocatedBytes(dir)} bytes on disk`);
    const names = [...Deno.readDirSync(`${dir}/blobs`)].map((entry) => entry.name).join(" ");
    assert(!names.includes("5555555555"), `the other process's unused blob evicted: ${names}`);
    await source.close!();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "disk cache: leaves --disk-cache-keep-free free on its file system (a real tmpfs)",
  ignore: requires(root()),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "disk-cache-keep-free-" });
    const mount = new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", dir],
    });
    assert((await mount.output()).success, "mount tmpfs");
    try {
      const keepFree = 8 * MiB;
      const warnings: string[] = [];
      const cache = DiskCache.open({
        checkCompleteBlobs: false,
        dir,
        keepFreeBytes: keepFree,
        onWarning: (message) => warnings.push(message),
      })!;
      const bytes = patternBytes(12 * MiB, 6);
      const source = cache.wrap(new MemorySource(bytes), {
        digest: "sha256:" + "6".repeat(64),
        origin: "test",
      }) as DiskCachedSource;
      // Room is reserved before a fill writes: only the small files beside the data are not.
      const slackBytes = cache.chunkBytes;
      for (let offset = 0; offset < bytes.length; offset += MiB) {
        assert.deepEqual(await source.read(offset, MiB), bytes.subarray(offset, offset + MiB));
        await source.whenDurable();
        const stats = statFs(dir);
        const available = Number(stats.availableBlocks) * stats.blockSizeBytes;
        assert(available >= keepFree - slackBytes, `at ${offset}: ${available} bytes free`);
      }
      assert(!source.diskStats().degraded, "never ran out of space");
      assert(source.diskStats().evictedChunks > 0);
      assert.deepEqual(warnings.length, 1, warnings.join("\n"));
      assert.match(warnings[0], /leaving 8\.0 MiB free .*--disk-cache-keep-free/);
      assert.deepEqual(await source.read(0, bytes.length), bytes);
      await source.close();
    } finally {
      // -l: a failed assertion can leave the blob's files open.
      await new Deno.Command("umount", { args: ["-l", dir] }).output();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("disk cache: its directory removed under an open blob: reads go on, one warning", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-bound-" });
  const warnings: string[] = [];
  try {
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      maxBytes: 8 * MiB,
      keepFreeBytes: 0,
      onWarning: (message) => warnings.push(message),
    })!;
    const inner = new MemorySource(patternBytes(12 * MiB, 8));
    const source = cache.wrap(inner, { digest: "sha256:" + "8".repeat(64), origin: "test" });
    assert.deepEqual(await source.read(0, MiB), inner.bytes.subarray(0, MiB));
    // An operator's `rm -rf /var/cache/erofs-oci` while mounted.
    await Deno.remove(dir, { recursive: true });
    for (let offset = MiB; offset < inner.size; offset += MiB) {
      assert.deepEqual(await source.read(offset, MiB), inner.bytes.subarray(offset, offset + MiB));
    }
    assert.deepEqual(await source.read(0, inner.size), inner.bytes);
    assert.deepEqual(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0], /No such file or directory.*; not evicting/);
    await source.close!();
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("disk cache: chunks another process filled in a blob open here are evicted before those read here", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-bound-" });
  try {
    const bound = 4 * MiB;
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      maxBytes: bound,
      keepFreeBytes: 0,
    })!;
    // Layer X is open here (an image mounted, not read yet)...
    const xDigest = "sha256:" + "a1".repeat(32);
    const x = cache.wrap(new MemorySource(patternBytes(3 * MiB, 7)), {
      digest: xDigest,
      origin: "test",
    }) as DiskCachedSource;
    // ...while another mount of an image sharing it reads it whole, then ends.
    const other = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", CHILD, dir, `${3 * MiB}`, `${MiB}`, "0", "0", `${bound}`],
      env: { DISK_CACHE_CHILD_DIGEST: xDigest },
    }).output();
    assert(other.success, new TextDecoder().decode(other.stderr));
    assert.equal(x.presentChunks(), x.chunkCount, "X is whole on disk");
    // This process reads layer Y over and over: X's chunks, never read here, make the room.
    const y = new MemorySource(patternBytes(3 * MiB / 2, 9));
    const ySource = cache.wrap(y, { digest: "sha256:" + "b2".repeat(32), origin: "test" });
    for (let pass = 0; pass < 3; pass++) {
      for (let offset = 0; offset < y.size; offset += MiB / 4) {
        const want = y.bytes.subarray(offset, offset + MiB / 4);
        assert.deepEqual(await ySource.read(offset, MiB / 4), want);
      }
      await (ySource as DiskCachedSource).whenDurable();
    }
    assert.equal(fetchedBytes(y), y.size, "Y fetched once, not once per pass");
    assert(x.presentChunks() < x.chunkCount, "X's chunks were evicted instead");
    assert(allocatedBytes(dir) <= bound, `${allocatedBytes(dir)} bytes on disk`);
    await ySource.close!();
    await x.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache: eviction takes the least recently read chunks of all open blobs, not a whole blob first", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-bound-" });
  try {
    const cache = DiskCache.open({
      checkCompleteBlobs: false,
      dir,
      maxBytes: 16 * MiB,
      keepFreeBytes: 0,
      chunkBytes: MiB,
    })!;
    const small = new MemorySource(patternBytes(4 * MiB, 7));
    const big = new MemorySource(patternBytes(24 * MiB, 8));
    const hot = cache.wrap(small, { digest: "sha256:" + "a".repeat(64), origin: "test" });
    const bulk = cache.wrap(big, { digest: "sha256:" + "b".repeat(64), origin: "test" });
    const readAll = async (source: typeof hot, inner: MemorySource, from: number, to: number) => {
      for (let offset = from; offset < to; offset += MiB) {
        assert.deepEqual(
          await source.read(offset, MiB),
          inner.bytes.subarray(offset, offset + MiB),
        );
      }
      await (source as DiskCachedSource).whenDurable();
    };
    // The big blob's first 10 MiB, then the small one's 4 MiB (read last: the hot set).
    await readAll(bulk, big, 0, 10 * MiB);
    await readAll(hot, small, 0, 4 * MiB);
    const hotFetched = fetchedBytes(small);
    // More of the big blob: room is made from its own older chunks, not from the hot set,
    // though the big blob is the one read now (it emptied the small one, read a moment ago).
    await readAll(bulk, big, 10 * MiB, 16 * MiB);
    assert(allocatedBytes(dir) <= 16 * MiB, `${allocatedBytes(dir)}`);
    await readAll(hot, small, 0, 4 * MiB);
    assert.equal(fetchedBytes(small), hotFetched, "the hot set was fetched again");
    await hot.close!();
    await bulk.close!();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
