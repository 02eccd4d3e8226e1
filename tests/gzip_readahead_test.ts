/**
 * What GzipRandomAccess fetches and inflates for sequential and random readers (gzip(1) data,
 * our zinfo with 1 MiB spans, the blob in memory recording every read): a sequential pass
 * inflates each byte once with one cursor per interval and fetches each compressed byte once
 * in about one read per interval; a run of reads over a tenth of the data fetches the
 * intervals it touches and at most half of the next; a lone read fetches about the compressed
 * bytes up to the end of its piece, never past the next checkpoint. Bounds come from the zinfo
 * checkpoints of the data, not fixed numbers.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { prng } from "./_support/gzip_data.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { buildZinfo } from "../lib/gzip/zinfo_builder.ts";
import { GzipRandomAccess } from "../lib/gzip/gzip_random_access.ts";
import { piecesMoved, ReadRuns } from "../lib/gzip/read_runs.ts";
import type { Source } from "../lib/source/source.ts";

const SPAN_BYTES = 1 << 20;
const PIECE_BYTES = 128 << 10;
const TEXT_BYTES = 10 << 20;

/** Words from a small vocabulary (compresses about 3:1, like source trees). */
function text(bytes: number): Uint8Array {
  const random = prng(11);
  const words = Array.from({ length: 2000 }, (_, i) => `w${(i * 7919).toString(36)}`);
  const parts: string[] = [];
  let size = 0;
  while (size < bytes) {
    const word = words[Math.floor(random() * random() * words.length)];
    const sep = random() < 0.1 ? "\n" : " ";
    parts.push(word, sep);
    size += word.length + 1;
  }
  return new TextEncoder().encode(parts.join("")).subarray(0, bytes);
}

async function gzip(bytes: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  const child = new Deno.Command("gzip", { args: ["-6", "-n"], stdin: "piped", stdout: "piped" })
    .spawn();
  const writer = child.stdin.getWriter();
  const written = writer.write(bytes).then(() => writer.close());
  const out = await child.output();
  await written;
  assert.ok(out.success, "gzip failed");
  return out.stdout;
}

interface Data {
  tar: Uint8Array;
  gz: Uint8Array<ArrayBuffer>;
  zinfo: Uint8Array;
}

let cached: Data | undefined;
async function data(): Promise<Data> {
  if (cached) return cached;
  const tar = text(TEXT_BYTES);
  const gz = await gzip(tar);
  const { zinfo } = await buildZinfo(
    (async function* () {
      yield gz;
    })(),
    { spanBytes: SPAN_BYTES },
  );
  cached = { tar, gz, zinfo };
  return cached;
}

function bytesSource(bytes: Uint8Array): Source {
  return {
    size: bytes.length,
    read: (offset, length) => Promise.resolve(bytes.slice(offset, offset + length)),
  };
}

async function open(d: Data): Promise<{ reader: GzipRandomAccess; blob: MemorySource }> {
  const blob = new MemorySource(d.gz);
  const reader = await GzipRandomAccess.open(blob, bytesSource(d.zinfo), {
    pieceBytes: PIECE_BYTES,
  });
  return { reader, blob };
}

function fetched(blob: MemorySource): number {
  return blob.reads.reduce((n, r) => n + r.length, 0);
}

async function readRun(
  reader: GzipRandomAccess,
  tar: Uint8Array,
  from: number,
  to: number,
  step: number,
): Promise<void> {
  for (let at = from; at < to; at += step) {
    const length = Math.min(step, to - at);
    const got = await reader.read(at, length);
    assert.deepEqual(got, tar.subarray(at, at + length), `read ${at}+${length}`);
  }
}

/** Waits for pieces made in the background (they start right after a read returns). */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setTimeout(resolve, 5));
}

const ignore = requires(command("gzip"));

Deno.test({
  name: "gzip sequential pass: each byte inflated once, one cursor and ~one fetch per interval",
  ignore,
  async fn() {
    const d = await data();
    const { reader, blob } = await open(d);
    try {
      await readRun(reader, d.tar, 0, d.tar.length, 64 << 10);
      await settle();
      const intervals = reader.zinfo.checkpoints.length;
      assert.ok(intervals >= 8, `only ${intervals} checkpoints`);
      assert.equal(reader.stats.inflatedBytes, d.tar.length);
      assert.equal(reader.stats.cursorsOpened, intervals);
      assert.ok(reader.stats.piecesAhead > 0, "no piece was made ahead");
      assert.ok(reader.stats.intervalsPrefetched > 0, "no interval was fetched ahead");
      // Each compressed byte once (+1 per checkpoint with bits: its first byte is shared).
      assert.ok(fetched(blob) <= d.gz.length + intervals, `fetched ${fetched(blob)}`);
      // The first interval: its first piece, then the rest; later ones mostly in one read.
      assert.ok(blob.reads.length <= 2 * intervals, `${blob.reads.length} blob reads`);
    } finally {
      reader.close();
    }
  },
});

