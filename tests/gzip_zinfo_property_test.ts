/**
 * A zinfo is hostile input too (a registry artifact, a stale file): random edits of the
 * checkpoint table of big-multi.zinfo (in, out, bits, the count, the span; truncation) either
 * fail at open or leave every read settling with the asked length or a one-line FormatError,
 * the piece cache within its budget, with the zlib and the TypeScript inflater.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { ZINFO_CHECKPOINT_BYTES, ZINFO_HEADER_BYTES } from "../lib/gzip/zinfo.ts";
import { FormatError } from "../lib/errors.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { FIXTURES, path, requires } from "./_support/requires.ts";

const ignore = requires(path(`${FIXTURES}/big-multi.zinfo`, "shared fixtures"));
/** big-multi's tar is 6,000,000+ bytes; reads go a little past it too. */
const TAR_BYTES_ABOUT = 6_200_000;
const CACHE_BYTES = 4 << 20;

Deno.test({
  name: "property: edited zinfo checkpoints fail at open or give exact-length reads / FormatError",
  ignore,
  async fn() {
    const gz = await Deno.readFile(`${FIXTURES}/big-multi.tar.gz`);
    const zinfo = await Deno.readFile(`${FIXTURES}/big-multi.zinfo`);
    const count = (zinfo.length - ZINFO_HEADER_BYTES) / ZINFO_CHECKPOINT_BYTES;
    // Offsets of the header fields and of each checkpoint's in (8), out (8) and bits (1).
    const header: [number, number][] = [[0, 4], [4, 8]];
    const offsets: [number, number][] = [];
    const bitsAt: number[] = [];
    for (let k = 0; k < count; k++) {
      const at = ZINFO_HEADER_BYTES + k * ZINFO_CHECKPOINT_BYTES;
      offsets.push([at, 8], [at + 8, 8]);
      bitsAt.push(at + 16);
    }
    type Edit = { at: number; width: number; set?: bigint; delta?: bigint };
    // Mostly near misses (a checkpoint moved a little, other bits), which get past open.
    const edit: fc.Arbitrary<Edit> = fc.oneof(
      {
        weight: 6,
        arbitrary: fc.record({
          field: fc.nat(offsets.length - 1),
          delta: fc.bigInt({ min: -70_000n, max: 70_000n }),
        }).map(({ field, delta }) => ({ at: offsets[field][0], width: 8, delta })),
      },
      {
        weight: 2,
        arbitrary: fc.record({ k: fc.nat(count - 1), bits: fc.bigInt({ min: 0n, max: 7n }) })
          .map(({ k, bits }) => ({ at: bitsAt[k], width: 1, set: bits })),
      },
      {
        weight: 1,
        arbitrary: fc.record({
          field: fc.nat(header.length + offsets.length - 1),
          set: fc.constantFrom(0n, 1n, 10n, 2n ** 32n - 1n, 2n ** 53n, 2n ** 64n - 1n),
        }).map(({ field, set }) => {
          const [at, width] = [...header, ...offsets][field];
          return { at, width, set };
        }),
      },
    );
    const scenario = fc.record({
      edits: fc.array(edit, { minLength: 1, maxLength: 3 }),
      truncate: fc.oneof(
        { weight: 19, arbitrary: fc.constant(null) },
        { weight: 1, arbitrary: fc.nat(zinfo.length) },
      ),
      reads: fc.array(
        fc.record({
          offset: fc.nat(TAR_BYTES_ABOUT),
          length: fc.integer({ min: 1, max: 300_000 }),
        }),
        { minLength: 1, maxLength: 4 },
      ),
      inflater: fc.constantFrom("zlib" as const, "ts" as const),
    });
    await fc.assert(
      fc.asyncProperty(scenario, async ({ edits, truncate, reads, inflater }) => {
        let bad = zinfo.slice();
        const view = new DataView(bad.buffer);
        for (const { at, width, set, delta } of edits) {
          const old = width === 1
            ? BigInt(view.getUint8(at))
            : width === 4
            ? BigInt(view.getUint32(at, true))
            : view.getBigUint64(at, true);
          const mask = (1n << BigInt(width * 8)) - 1n;
          const next = (set ?? old + delta!) & mask;
          if (width === 1) view.setUint8(at, Number(next));
          else if (width === 4) view.setUint32(at, Number(next), true);
          else view.setBigUint64(at, next, true);
        }
        if (truncate !== null) bad = bad.subarray(0, truncate);
        let reader: GzipRandomAccess;
        try {
          reader = await GzipRandomAccess.open(new MemorySource(gz), new MemorySource(bad), {
            cacheBytes: CACHE_BYTES,
            maxCursors: 2,
            inflater,
          });
        } catch (error) {
          assert.ok(error instanceof FormatError, `open: ${(error as Error).stack}`);
          assert.ok(!error.message.includes("\n"));
          return;
        }
        try {
          for (const { offset, length } of reads) {
            try {
              const got = await reader.read(offset, length);
              assert.equal(got.length, length);
            } catch (error) {
              assert.ok(error instanceof FormatError, `read: ${(error as Error).stack}`);
              assert.ok(!error.message.includes("\n"));
            }
            assert.ok(reader.cachedBytes <= CACHE_BYTES);
          }
        } finally {
          reader.close();
        }
      }),
      { seed: 2026_12_02, numRuns: 120 },
    );
  },
});
