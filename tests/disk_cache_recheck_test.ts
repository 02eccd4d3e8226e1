/**
 * Bytes read back from the disk cache are checked against the layer's chunk table once per
 * process before any reader gets them: a byte flipped in a cache file (the disk, another run)
 * is dropped and fetched again, never served — through readInto and through the reader
 * thread's direct reads.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { ChunkTable } from "../lib/verify/chunk_table.ts";
import { VerifiedSource } from "../lib/verify/verified_source.ts";
import { directReadArg, directReaderBody } from "../lib/source/direct_read_body.ts";
import { errno, libc } from "../ffi/libc.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { flipByte } from "./_support/flip_byte.ts";

const KiB = 1024, MiB = 1024 * KiB;
const CACHE_CHUNK = 256 * KiB;
const BLOB = patternBytes(3 * MiB + 12345, 46);
const DIGEST = "sha256:" + createHash("sha256").update(BLOB).digest("hex");

function sha256s(bytes: Uint8Array, unit: number): Uint8Array {
  const count = Math.ceil(bytes.length / unit);
  const out = new Uint8Array(count * 32);
  for (let i = 0; i < count; i++) {
    out.set(createHash("sha256").update(bytes.subarray(i * unit, (i + 1) * unit)).digest(), i * 32);
  }
  return out;
}

function tableOf(subchunks: boolean): ChunkTable {
  const hex = (d: Uint8Array) => Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
  return ChunkTable.of(
    DIGEST,
    BLOB.length,
    MiB,
    sha256s(BLOB, MiB),
    undefined,
    subchunks ? { bytes: 64 * KiB, hex: hex(sha256s(BLOB, 64 * KiB)) } : undefined,
  );
}

interface Opened {
  source: DiskCachedSource;
  registry: MemorySource;
  warnings: string[];
}

function open(dir: string, table: ChunkTable, notices: string[] = []): Opened {
  const warnings: string[] = [];
  const cache = DiskCache.open({
    dir,
    chunkBytes: CACHE_CHUNK,
    onWarning: (m) => warnings.push(m),
    onNotice: (m) => notices.push(m),
    completeInBackground: notices.length > 0,
  });
  assert(cache, warnings.join("\n"));
  const registry = new MemorySource(BLOB);
  const verified = new VerifiedSource(registry, table, { origin: "test", onMismatch: () => {} });
  const source = cache.wrap(verified, { digest: DIGEST, origin: "o-test" }) as DiskCachedSource;
  assert.equal(typeof source.diskStats, "function", "wrapped by the disk cache");
  return { source, registry, warnings };
}

function flipInDataFile(dir: string, offset: number): void {
  const name = [...Deno.readDirSync(`${dir}/blobs`)].find((e) => e.name.endsWith(".data"))!.name;
  flipByte(`${dir}/blobs/${name}`, offset, 0x40);
}

async function readAll(source: DiskCachedSource): Promise<Uint8Array> {
  const out = new Uint8Array(BLOB.length);
  for (let at = 0; at < out.length; at += 100 * KiB) {
    await source.readInto(at, out.subarray(at, Math.min(out.length, at + 100 * KiB)));
  }
  return out;
}

/** A first process reads the whole blob into the cache; then a byte of its data file flips. */
async function cachedThenFlipped(dir: string, table: ChunkTable, flipAt: number): Promise<void> {
  const first = open(dir, table);
  assert.deepEqual(await readAll(first.source), BLOB);
  await first.source.whenDurable();
  await first.source.close();
  flipInDataFile(dir, flipAt);
}

