import assert from "node:assert/strict";
import { walkErofsMetadata } from "./metadata_walk.ts";
import { checkErofsSuperblock } from "./superblock.ts";
import { LocalFile } from "../source/local_file.ts";
import { PIN_PAGE_BYTES, PrefetchedSource } from "../source/prefetched.ts";
import { prefetchErofsMetadata } from "../source/metadata_prefetch.ts";
import type { Source } from "../source/source.ts";
import { FIXTURES } from "../../tests/_support/requires.ts";

/** A source over bytes in memory that counts reads and can be told to refuse them. */
class MemorySource implements Source {
  reads = 0;
  refuse = false;
  constructor(readonly bytes: Uint8Array) {}
  get size(): number {
    return this.bytes.length;
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    this.reads++;
    if (this.refuse) return Promise.reject(new Error(`unexpected read of ${length} at ${offset}`));
    if (offset < 0 || offset + length > this.size) throw new RangeError("outside");
    return Promise.resolve(this.bytes.slice(offset, offset + length));
  }
}

function manifestPaths(name: string, type?: "d"): string[] {
  return Deno.readTextFileSync(`${FIXTURES}/expected/${name}.txt`)
    .split("\n")
    .filter((line) => line && (!type || line.split("\t")[1] === type))
    .map((line) => line.split("\t")[0])
    .map((path) => path === "." ? "" : path)
    .sort();
}

for (const name of ["basic", "layer1", "basic-lz4", "layer.meta"]) {
  Deno.test(`walk of ${name}.erofs finds every path of its manifest`, async () => {
    const file = await LocalFile.open(`${FIXTURES}/${name}.erofs`);
    try {
      const walk = await walkErofsMetadata(
        (offset, length) => file.read(offset, length),
        file.size,
        { collectPaths: true },
      );
      assert.equal(walk.incomplete, undefined);
      assert.equal(walk.skipped, 0);
      assert.deepEqual([...walk.paths!].sort(), manifestPaths(name));
      assert.ok(walk.reads > 0 && walk.pagesBytes > 0);
    } finally {
      await file.close?.();
    }
  });
}

Deno.test("after the prefetch, a second walk is served from pinned pages alone", async () => {
  const image = Deno.readFileSync(`${FIXTURES}/basic.erofs`);
  const raw = new MemorySource(image);
  const inner = new MemorySource(image);
  const served = new PrefetchedSource(inner);
  const summary = await prefetchErofsMetadata(raw, served, { fileInodes: true });
  assert.match(summary, /^all inodes: 9 directories/);
  assert.equal(inner.reads, 0, "the prefetch reads around the inner source");
  inner.refuse = true;
  const again = await walkErofsMetadata(
    (offset, length) => served.read(offset, length),
    served.size,
    // Page by page, as the kernel reads (a read-ahead would ask for unpinned file data too).
    { collectPaths: true, readAheadBytes: 0 },
  );
  assert.equal(inner.reads, 0, "every metadata read was a pinned hit");
  assert.deepEqual([...again.paths!].sort(), manifestPaths("basic"));
  const stats = served.stats();
  assert.equal(stats.prefetchFetches, raw.reads);
  assert.equal(stats.fetches, raw.reads);
  assert.ok(stats.pinnedBytes > 0 && stats.pinnedBytes % PIN_PAGE_BYTES === 0);
  assert.ok(stats.pinnedHits > 0);
});

Deno.test("PrefetchedSource passes through reads not wholly pinned", async () => {
  const image = new Uint8Array(5 * PIN_PAGE_BYTES).map((_, i) => i % 251);
  const inner = new MemorySource(image);
  const served = new PrefetchedSource(inner);
  served.pin(PIN_PAGE_BYTES, image.slice(PIN_PAGE_BYTES, 3 * PIN_PAGE_BYTES));
  assert.deepEqual(
    await served.read(PIN_PAGE_BYTES + 10, PIN_PAGE_BYTES),
    image.slice(PIN_PAGE_BYTES + 10, 2 * PIN_PAGE_BYTES + 10),
  );
  assert.equal(inner.reads, 0);
  const dest = new Uint8Array(100);
  await served.readInto(3 * PIN_PAGE_BYTES - 50, dest);
  assert.deepEqual(dest, image.slice(3 * PIN_PAGE_BYTES - 50, 3 * PIN_PAGE_BYTES + 50));
  assert.equal(inner.reads, 1);
  assert.throws(() => served.pin(10, new Uint8Array(PIN_PAGE_BYTES)), RangeError);
});

