/**
 * Hostile EROFS images against the metadata walk (issue 9 item 3): images patched from real
 * mkfs.erofs output by tests/_support/hostile_erofs.ts. The walk runs in the mount server next
 * to the kernel's FUSE/NBD traffic, so whatever an image claims it must stay inside its budget
 * and fail only with a FormatError. The same images through `mount`: hostile_image_mount_test.ts.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { walkErofsMetadata } from "../lib/erofs/metadata_walk.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { PrefetchedSource } from "../lib/source/prefetched.ts";
import { prefetchErofsMetadata } from "../lib/source/metadata_prefetch.ts";
import { FormatError } from "../lib/errors.ts";
import { FIXTURES, path as requirePath, PEER_BIN, requires } from "./_support/requires.ts";
import {
  corrupt,
  type Corruption,
  hugeDirectoriesImage,
  interestingOffsets,
} from "./_support/hostile_erofs.ts";
import { withTempDir } from "./_support/temp_dir.ts";

/** The fixtures are walked as if zero-padded to this size, like the sparse file. */
const SPARSE_SIZE_BYTES = 256 << 20;
const FIXTURE_IMAGES = ["basic", "layer1", "layer2", "basic-lz4", "layer.meta"];

interface CountedRead {
  read: (offset: number, length: number) => Promise<Uint8Array>;
  bytesReturned: () => number;
  outside: () => number;
}

/**
 * Reads of `image` followed by zeros up to `sizeBytes` (a sparse file: hostile sizes and block
 * addresses then point inside the image, as in the issue), counting the bytes returned.
 */
function countedRead(image: Uint8Array, sizeBytes = image.length): CountedRead {
  let returned = 0;
  let outside = 0;
  return {
    read(offset, length) {
      if (offset < 0 || length < 0 || offset + length > sizeBytes) {
        outside++;
        return Promise.reject(new RangeError(`read of ${length} at ${offset}`));
      }
      returned += length;
      const out = new Uint8Array(length);
      if (offset < image.length) out.set(image.subarray(offset, offset + length));
      return Promise.resolve(out);
    },
    bytesReturned: () => returned,
    outside: () => outside,
  };
}

function vmHwmBytes(): number {
  const match = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
  return Number(match![1]) * 1024;
}

Deno.test({
  name: "hostile image: 2,000 directories claiming 256 MiB each cost the walk nothing",
  ignore: requires(requirePath(`${PEER_BIN}/mkfs.erofs`, "peer mkfs.erofs")),
  async fn() {
    await withTempDir("erofs-oci-hostile-", async (work) => {
      const hostile = await hugeDirectoriesImage(work, 2000, 256 << 20);
      assert.equal(hostile.fileBytes, 256 << 20);
      assert.ok(hostile.allocatedBytes < 1 << 20, "a sparse file of ~160 KB");
      const file = await Deno.open(hostile.path);
      const hwmBefore = vmHwmBytes();
      let returned = 0;
      const read = async (offset: number, length: number) => {
        const out = new Uint8Array(length);
        await file.seek(offset, Deno.SeekMode.Start);
        for (let got = 0; got < length;) got += (await file.read(out.subarray(got)))!;
        returned += length;
        return out;
      };
      try {
        const startedMs = performance.now();
        const walk = await walkErofsMetadata(read, hostile.fileBytes, { fileInodes: false });
        const tookMs = performance.now() - startedMs;
        assert.equal(walk.directories, 2001, "the root and its 2,000 children were parsed");
        assert.ok(walk.skipped >= 2000, `each oversized directory skipped (${walk.skipped})`);
        assert.ok(returned <= 1 << 20, `read ${returned} bytes: only the real metadata`);
        assert.ok(walk.pagesBytes <= 1 << 20, `holds ${walk.pagesBytes} bytes`);
        assert.ok(tookMs < 5000, `took ${Math.round(tookMs)} ms`);
        const grew = vmHwmBytes() - hwmBefore;
        assert.ok(grew < 128 << 20, `peak memory grew by ${Math.round(grew / 2 ** 20)} MiB`);
      } finally {
        file.close();
      }
    });
  },
});

Deno.test({
  name: "hostile image: directories that each fit the budget, together far above it",
  ignore: requires(requirePath(`${PEER_BIN}/mkfs.erofs`, "peer mkfs.erofs")),
  async fn() {
    await withTempDir("erofs-oci-hostile-", async (work) => {
      // 200 directories of 512 KiB, each over its own sparse region (100 MiB in all), under a
      // 1 MiB budget: the walk holds and reads no more than its limits.
      const hostile = await hugeDirectoriesImage(work, 200, 512 << 10, { spread: true });
      const image = Deno.readFileSync(hostile.path);
      const counted = countedRead(image, hostile.fileBytes);
      const maxBytes = 1 << 20;
      const walk = await walkErofsMetadata(counted.read, hostile.fileBytes, {
        maxBytes,
        maxFetchBytes: 2 * maxBytes,
      });
      assert.match(walk.incomplete ?? "", /metadata above 256 pages/);
      assert.ok(walk.pagesBytes <= maxBytes, `${walk.pagesBytes} held`);
      assert.ok(walk.pages.size <= maxBytes / walk.pageBytes);
      assert.ok(counted.bytesReturned() <= 2 * maxBytes, `${counted.bytesReturned()} read`);
      assert.equal(counted.outside(), 0);
    });
  },
});

