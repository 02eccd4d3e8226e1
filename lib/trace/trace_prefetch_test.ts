/**
 * Trace format bounds and the prefetch queue, without a mount: merging keeps first-access
 * order; hostile documents are refused; a reader's read drops a queued piece (it jumps the
 * queue and is not fetched twice); only PARALLEL reads are in flight.
 */
import assert from "node:assert/strict";
import { buildTrace, encodeTrace, MAX_TRACE_BYTES, parseTrace, rangesForLayers } from "./format.ts";
import { TracePrefetcher } from "./prefetch.ts";
import { TraceRecorder } from "./recorder.ts";

const DIGEST = `sha256:${"1".repeat(64)}`;

Deno.test("trace: accesses merge per layer, ordered by first touch", () => {
  const recorder = new TraceRecorder();
  const layer = recorder.addLayer({ digest: DIGEST, size: 1 << 20 });
  recorder.record(layer, 8192, 4096); // first: the middle
  recorder.record(layer, 0, 4096);
  recorder.record(layer, 12288, 4096); // touches the first range: merged into it
  recorder.record(layer, 4096, 100); // touches [0,4096)
  const trace = parseTrace(encodeTrace(recorder.trace()));
  assert.deepEqual(trace.ranges, [[0, 8192, 8192], [0, 0, 4196]]);
});

Deno.test("trace: hostile documents are refused with one line", () => {
  const layers = [{ digest: DIGEST, size: 65536 }];
  const bad: [unknown, RegExp][] = [
    [{ version: 2, layers, ranges: [] }, /not a version 1 trace/],
    [{ version: 1, layers: [{ digest: "sha256:zz", size: 1 }], ranges: [] }, /no valid digest/],
    [{ version: 1, layers, ranges: [[0, 65000, 4096]] }, /outside layer 0/],
    [{ version: 1, layers, ranges: [[1, 0, 1]] }, /names layer 1/],
    [{ version: 1, layers, ranges: [[0, -1, 1]] }, /not \[layer, offset, length\]/],
    [{ version: 1, layers, ranges: [[0, 0, 4096], [0, 100, 10]] }, /overlap/],
    [{ version: 1, layers, ranges: Array(100_001).fill([0, 0, 1]) }, /more than the 100000/],
  ];
  for (const [doc, message] of bad) {
    assert.throws(() => parseTrace(new TextEncoder().encode(JSON.stringify(doc))), message);
  }
  assert.throws(() => parseTrace(new Uint8Array(MAX_TRACE_BYTES + 1)), /more than the/);
  assert.throws(() => parseTrace(new TextEncoder().encode("{")), /not JSON/);
  const ok = buildTrace([{ layer: layers[0], accesses: [{ offset: 0, length: 10, seq: 0 }] }]);
  assert.deepEqual(parseTrace(encodeTrace(ok)).ranges, [[0, 0, 10]]);
});

Deno.test("prefetch: a reader's read drops the queued piece; at most PARALLEL in flight", async () => {
  const reads: [number, number][] = [];
  let inFlight = 0, maxInFlight = 0;
  const release: (() => void)[] = [];
  const target = {
    async read(offset: number, length: number) {
      reads.push([offset, length]);
      maxInFlight = Math.max(maxInFlight, ++inFlight);
      await new Promise<void>((resolve) => release.push(resolve));
      inFlight--;
    },
  };
  const MiB = 1 << 20;
  // Far apart: no coalescing; one piece each.
  const ranges = Array.from({ length: 6 }, (_, i) => ({
    layerIndex: 0,
    offset: i * 4 * MiB,
    length: MiB,
  }));
  const prefetcher = new TracePrefetcher([target], ranges);
  const done = prefetcher.run(new AbortController().signal, 2);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(maxInFlight, 2);
  // The application reads the last traced range before the prefetch got there.
  prefetcher.noteRead(0, 20 * MiB, MiB);
  while (reads.length < 5 || release.length) {
    release.shift()?.();
    await new Promise((r) => setTimeout(r, 1));
  }
  const summary = await done;
  assert.deepEqual(reads.map(([o]) => o / MiB), [0, 4, 8, 12, 16], "piece at 20 MiB not read");
  assert.match(summary, /1048576 read by the application first/);
  const progress = prefetcher.progress(0)!;
  assert.equal(progress.bytesDone, 6 * MiB);
  assert.equal(progress.state, "done");
});