for (const subchunks of [true, false]) {
  const units = subchunks ? "64 KiB subchunks" : "1 MiB chunks only";
  Deno.test(`disk cache re-check (${units}): a byte flipped in the data file is fetched again`, async () => {
    const dir = Deno.makeTempDirSync({ prefix: "erofs-oci-recheck-" });
    try {
      const table = tableOf(subchunks);
      // Chunk 9 of the cache, chunk 2 of the table.
      await cachedThenFlipped(dir, table, 2 * MiB + 300 * KiB + 7);
      const second = open(dir, table);
      assert.deepEqual(await readAll(second.source), BLOB, "never the flipped byte");
      const stats = second.source.diskStats();
      // With subchunks only the damaged cache chunk goes; else the table chunk's four.
      assert.equal(stats.damagedChunks, subchunks ? 1 : 4, JSON.stringify(stats));
      assert.match(
        second.warnings.join("\n"),
        new RegExp(`kept bytes at offset \\d+ do not match the layer's chunk table`),
      );
      // Fetched again: the table chunk holding the flip, nothing else.
      assert.deepEqual(second.registry.reads, [{ offset: 2 * MiB, length: MiB }]);
      await second.source.close();

      // Mended on disk: the next process reads it all with no fetch and no warning.
      const third = open(dir, table);
      assert.deepEqual(await readAll(third.source), BLOB);
      assert.equal(third.source.diskStats().damagedChunks, 0);
      assert.deepEqual(third.registry.reads, []);
      assert.deepEqual(third.warnings, []);
      await third.source.close();
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

Deno.test("disk cache re-check: a table chunk only partly kept is completed, then checked", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "erofs-oci-recheck-" });
  try {
    const table = tableOf(false);
    const first = open(dir, table);
    const head = new Uint8Array(4096);
    await first.source.readInto(0, head);
    await first.source.whenDurable();
    await first.source.close();
    flipInDataFile(dir, 100);

    const second = open(dir, table);
    const again = new Uint8Array(4096);
    await second.source.readInto(0, again);
    assert.deepEqual(again, BLOB.subarray(0, 4096));
    assert(second.source.diskStats().damagedChunks >= 1);
    await second.source.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("disk cache re-check: the reader thread's direct reads wait until a chunk is checked", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "erofs-oci-recheck-" });
  try {
    const table = tableOf(true);
    await cachedThenFlipped(dir, table, 10);

    const second = open(dir, table);
    const files = second.source.openDirectReads();
    assert(files, "direct reads offered");
    try {
      const direct = directReaderBody(libc(), errno, directReadArg(files));
      const dest = new Uint8Array(4096);
      assert.equal(direct(MiB, dest), false, "kept but not checked here: not read directly");
      assert.equal(direct(0, dest), false);
      await second.source.readInto(MiB, new Uint8Array(1));
      assert.equal(direct(MiB, dest), true, "checked by the read through this thread");
      assert.deepEqual(dest, BLOB.subarray(MiB, MiB + 4096));
      assert.equal(direct(0, dest), false, "the damaged chunk is still not checked");
      await second.source.readInto(0, new Uint8Array(1));
      await second.source.whenDurable(); // its fetch's write lock is held until the sync
      assert.equal(direct(0, dest), true);
      assert.deepEqual(dest, BLOB.subarray(0, 4096));
      assert.equal(second.source.diskStats().damagedChunks, 1);
    } finally {
      files.close();
    }
    await second.source.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("disk cache re-check: --fetch-all of a damaged kept blob mends it, then verifies the digest", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "erofs-oci-recheck-" });
  try {
    const table = tableOf(true);
    await cachedThenFlipped(dir, table, MiB + 5);

    const notices = ["(completing)"];
    const second = open(dir, table, notices);
    const deadline = Date.now() + 20_000;
    while (notices.length < 2 && second.warnings.length < 2 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.match(
      notices.join("\n"),
      /all \d+ bytes local .*digest verified/,
      second.warnings.join("\n"),
    );
    assert.doesNotMatch(second.warnings.join("\n"), /do not match the digest/);
    assert.deepEqual(await readAll(second.source), BLOB);
    assert.equal(second.source.diskStats().damagedChunks, 1);
    await second.source.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