/** A u16 or u32 written at an interesting offset: edge values or any value of the width. */
const wordCorruptionArb = (
  kind: "u16" | "u32",
  offsets: number[],
  edges: number[],
  max: number,
): fc.Arbitrary<Corruption> =>
  fc.record({
    kind: fc.constant(kind),
    offset: fc.constantFrom(...offsets),
    value: fc.oneof(fc.constantFrom(...edges), fc.integer({ min: 0, max })),
  });

const corruptionArb = (offsets: number[]): fc.Arbitrary<Corruption> =>
  fc.oneof(
    fc.record({
      kind: fc.constant("byte" as const),
      offset: fc.oneof(fc.constantFrom(...offsets), fc.nat()),
      value: fc.integer({ min: 0, max: 255 }),
    }),
    wordCorruptionArb("u16", offsets, [0, 1, 12, 0xffff, 0x8000], 0xffff),
    wordCorruptionArb("u32", offsets, [0, 1, 0xffffffff, 0x10000000, 0x7fffffff], 0xffffffff),
    fc.record({
      kind: fc.constant("u64" as const),
      offset: fc.constantFrom(...offsets),
      value: fc.bigUint((1n << 64n) - 1n),
    }),
  );

for (const name of FIXTURE_IMAGES) {
  Deno.test({
    name: `property: random corruptions of ${name}.erofs stay in budget, fail only as FormatError`,
    ignore: requires(requirePath(`${FIXTURES}/${name}.erofs`, "shared fixtures")),
    async fn() {
      const image = Deno.readFileSync(`${FIXTURES}/${name}.erofs`);
      const offsets = interestingOffsets(image);
      const budget = {
        maxBytes: 64 << 10,
        maxFetchBytes: 256 << 10,
        maxEntries: 500,
        maxDirentsScanned: 5000,
      };
      await fc.assert(
        fc.asyncProperty(
          fc.array(corruptionArb(offsets), { minLength: 1, maxLength: 8 }),
          fc.boolean(),
          async (corruptions, fileInodes) => {
            const bytes = corrupt(image, corruptions);
            const counted = countedRead(bytes, SPARSE_SIZE_BYTES);
            let walk;
            try {
              walk = await walkErofsMetadata(counted.read, SPARSE_SIZE_BYTES, {
                ...budget,
                fileInodes,
                collectPaths: true,
              });
            } catch (error) {
              assert.ok(error instanceof FormatError, `threw ${error}`);
              return;
            }
            assert.ok(walk.pagesBytes <= budget.maxBytes, `holds ${walk.pagesBytes}`);
            assert.ok(walk.pages.size * walk.pageBytes <= budget.maxBytes);
            assert.ok(counted.bytesReturned() <= budget.maxFetchBytes);
            assert.ok(walk.entries <= budget.maxEntries + 1);
            assert.ok(walk.direntsScanned <= budget.maxDirentsScanned + 1);
            assert.ok(walk.paths!.length <= budget.maxEntries + 2);
            assert.equal(counted.outside(), 0, "no read outside the image");
          },
        ),
        { numRuns: 300 },
      );
    },
  });
}

Deno.test({
  name: "property: the mount-time prefetch of corrupted images keeps pins + cache in --cache-size",
  ignore: requires(requirePath(`${FIXTURES}/basic.erofs`, "shared fixtures")),
  async fn() {
    const image = Deno.readFileSync(`${FIXTURES}/basic.erofs`);
    const offsets = interestingOffsets(image);
    const cacheBytes = 256 << 10;
    await fc.assert(
      fc.asyncProperty(
        fc.array(corruptionArb(offsets), { minLength: 1, maxLength: 8 }),
        async (corruptions) => {
          const bytes = corrupt(image, corruptions);
          const raw = { size: SPARSE_SIZE_BYTES, read: countedRead(bytes, SPARSE_SIZE_BYTES).read };
          const cache = new CachedSource(raw, { chunkBytes: 16 << 10, cacheBytes });
          const served = new PrefetchedSource(cache);
          const summary = await prefetchErofsMetadata(raw, served, { fileInodes: true });
          assert.ok(served.pinnedBytes <= cacheBytes / 2, `${served.pinnedBytes} pinned`);
          // The kernel's reads after the prefetch: through the same bound.
          for (let offset = 0; offset < 2 << 20; offset += 100_003) {
            await served.read(offset, 4096);
            const held = served.stats().cachedBytes + served.pinnedBytes;
            assert.ok(held <= cacheBytes, `${held} bytes held (${summary})`);
          }
          await served.close();
        },
      ),
      { numRuns: 100 },
    );
  },
});

Deno.test({
  // The walk does not check the superblock's checksum (sb_csum: the kernel does): most such
  // bytes walk, within their bound; what fails fails as a FormatError.
  name: "property: a corrupted superblock walks within its bound or is a FormatError, never " +
    "another error",
  ignore: requires(requirePath(`${FIXTURES}/basic.erofs`, "shared fixtures")),
  async fn() {
    const image = Deno.readFileSync(`${FIXTURES}/basic.erofs`);
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1024, max: 1024 + 127 }),
        fc.integer({ min: 0, max: 255 }),
        async (offset, value) => {
          const bytes = corrupt(image, [{ kind: "byte", offset, value }]);
          const counted = countedRead(bytes);
          try {
            const walk = await walkErofsMetadata(counted.read, bytes.length, {
              maxBytes: 64 << 10,
            });
            assert.ok(walk.pagesBytes <= 64 << 10);
          } catch (error) {
            assert.ok(error instanceof FormatError, `threw ${error}`);
          }
        },
      ),
      { numRuns: 300 },
    );
  },
});