Deno.test("prefetch: a memory-only budget bounds what a layer takes", () => {
  const ranges = [{ layerIndex: 0, offset: 0, length: 10 << 20 }];
  const prefetcher = new TracePrefetcher([{ read: () => Promise.resolve() }], ranges, {
    budgetBytes: [3 << 20],
  });
  assert.equal(prefetcher.progress(0)!.bytesTotal, 3 << 20);
});

Deno.test("trace: a layer the mount lacks is refused, or ignored when a subset is mounted", () => {
  const other = `sha256:${"2".repeat(64)}`;
  const trace = parseTrace(encodeTrace({
    version: 1,
    layers: [{ digest: DIGEST, size: 100 }, { digest: other, size: 50 }],
    ranges: [[1, 0, 10], [0, 5, 5]],
  }));
  const mounted = [{ digest: DIGEST, sizeBytes: 100 }];
  assert.throws(() => rangesForLayers(trace, mounted), /this image does not have/);
  assert.deepEqual(rangesForLayers(trace, mounted, { subset: true }), [
    { layerIndex: 0, offset: 5, length: 5 },
  ]);
  assert.throws(
    () => rangesForLayers(trace, [{ digest: DIGEST, sizeBytes: 99 }], { subset: true }),
    /the trace says 100/,
  );
});

Deno.test("trace: a layer listed twice is two layers of the image, never one read twice", () => {
  const twice = parseTrace(encodeTrace({
    version: 1,
    layers: [{ digest: DIGEST, size: 100 }, { digest: DIGEST, size: 100 }],
    ranges: [[0, 0, 100], [1, 0, 100]],
  }));
  // The image holds that layer once: each trace layer would read it whole.
  assert.throws(
    () => rangesForLayers(twice, [{ digest: DIGEST, sizeBytes: 100 }]),
    /lists layer sha256:1{64} more often than this image has it/,
  );
  // Held twice (the same layer at two places of the stack): one each.
  assert.deepEqual(
    rangesForLayers(twice, [{ digest: DIGEST, sizeBytes: 100 }, {
      digest: DIGEST,
      sizeBytes: 100,
    }]),
    [{ layerIndex: 0, offset: 0, length: 100 }, { layerIndex: 1, offset: 0, length: 100 }],
  );
});

Deno.test("prefetch: covers() only bytes of pieces read or being read, not queued ones", async () => {
  const MiB = 1 << 20;
  const gates: (() => void)[] = [];
  const target = {
    read: () => new Promise<void>((resolve) => gates.push(resolve)),
  };
  // Two pieces far apart (not coalesced), one read at a time.
  const prefetcher = new TracePrefetcher([target], [
    { layerIndex: 0, offset: 0, length: MiB },
    { layerIndex: 0, offset: 8 * MiB, length: MiB },
  ]);
  assert.equal(prefetcher.covers(0, 4096, 4096), false, "nothing started yet");
  const done = prefetcher.run(new AbortController().signal, 1);
  assert.equal(prefetcher.covers(0, 4096, 4096), true, "the first piece is being read");
  assert.equal(prefetcher.covers(0, MiB - 4096, 8192), false, "runs past the piece");
  assert.equal(prefetcher.covers(0, 8 * MiB, 4096), false, "the second piece is still queued");
  gates.shift()!();
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(prefetcher.covers(0, 8 * MiB + 4096, 4096), true);
  gates.shift()!();
  await done;
  assert.equal(prefetcher.covers(0, 0, MiB), true);
  assert.equal(prefetcher.covers(0, 2 * MiB, 4096), false, "between the pieces");
  assert.equal(prefetcher.covers(1, 0, 4096), false, "no such layer");
});