/** Root directory's dirents of basic.erofs, located the way the kernel does. */
function rootDirents(image: Uint8Array): { offset: number; names: string[] } {
  const sb = checkErofsSuperblock(image);
  const inode = sb.metaBlockAddress * sb.blockSizeBytes + sb.rootNid * 32;
  const view = new DataView(image.buffer);
  assert.equal((view.getUint16(inode, true) >> 1) & 7, 2, "root is FLAT_INLINE");
  assert.equal(view.getUint16(inode, true) & 1, 0, "root is compact");
  assert.equal(view.getUint16(inode + 2, true), 0, "root has no xattrs");
  const offset = inode + 32;
  const count = view.getUint16(offset + 8, true) / 12;
  const names: string[] = [];
  for (let k = 0; k < count; k++) {
    const start = view.getUint16(offset + k * 12 + 8, true);
    const end = k + 1 < count ? view.getUint16(offset + (k + 1) * 12 + 8, true) : start + 16;
    names.push(new TextDecoder().decode(image.subarray(offset + start, offset + end)));
  }
  return { offset, names };
}

Deno.test("hostile images end the walk without throwing", async (t) => {
  const image = Deno.readFileSync(`${FIXTURES}/basic.erofs`);
  const walkOf = (bytes: Uint8Array) =>
    walkErofsMetadata((o, l) => new MemorySource(bytes).read(o, l), bytes.length, {
      collectPaths: true,
    });

  await t.step("truncated images", async () => {
    for (const length of [0, 1000, 1100, 1200, 4096, 8192, 20_000]) {
      const walk = await walkOf(image.slice(0, length));
      assert.ok(walk.paths!.length < manifestPaths("basic").length, `length ${length}`);
    }
  });

  await t.step("random bytes after the superblock", async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const bytes = image.slice();
      let x = seed * 2654435761;
      for (let i = 2048; i < bytes.length; i++) {
        x = (x * 1103515245 + 12345) >>> 0;
        bytes[i] = x >>> 24;
      }
      const walk = await walkOf(bytes);
      assert.ok(walk.pagesBytes <= 64 << 20);
    }
  });

  await t.step("a directory pointing at itself", async () => {
    const bytes = image.slice();
    const { offset, names } = rootDirents(bytes);
    const dirIndex = names.findIndex((n) => n.startsWith("dir"));
    assert.ok(dirIndex > 0, `root has "dir": ${names}`);
    const sb = checkErofsSuperblock(bytes);
    new DataView(bytes.buffer).setBigUint64(offset + dirIndex * 12, BigInt(sb.rootNid), true);
    const walk = await walkOf(bytes);
    assert.ok(walk.paths!.includes("dir"));
    assert.ok(!walk.paths!.includes("dir/a.txt"), "the root is not walked twice");
  });

  await t.step("a failing source", async () => {
    const walk = await walkErofsMetadata(
      () => Promise.reject(new Error("registry down")),
      image.length,
    );
    assert.equal(walk.incomplete, "superblock unreadable");
  });
});

Deno.test("by default only directories are pinned: a find-like walk needs nothing else", async () => {
  const image = Deno.readFileSync(`${FIXTURES}/basic.erofs`);
  const raw = new MemorySource(image);
  const inner = new MemorySource(image);
  const served = new PrefetchedSource(inner);
  const summary = await prefetchErofsMetadata(raw, served);
  assert.match(summary, /^directories: 9 directories/);
  inner.refuse = true;
  const again = await walkErofsMetadata(
    (offset, length) => served.read(offset, length),
    served.size,
    { collectPaths: true, fileInodes: false, readAheadBytes: 0 },
  );
  assert.equal(inner.reads, 0, "every directory read was a pinned hit");
  assert.deepEqual([...again.paths!].sort(), manifestPaths("basic", "d"));
  const full = new PrefetchedSource(new MemorySource(image));
  await prefetchErofsMetadata(new MemorySource(image), full, { fileInodes: true });
  assert.ok(served.stats().pinnedBytes < full.stats().pinnedBytes, "file inodes not pinned");
});
