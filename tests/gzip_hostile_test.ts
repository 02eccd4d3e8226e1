/**
 * Damage found only while reading: a corrupt deflate block, a truncated blob, failing blob
 * reads, random byte flips. Each fails the reads that touch it (FormatError or the source's
 * error), never other reads, never the process; memory stays within the cache budget.
 */
import assert from "node:assert/strict";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { ZINFO_CHECKPOINT_BYTES, ZINFO_HEADER_BYTES } from "../lib/gzip/zinfo.ts";
import { FormatError } from "../lib/errors.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { gunzip, prng } from "./_support/gzip_data.ts";
import { command, FIXTURES, path, requires } from "./_support/requires.ts";

const ignore = requires(command("gzip"), path(`${FIXTURES}/big-multi.zinfo`, "shared fixtures"));

// big.zinfo checkpoints (fixtures README): (10,0,0) (745872,4402292,5) (4274454,8627871,0).
const CP1_OUT = 4402292, CP2_IN = 4274454, CP2_OUT = 8627871;

async function fixture(name: string) {
  return {
    gz: await Deno.readFile(`${FIXTURES}/${name}.tar.gz`),
    zinfo: await Deno.readFile(`${FIXTURES}/${name}.zinfo`),
    tar: await gunzip(`${FIXTURES}/${name}.tar.gz`),
  };
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

Deno.test({
  name: "corrupt deflate block: reads from that checkpoint fail, others still succeed",
  ignore,
  async fn() {
    const { gz, zinfo, tar } = await fixture("big");
    gz[CP2_IN] |= 0x06; // BTYPE 11 is reserved (RFC 1951 §3.2.3): inflate must refuse it
    const reader = await GzipRandomAccess.open(new MemorySource(gz), new MemorySource(zinfo));
    try {
      for (let round = 0; round < 2; round++) {
        await assert.rejects(() => reader.read(CP2_OUT + 100, 4096), (error: Error) => {
          assert.ok(error instanceof FormatError);
          assert.match(error.message, /invalid block type near compressed offset 4274454/);
          return true;
        });
        assert.ok(same(await reader.read(0, 65536), tar.subarray(0, 65536)));
        assert.ok(same(await reader.read(CP1_OUT, 65536), tar.subarray(CP1_OUT, CP1_OUT + 65536)));
      }
      // A read spanning good and bad intervals fails as a whole (no partial result).
      await assert.rejects(() => reader.read(CP2_OUT - 10, 20), FormatError);
    } finally {
      reader.close();
    }
  },
});

Deno.test({
  name: "truncated blob: open refuses checkpoints past it; reads past its end fail",
  ignore,
  async fn() {
    const { gz, zinfo, tar } = await fixture("big");
    await assert.rejects(
      () =>
        GzipRandomAccess.open(new MemorySource(gz.subarray(0, 3_000_000)), new MemorySource(zinfo)),
      /outside the 3000000-byte blob/,
    );
    const cut = gz.subarray(0, CP2_IN + 50_000);
    const reader = await GzipRandomAccess.open(new MemorySource(cut), new MemorySource(zinfo));
    try {
      await assert.rejects(
        () => reader.read(tar.length - 4096, 4096),
        /ends inside a deflate stream/,
      );
      // Pieces (1 MiB of output) are made whole or not at all, so the damaged interval fails
      // as a whole; the intervals before it are intact.
      await assert.rejects(() => reader.read(CP2_OUT, 1000), FormatError);
      assert.ok(same(await reader.read(CP1_OUT, 1000), tar.subarray(CP1_OUT, CP1_OUT + 1000)));
    } finally {
      reader.close();
    }
  },
});

Deno.test({
  name: "zinfo with only its first checkpoint still reads across gzip members",
  ignore,
  async fn() {
    const { gz, zinfo, tar } = await fixture("big-multi");
    const one = zinfo.slice(0, ZINFO_HEADER_BYTES + ZINFO_CHECKPOINT_BYTES);
    new DataView(one.buffer).setUint32(0, 1, true);
    const reader = await GzipRandomAccess.open(new MemorySource(gz), new MemorySource(one));
    try {
      for (const at of [999_990, 5_999_000, tar.length - 100]) {
        assert.ok(same(await reader.read(at, 100), tar.subarray(at, at + 100)), `at ${at}`);
      }
      assert.ok(same(await reader.read(0, tar.length), tar));
      await assert.rejects(() => reader.read(tar.length, 1), /past the end of the gzip data/);
    } finally {
      reader.close();
    }
  },
});

Deno.test({
  name: "a failing blob read fails that read only",
  ignore,
  async fn() {
    const { gz, zinfo, tar } = await fixture("big");
    let failing = true;
    const blob = new MemorySource(gz, { fail: (offset) => failing && offset >= CP2_IN });
    const reader = await GzipRandomAccess.open(blob, new MemorySource(zinfo));
    try {
      await assert.rejects(() => reader.read(CP2_OUT, 10), /injected failure/);
      assert.ok(same(await reader.read(10, 10), tar.subarray(10, 20)));
      failing = false;
      assert.ok(same(await reader.read(CP2_OUT, 10), tar.subarray(CP2_OUT, CP2_OUT + 10)));
    } finally {
      reader.close();
    }
  },
});

Deno.test({
  name: "random byte flips: every read settles with the right length or an error; memory bounded",
  ignore,
  async fn() {
    const { gz, zinfo, tar } = await fixture("big-multi");
    const random = prng(11);
    const budget = 4 << 20;
    for (let trial = 0; trial < 16; trial++) {
      const inflater = trial % 2 ? "ts" as const : "zlib" as const;
      const bad = gz.slice();
      for (let i = 0; i < 1 + trial; i++) {
        bad[10 + Math.floor(random() * (bad.length - 10))] ^= 1 << (i % 8);
      }
      const reader = await GzipRandomAccess.open(new MemorySource(bad), new MemorySource(zinfo), {
        cacheBytes: budget,
        maxCursors: 2,
        inflater,
        offThread: trial % 4 === 2,
      });
      try {
        for (let i = 0; i < 30; i++) {
          const offset = Math.floor(random() * tar.length);
          const length = Math.min(tar.length - offset, 1 + Math.floor(random() * 200_000));
          try {
            const got = await reader.read(offset, length);
            assert.equal(got.length, length);
          } catch (error) {
            assert.ok(error instanceof FormatError, `unexpected ${(error as Error).stack}`);
            assert.ok(!(error as Error).message.includes("\n"));
          }
          assert.ok(reader.cachedBytes <= budget, `cache ${reader.cachedBytes} > ${budget}`);
          assert.ok(reader.idleCursors <= 2);
        }
      } finally {
        reader.close();
      }
    }
  },
});
