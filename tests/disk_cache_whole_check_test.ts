/**
 * A blob without a chunk-digest table is hashed against its digest once its data is complete
 * in the disk cache, with or without --fetch-all: bytes a registry flipped are dropped (no later
 * source of the origin reads them) and the source's reads fail; a passed check is recorded in
 * the blob's files, so the complete blob opened again is not hashed again, and the record goes
 * with the first chunk written after it (a refill from a registry that now serves other bytes
 * is checked when the blob is complete again).
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { exists, waitFor } from "./_support/wait.ts";

const MiB = 1 << 20;
const SIZE = 6 * MiB;
const ORIGIN = "registry.test";

async function sha256(bytes: Uint8Array): Promise<string> {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes.slice()));
  return "sha256:" + [...hash].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

interface Opened {
  source: DiskCachedSource;
  warnings: string[];
  notices: string[];
}

function open(dir: string, inner: MemorySource, digest: string, fetchAll = false): Opened {
  const warnings: string[] = [], notices: string[] = [];
  const cache = DiskCache.open({
    dir,
    chunkBytes: MiB,
    keepFreeBytes: 0,
    completeInBackground: fetchAll,
    onWarning: (message) => warnings.push(message),
    onNotice: (message) => notices.push(message),
  })!;
  const source = cache.wrap(inner, { digest, origin: ORIGIN }) as DiskCachedSource;
  return { source, warnings, notices };
}

function sumFile(dir: string): string {
  const map = [...Deno.readDirSync(`${dir}/blobs`)].find((e) => e.name.endsWith(".map"))!;
  return `${dir}/blobs/${map.name.slice(0, -".map".length)}.sum`;
}

async function readWhole(source: DiskCachedSource): Promise<Uint8Array> {
  return await source.read(0, source.size);
}

Deno.test("disk cache whole check: a table-less blob read whole with a flipped byte is dropped, its reads fail, a new source fetches it again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-whole-" });
  try {
    const good = patternBytes(SIZE, 3);
    const digest = await sha256(good);
    const served = good.slice();
    served[4 * MiB + 77] ^= 0x01;

    const hostile = open(dir, new MemorySource(served), digest);
    await readWhole(hostile.source); // the first reader gets what the registry sent
    await hostile.source.digestChecksSettled();
    assert.equal(hostile.warnings.length, 1, hostile.warnings.join("\n"));
    assert.match(hostile.warnings[0], /do not match the digest.*dropped.*\(EIO\)/);
    assert.equal(hostile.source.diskStats().digestMismatch, true);
    assert.equal(hostile.source.presentChunks(), 0, "no chunk left for another source");
    await assert.rejects(hostile.source.read(0, 16), /not to the layer digest/);
    assert(!exists(sumFile(dir)), "no record of a check");
    await hostile.source.close();

    const honestInner = new MemorySource(good);
    const honest = open(dir, honestInner, digest);
    assert.deepEqual(await readWhole(honest.source), good);
    assert(honestInner.reads.length > 0, "fetched again");
    await honest.source.digestChecksSettled();
    assert.deepEqual(honest.warnings, []);
    assert.match(honest.notices.join("\n"), /all 6291456 bytes cached, digest verified/);
    assert.equal(honest.source.diskStats().digestHashes, 1);
    await honest.source.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache whole check: a complete blob recorded as verified is not hashed again when opened again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-whole-" });
  try {
    const good = patternBytes(SIZE, 4);
    const digest = await sha256(good);
    const first = open(dir, new MemorySource(good), digest);
    await readWhole(first.source);
    await first.source.digestChecksSettled();
    assert.equal(first.source.diskStats().digestHashes, 1);
    assert(exists(sumFile(dir)), "the passed check is recorded");
    await first.source.close();

    const innerAgain = new MemorySource(good);
    const again = open(dir, innerAgain, digest);
    await again.source.digestChecksSettled(); // the check a complete blob's open starts
    assert.equal(await again.source.checkDigest(digest), "ok");
    assert.equal(again.source.diskStats().digestHashes, 0, "found recorded, not hashed");
    assert.deepEqual(await readWhole(again.source), good);
    assert.deepEqual(innerAgain.reads, [], "read from the disk cache");
    assert.deepEqual(again.notices, []);
    await again.source.close();

    // The record names the blob's own digest: another digest is hashed (and fails).
    const other = open(dir, new MemorySource(good), digest);
    assert.equal(await other.source.checkDigest("sha256:" + "0".repeat(64)), "mismatch");
    assert.equal(other.source.diskStats().digestHashes, 1);
    await other.source.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache whole check: a chunk evicted and refetched from a registry now serving other bytes is checked again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-whole-" });
  try {
    const good = patternBytes(SIZE, 5);
    const digest = await sha256(good);
    const served = good.slice();
    const inner = new MemorySource(served); // reads what `served` holds at the time
    const { source, warnings } = open(dir, inner, digest);
    await readWhole(source);
    await source.digestChecksSettled();
    assert.equal(source.diskStats().digestHashes, 1);
    assert(exists(sumFile(dir)), "recorded");

    // Chunk 2 the least recently read: evicted; the registry serves other bytes from now on.
    for (let chunk = 0; chunk < SIZE / MiB; chunk++) {
      if (chunk !== 2) await source.read(chunk * MiB, 1);
    }
    assert.equal(source.evictChunks(MiB), MiB);
    served[2 * MiB + 9] ^= 0x80;
    await source.read(2 * MiB, 16); // refetched: the blob is complete again
    assert(!exists(sumFile(dir)), "the refill removed the record");
    await source.digestChecksSettled();
    assert.equal(source.diskStats().digestHashes, 2);
    assert.match(warnings.join("\n"), /do not match the digest/);
    assert.equal(source.presentChunks(), 0);
    await source.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache whole check: bytes written under the record by a writer that leaves it (an older erofs-oci) are hashed again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-whole-" });
  try {
    const good = patternBytes(SIZE, 6);
    const digest = await sha256(good);
    const first = open(dir, new MemorySource(good), digest);
    await readWhole(first.source);
    await first.source.digestChecksSettled();
    assert(exists(sumFile(dir)), "recorded");
    await first.source.close();

    // Versions before the record refilled evicted chunks without removing it: here, one byte
    // of what a registry serving other bytes sent, written in place.
    const data = await Deno.open(sumFile(dir).replace(/\.sum$/, ".data"), { write: true });
    await data.seek(3 * MiB + 5, Deno.SeekMode.Start);
    await data.write(new Uint8Array([good[3 * MiB + 5] ^ 0x01]));
    data.close();

    const again = open(dir, new MemorySource(good), digest);
    await again.source.digestChecksSettled(); // the check a complete blob's open starts
    assert.equal(again.source.diskStats().digestHashes, 1, "hashed, not taken from the record");
    assert.equal(again.source.diskStats().digestMismatch, true);
    await assert.rejects(again.source.read(3 * MiB, 16), /not to the layer digest/);
    await again.source.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disk cache whole check: --fetch-all hashes a table-less blob once, and says it once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "disk-cache-whole-" });
  try {
    const good = patternBytes(SIZE, 6);
    const digest = await sha256(good);
    const { source, warnings, notices } = open(dir, new MemorySource(good), digest, true);
    await waitFor("the completion's notice", () => notices.length > 0, 20_000);
    await source.digestChecksSettled();
    assert.deepEqual(warnings, []);
    assert.equal(notices.length, 1, notices.join("\n"));
    assert.match(notices[0], /all 6291456 bytes local .*digest verified/);
    assert.equal(source.diskStats().digestHashes, 1);
    await source.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