Deno.test({
  name: "gzip two interleaved sequential readers each keep their readahead",
  ignore,
  async fn() {
    const d = await data();
    const { reader, blob } = await open(d);
    try {
      const half = Math.floor(d.tar.length / 2);
      const step = 64 << 10;
      for (let at = 0; at < half; at += step) {
        for (const base of [0, half]) {
          const from = base + at, length = Math.min(step, base + half - from);
          const got = await reader.read(from, length);
          assert.deepEqual(got, d.tar.subarray(from, from + length), `read ${from}+${length}`);
        }
      }
      await settle();
      const intervals = reader.zinfo.checkpoints.length;
      assert.equal(reader.stats.inflatedBytes, 2 * half);
      // The interval holding the midpoint is opened twice (once per reader), nothing else.
      assert.ok(reader.stats.cursorsOpened <= intervals + 1, `${reader.stats.cursorsOpened}`);
      assert.ok(reader.stats.intervalsPrefetched > 0, "no interval was fetched ahead");
      assert.ok(fetched(blob) <= d.gz.length + 2 * intervals, `fetched ${fetched(blob)}`);
      // About one fetch per interval: each reader's first piece, then whole intervals.
      assert.ok(blob.reads.length <= intervals + 2, `${blob.reads.length} blob reads`);
    } finally {
      reader.close();
    }
  },
});

Deno.test({
  name: "gzip run over a tenth of the data fetches the intervals it touches + < half the next",
  ignore,
  async fn() {
    const d = await data();
    const { reader, blob } = await open(d);
    try {
      const from = Math.floor(d.tar.length * 0.3), to = Math.floor(d.tar.length * 0.4);
      await readRun(reader, d.tar, from, to, 16 << 10);
      await settle();
      const cps = reader.zinfo.checkpoints;
      const first = reader.zinfo.checkpointFor(from), last = reader.zinfo.checkpointFor(to - 1);
      assert.ok(last + 2 < cps.length, "the range must not reach the last intervals");
      const touched = cps[last + 1].compressedOffset - cps[first].compressedOffset + 1;
      const next = cps[last + 2].compressedOffset - cps[last + 1].compressedOffset;
      const got = fetched(blob);
      assert.ok(
        got <= touched + next / 2,
        `fetched ${got}, intervals touched ${touched}, next interval ${next}`,
      );
      assert.ok(got >= touched / 2, `fetched ${got} cannot hold the range`);
    } finally {
      reader.close();
    }
  },
});

Deno.test({
  name: "gzip lone read fetches up to its piece, never past the next checkpoint",
  ignore,
  async fn() {
    const d = await data();
    const cps = (await open(d)).reader.zinfo.checkpoints;
    for (let i = 0; i + 1 < cps.length; i++) {
      const interval = cps[i + 1].compressedOffset - cps[i].compressedOffset + 1;
      const out = cps[i + 1].uncompressedOffset - cps[i].uncompressedOffset;
      assert.ok(out >= 4 * PIECE_BYTES, `interval ${i} has ${out} bytes`);
      for (const [where, at] of [["first piece", 100], ["last piece", out - 100]] as const) {
        const { reader, blob } = await open(d);
        try {
          const offset = cps[i].uncompressedOffset + at;
          assert.deepEqual(await reader.read(offset, 50), d.tar.subarray(offset, offset + 50));
          await settle();
          const got = fetched(blob);
          assert.equal(reader.stats.piecesAhead, 0, "a lone read is not sequential");
          assert.ok(
            blob.reads.every((r) => r.offset + r.length <= cps[i + 1].compressedOffset),
            `interval ${i}, ${where}: a read went past the next checkpoint ` +
              `${cps[i + 1].compressedOffset}: ${JSON.stringify(blob.reads)}`,
          );
          if (where === "first piece") {
            assert.ok(got < interval / 2, `interval ${i}: fetched ${got} of ${interval}`);
          }
          assert.equal(blob.reads.length, 1, `interval ${i}, ${where}: one fetch`);
        } finally {
          reader.close();
        }
      }
    }
  },
});

Deno.test("ReadRuns: runs follow reads near their end, lone reads move no pieces", () => {
  const runs = new ReadRuns(100);
  const a = runs.note(0, 50);
  assert.equal(piecesMoved(a, 0, 100), 0);
  assert.equal(runs.note(60, 50), a); // a small gap: the same run
  assert.equal(piecesMoved(a, 100, 100), 1);
  assert.equal(piecesMoved(a, 300, 100), 3);
  const b = runs.note(10_000, 4000); // far away: a new run, lone
  assert.notEqual(b, a);
  assert.equal(piecesMoved(b, 10_100, 100), 0, "one long read is not a pattern");
  assert.equal(runs.note(150, 10), a, "the first run is still followed");
});
