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
        // What a reader was handed stays as it was while later reads make, evict and make
        // pieces again in reused buffers (reads are copies of the pieces).
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

Deno.test({
  name:
    "gzip concurrent readers over a one-piece cache get exact bytes while piece and input buffers are reused",
  ignore,
  async fn() {
    const tar = await gunzip(`${FIXTURES}/big-multi.tar.gz`);
    const file = await LocalFile.open(`${FIXTURES}/big-multi.tar.gz`);
    const zinfo = await LocalFile.open(`${FIXTURES}/big-multi.zinfo`);
    // Fetches answered together when a shared clock ticks (many reads' inflates resume in one
    // turn, between a piece found and its reader's turn), after a random number of turns of
    // the microtask queue, so inflates, evictions and reuses interleave in many orders.
    const random = prng(64);
    const gz = await file.read(0, file.size);
    let tick = Promise.withResolvers<void>();
    const clock = setInterval(() => {
      tick.resolve();
      tick = Promise.withResolvers<void>();
    }, 1);
    const pause = async () => {
      await tick.promise;
      for (let turns = Math.floor(random() * 8); turns > 0; turns--) await null;
    };
    const blob = {
      size: file.size,
      async read(offset: number, length: number) {
        await pause();
        return gz.slice(offset, offset + length);
      },
      // As a read in a pool thread: the caller may give up at once, the bytes still land.
      readInto(offset: number, dest: Uint8Array, signal?: AbortSignal) {
        const landed = pause().then(() => dest.set(gz.subarray(offset, offset + dest.length)));
        if (!signal) return landed;
        return new Promise<void>((resolve, reject) => {
          landed.then(resolve);
          signal.addEventListener("abort", () => reject(signal.reason), { once: true });
        });
      },
    };
    const reader = await GzipRandomAccess.open(blob, zinfo, { cacheBytes: 1 << 20 });
    try {
      let exact = 0, aborted = 0;
      for (let wave = 0; wave < 30; wave++) {
        const reads = Array.from({ length: 12 }, async (_, i) => {
          const offset = Math.floor(random() * (tar.length - 1));
          const length = Math.min(tar.length - offset, 1 + Math.floor(random() * 300_000));
          const stop = new AbortController();
          if (i % 3 === 2) setTimeout(() => stop.abort(), Math.floor(random() * 4));
          // A reused reply buffer: whatever it held before must not show through.
          const dest = new Uint8Array(length).fill(0xee);
          try {
            if (i % 2) await reader.readInto(offset, dest, stop.signal);
            else dest.set(await reader.read(offset, length, stop.signal));
          } catch (error) {
            if (!stop.signal.aborted) throw error;
            aborted++;
            return;
          }
          const diff = firstDifference(dest, tar.subarray(offset, offset + length));
          assert.equal(diff, -1, `wave ${wave}: read ${offset}+${length} differs at +${diff}`);
          exact++;
        });
        // A sequential pass through part of the stream too (pieces made ahead, intervals
        // fetched ahead), beside the random reads.
        const from = Math.floor(random() * (tar.length - 2_000_000));
        const pass = (async () => {
          for (let at = from; at < from + 2_000_000; at += 128 * 1024) {
            const length = Math.min(128 * 1024, tar.length - at);
            const got = await reader.read(at, length);
            const diff = firstDifference(got, tar.subarray(at, at + length));
            assert.equal(diff, -1, `wave ${wave}: sequential read at ${at} differs at +${diff}`);
          }
        })();
        await Promise.all([...reads, pass]);
      }
      assert(exact > 200, `${exact} reads checked`);
      const buffers = reader.bufferStats;
      assert(
        buffers.reused > 4 * buffers.made,
        `buffers made ${buffers.made}, reused ${buffers.reused}: the pool is not used`,
      );
      assert(aborted > 0, "no read was cut short");
    } finally {
      clearInterval(clock);
      reader.close();
      await file.close();
      await zinfo.close();
    }
  },
});

Deno.test({
  name:
    "gzip random read starts from the snapshot at the piece boundary before it, not the checkpoint",
  ignore,
  async fn() {
    const tar = await gunzip(`${FIXTURES}/big.tar.gz`);
    const blob = await LocalFile.open(`${FIXTURES}/big.tar.gz`);
    const zinfo = await LocalFile.open(`${FIXTURES}/big.zinfo`);
    const piece = 1 << 20;
    // One piece cached: piece 2 is gone again when it is read the second time.
    const reader = await GzipRandomAccess.open(blob, zinfo, { cacheBytes: piece });
    try {
      assert.equal(reader.zinfo.checkpoints[1].uncompressedOffset > 4 * piece, true);
      const check = async (offset: number) => {
        const got = await reader.read(offset, 100);
        assert.equal(firstDifference(got, tar.subarray(offset, offset + 100)), -1, `${offset}`);
      };
      await check(3 * piece + 5); // from checkpoint 0: pieces 0-3 inflated, snapshots at 1-4 MiB
      assert.equal(reader.stats.inflatedBytes, 4 * piece);
      assert.equal(reader.stats.snapshotsUsed, 0);
      await check(2 * piece + 7); // piece 2 again: from the snapshot at 2 MiB, one piece
      assert.equal(reader.stats.inflatedBytes, 5 * piece);
      assert.equal(reader.stats.snapshotsUsed, 1);
      await check(piece + 9);
      assert.equal(reader.stats.inflatedBytes, 6 * piece);
      await check(20); // piece 0: from the checkpoint itself
      assert.equal(reader.stats.inflatedBytes, 7 * piece);
      assert.equal(reader.stats.snapshotsUsed, 2);
    } finally {
      reader.close();
      await blob.close();
      await zinfo.close();
    }
  },
});