Deno.test("prefetch: with groupBytes, queued pieces in the same fetch unit are read together", async () => {
  const MiB = 1 << 20;
  const started: number[] = [];
  const gates: (() => void)[] = [];
  const target = {
    read(offset: number) {
      started.push(offset);
      return new Promise<void>((resolve) => gates.push(resolve));
    },
  };
  // Trace order jumps between 1 MiB units: 0, 5, 0 again, 9, 5 again (far enough apart in
  // the unit not to coalesce).
  const ranges = [0, 5 * MiB, 600 << 10, 9 * MiB, 5 * MiB + (700 << 10)].map((offset) => ({
    layerIndex: 0,
    offset,
    length: 4096,
  }));
  const prefetcher = new TracePrefetcher([target], ranges, { groupBytes: [MiB] });
  const done = prefetcher.run(new AbortController().signal, 1);
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(started, [0, 600 << 10], "unit 0's two pieces at once");
  gates.splice(0).forEach((release) => release());
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(started.slice(2), [5 * MiB, 5 * MiB + (700 << 10)], "then unit 5's");
  gates.splice(0).forEach((release) => release());
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(started.slice(4), [9 * MiB]);
  gates.splice(0).forEach((release) => release());
  assert.match(await done, /trace prefetch done: 20480 bytes in 5 pieces, 5 reads/);
  // Without groupBytes: trace order, one at a time.
  const plain: number[] = [];
  await new TracePrefetcher([{
    read: (offset: number) => (plain.push(offset), Promise.resolve()),
  }], ranges).run(new AbortController().signal, 1);
  assert.deepEqual(plain, ranges.map((r) => r.offset));
});

