/**
 * Random reads through erofs-utils 1.9.3 zinfo files (shared fixtures) equal the plain tar
 * (gunzipped by gzip(1) here), across checkpoints, member boundaries and the end of the data.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires } from "./_support/requires.ts";
import { LocalFile } from "../lib/source/local_file.ts";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { FormatError } from "../lib/errors.ts";
import { gunzip, prng } from "./_support/gzip_data.ts";

const ignore = requires(command("gzip"), path(`${FIXTURES}/big-multi.zinfo`, "shared fixtures"));

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

for (
  const [name, inflater, reads] of [
    ["layer", "zlib", 2000],
    ["big", "zlib", 2000],
    ["big-multi", "zlib", 2000],
    ["big-multi", "ts", 300],
    ["big", "zlib-off-thread", 500],
  ] as const
) {
  Deno.test({
    name: `gzip random reads through erofs-utils zinfo equal the tar: ${name} (${inflater})`,
    ignore,
    async fn() {
      const tar = await gunzip(`${FIXTURES}/${name}.tar.gz`);
      const blob = await LocalFile.open(`${FIXTURES}/${name}.tar.gz`);
      const zinfo = await LocalFile.open(`${FIXTURES}/${name}.zinfo`);
      // A small cache forces restarts from checkpoints and cursor reuse, not just cache hits.
      const reader = await GzipRandomAccess.open(blob, zinfo, {
        cacheBytes: 3 << 20,
        inflater: inflater === "ts" ? "ts" : "zlib",
        offThread: inflater === "zlib-off-thread",
      });
      try {
        const random = prng(name.length);
        const cps = reader.zinfo.checkpoints.map((cp) => cp.uncompressedOffset);
        const kept: { offset: number; got: Uint8Array }[] = [];
        for (let i = 0; i < reads; i++) {
          // Every 4th read straddles a checkpoint (member boundaries in big-multi).
          const around = cps[i % cps.length];
          const offset = i % 4 === 0 && around > 0
            ? Math.max(0, around - Math.floor(random() * 5000))
            : Math.floor(random() * tar.length);
          const length = Math.min(
            tar.length - offset,
            Math.floor(random() * (i % 10 ? 9000 : 600_000)),
          );
          const got = await reader.read(offset, length);
          const diff = firstDifference(got, tar.subarray(offset, offset + length));
          assert.equal(diff, -1, `${name}: read ${offset}+${length} differs at +${diff}`);
          if (i % 50 === 0) kept.push({ offset, got });
        }
        // A read inside one piece is a view of the cached piece: what a reader was handed stays
        // as it was while later reads make, evict and make pieces again.
        for (const { offset, got } of kept) {
          const diff = firstDifference(got, tar.subarray(offset, offset + got.length));
          assert.equal(diff, -1, `${name}: kept read ${offset}+${got.length} changed at +${diff}`);
        }
        assert.equal(firstDifference(await reader.read(0, tar.length), tar), -1);
        const last = await reader.read(tar.length - 1, 1);
        assert.equal(last[0], tar[tar.length - 1]);
        assert.equal((await reader.read(tar.length, 0)).length, 0);
        await assert.rejects(() => reader.read(tar.length - 10, 11), FormatError);
        // Still usable after a failed read.
        assert.equal(firstDifference(await reader.read(5, 100), tar.subarray(5, 105)), -1);
      } finally {
        reader.close();
        await blob.close();
        await zinfo.close();
      }
    },
  });
}

Deno.test({
  name: "gzip sequential read inflates each byte once (cursor kept between reads)",
  ignore,
  async fn() {
    const tar = await gunzip(`${FIXTURES}/big.tar.gz`);
    const blob = await LocalFile.open(`${FIXTURES}/big.tar.gz`);
    const zinfo = await LocalFile.open(`${FIXTURES}/big.zinfo`);
    // A cache smaller than one span: only the kept cursor can avoid re-inflating.
    const reader = await GzipRandomAccess.open(blob, zinfo, { cacheBytes: 1 << 20 });
    try {
      for (let at = 0; at < tar.length; at += 128 * 1024) {
        const length = Math.min(128 * 1024, tar.length - at);
        assert.equal(
          firstDifference(await reader.read(at, length), tar.subarray(at, at + length)),
          -1,
        );
      }
      assert.equal(reader.stats.inflatedBytes, tar.length);
      assert.equal(reader.stats.cursorsOpened, reader.zinfo.checkpoints.length);
    } finally {
      reader.close();
      await blob.close();
      await zinfo.close();
    }
  },
});

Deno.test({
  name: "gzip concurrent reads of one span share one inflate",
  ignore,
  async fn() {
    const tar = await gunzip(`${FIXTURES}/big.tar.gz`);
    const blob = await LocalFile.open(`${FIXTURES}/big.tar.gz`);
    const zinfo = await LocalFile.open(`${FIXTURES}/big.zinfo`);
    const reader = await GzipRandomAccess.open(blob, zinfo);
    try {
      const offsets = Array.from({ length: 16 }, (_, i) => i * 256 * 1024);
      const results = await Promise.all(offsets.map((at) => reader.read(at, 4096)));
      results.forEach((got, i) => {
        assert.equal(firstDifference(got, tar.subarray(offsets[i], offsets[i] + 4096)), -1);
      });
      assert.equal(reader.stats.cursorsOpened, 1);
      assert(reader.stats.inflatedBytes <= 5 * 1024 * 1024);
    } finally {
      reader.close();
      await blob.close();
      await zinfo.close();
    }
  },
});