Deno.test("prefetch: a target with readMany gets the next queued pieces of a layer together", async () => {
  const KiB = 1024, MiB = 1 << 20;
  const calls: string[] = [];
  const gates: (() => void)[] = [];
  const gate = () => new Promise<void>((resolve) => gates.push(resolve));
  const target = (layer: number) => ({
    read(offset: number) {
      calls.push(`L${layer} read ${offset / MiB}`);
      return gate();
    },
    readMany(ranges: readonly { offset: number; length: number }[]) {
      calls.push(`L${layer} many ${ranges.map((r) => r.offset / MiB).join(",")}`);
      return gate();
    },
  });
  // Layer 0: 40 small pieces a MiB apart (no coalescing), then one of layer 1, then three
  // pieces of 200 KiB and one more small one of layer 0.
  const ranges = [
    ...Array.from({ length: 40 }, (_, i) => ({ layerIndex: 0, offset: i * MiB, length: 4 * KiB })),
    { layerIndex: 1, offset: 0, length: 4 * KiB },
    ...[50, 51, 52].map((m) => ({ layerIndex: 0, offset: m * MiB, length: 200 * KiB })),
    { layerIndex: 0, offset: 60 * MiB, length: 4 * KiB },
  ];
  const prefetcher = new TracePrefetcher([target(0), target(1)], ranges);
  // The application reads piece 35 before the prefetch gets to it: it is not fetched again.
  prefetcher.noteRead(0, 35 * MiB, 4 * KiB);
  const done = prefetcher.run(new AbortController().signal, 1);
  const step = async () => {
    await new Promise((r) => setTimeout(r, 0));
    gates.splice(0).forEach((release) => release());
  };
  await new Promise((r) => setTimeout(r, 0));
  // A reader of piece 3 (in the running batch) waits for the batch, not for a read of its own.
  let claimSettled = false;
  prefetcher.claim(0, 3 * MiB, 4096)!.then(() => claimSettled = true);
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(claimSettled, false);
  for (let i = 0; i < 6; i++) await step();
  assert.equal(claimSettled, true);
  const list = (from: number, to: number) =>
    Array.from({ length: to - from }, (_, i) => from + i).filter((m) => m !== 35).join(",");
  assert.deepEqual(calls, [
    `L0 many ${list(0, 32)}`, // at most PREFETCH_BATCH_PIECES
    `L0 many ${list(32, 40)}`, // up to the other layer's piece (the order holds), 35 skipped
    "L1 read 0", // alone: a single piece is a plain read
    "L0 many 50,51", // 400 KiB; a third 200 KiB piece would pass PREFETCH_BATCH_BYTES
    "L0 many 52,60",
  ]);
  assert.match(
    await done,
    /trace prefetch done: \d+ bytes in 45 pieces, 5 reads \(4096 read by the app/,
  );
  assert.equal(prefetcher.progress(0)!.bytesDone, prefetcher.progress(0)!.bytesTotal);
});

Deno.test("prefetch: a failed readMany puts its pieces back and counts one failure", async () => {
  let attempts = 0;
  const target = {
    read: () => Promise.resolve(),
    readMany: () => (attempts++, Promise.reject(new Error("registry down"))),
  };
  const ranges = Array.from({ length: 100 }, (_, i) => ({
    layerIndex: 0,
    offset: i << 20,
    length: 4096,
  }));
  const prefetcher = new TracePrefetcher([target], ranges);
  const summary = await prefetcher.run(new AbortController().signal, 1);
  assert.match(
    summary,
    /stopped: 3 reads failed \(it stops at 3; those under way when it did end too\): registry down/,
  );
  assert.equal(attempts, 3);
  assert.equal(prefetcher.progress(0)!.bytesDone, 0);
  assert.equal(prefetcher.progress(0)!.state, "failed");
});

Deno.test("prefetch: with readMany and groupBytes, a batch is bounded by the units it fetches", async () => {
  const KiB = 1024;
  const unit = 64 * KiB;
  const batches: number[][] = [];
  const target = {
    read: () => Promise.reject(new Error("a batch target reads through readMany")),
    readMany(ranges: readonly { offset: number; length: number }[]) {
      batches.push(ranges.map((r) => r.offset / KiB));
      return Promise.resolve();
    },
  };
  // Trace order: twenty pieces in twenty units (4 KiB, far apart: not coalesced), then one in
  // the first unit again (past the coalescing look-back; a mate: it comes with the first batch).
  const ranges = [
    ...Array.from(
      { length: 20 },
      (_, i) => ({ layerIndex: 0, offset: i * 1024 * KiB, length: 4096 }),
    ),
    { layerIndex: 0, offset: 60 * KiB, length: 4096 },
  ];
  const prefetcher = new TracePrefetcher([target], ranges, { groupBytes: [unit] });
  assert.match(
    await prefetcher.run(new AbortController().signal, 1),
    /21 pieces, 3 reads/,
  );
  // PREFETCH_BATCH_BYTES (512 KiB) of units: eight units, the mate with the first.
  assert.deepEqual(batches, [
    [0, 60, 1024, 2048, 3072, 4096, 5120, 6144, 7168],
    [8, 9, 10, 11, 12, 13, 14, 15].map((m) => m * 1024),
    [16, 17, 18, 19].map((m) => m * 1024),
  ]);
});

Deno.test("prefetch: a piece widened over a gap is not read again by a later one", async () => {
  const reads: [number, number][] = [];
  const target = {
    read(offset: number, length: number) {
      reads.push([offset, length]);
      return Promise.resolve();
    },
  };
  const MiB = 1 << 20;
  const ranges = [
    // One piece [0, 104096): the gap between the two ranges is merged.
    { layerIndex: 0, offset: 0, length: 4096 },
    { layerIndex: 0, offset: 100_000, length: 4096 },
    // Far apart, more than the coalescing lookback: 20 pieces of their own.
    ...Array.from({ length: 20 }, (_, i) => ({
      layerIndex: 0,
      offset: (i + 2) * 4 * MiB,
      length: 4096,
    })),
    // Inside the first piece (dropped), and across its end (trimmed to what is new).
    { layerIndex: 0, offset: 50_000, length: 4096 },
    { layerIndex: 0, offset: 102_000, length: 8192 },
  ];
  const prefetch = new TracePrefetcher([target], ranges);
  assert.equal(prefetch.pieceCount, 22);
  const union = 104_096 + 20 * 4096 + (110_192 - 104_096);
  assert.equal(prefetch.progress(0)!.bytesTotal, union);
  await prefetch.run(new AbortController().signal);
  const read = reads.reduce((sum, [, length]) => sum + length, 0);
  assert.equal(read, union, JSON.stringify(reads));
  assert.equal(prefetch.progress(0)!.bytesDone, union);
});
