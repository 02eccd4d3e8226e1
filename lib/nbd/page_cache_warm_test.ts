import assert from "node:assert/strict";
import { PageCacheWarmer, WALK_READS, WALK_SPAN_MS, type WarmIo } from "./page_cache_warm.ts";
import { closeFd, O_RDONLY } from "../../ffi/libc.ts";
import { openFile } from "../../ffi/files.ts";
import { willNeedRangesAsync } from "../../ffi/read_ahead.ts";

/** A WarmIo that records its calls; each advice settles in releaseAll(). */
function recordingIo(options: { openFd?: number } = {}) {
  const calls: string[] = [];
  const waiting: (() => void)[] = [];
  const io: WarmIo = {
    open: (path) => {
      calls.push(`open ${path}`);
      return Promise.resolve(options.openFd ?? 7);
    },
    willNeed: (fd, offset, length) => {
      calls.push(`willNeed ${fd} ${offset} ${length}`);
      return new Promise((resolve) => waiting.push(() => resolve(offset === 666 ? 22 : 0)));
    },
    close: (fd) => calls.push(`close ${fd}`),
  };
  const releaseAll = async () => {
    // Each settled advice lets its lane ask for the next.
    for (let round = 0; round < 20; round++) {
      waiting.splice(0).forEach((resolve) => resolve());
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  };
  return { io, calls, releaseAll };
}

Deno.test("PageCacheWarmer: every pinned run read ahead once per walk, in order, then closed", async () => {
  const { io, calls, releaseAll } = recordingIo();
  const logs: string[] = [];
  const runs = [0, 8192, 20480, 4096, 666, 4096, 65536, 12288];
  const warmer = new PageCacheWarmer("/dev/nbd3", () => runs, {
    io,
    lanes: 2,
    minIntervalMs: 60_000,
    log: (line) => logs.push(line),
  });
  warmer.request();
  const running = warmer.running;
  assert.ok(running, "no warm started");
  warmer.request(); // while one runs: none more
  await releaseAll();
  const report = await running;
  assert.deepEqual(report && { ...report, ms: 0 }, { runs: 4, bytes: 24576, failed: 1, ms: 0 });
  assert.deepEqual(calls, [
    "open /dev/nbd3",
    "willNeed 7 0 8192",
    "willNeed 7 20480 4096",
    "willNeed 7 666 4096",
    "willNeed 7 65536 12288",
  ]);
  assert.match(logs.join("\n"), /24576 bytes of pinned pages \(4 runs, 1 failed\) read ahead/);
  // Within the interval, a later walk starts none.
  warmer.request();
  assert.equal(warmer.running, undefined);
  assert.equal(calls.length, 5);
  // The device stays open for the next warm until stop().
  warmer.stop();
  await releaseAll();
  assert.deepEqual(calls.slice(5), ["close 7"]);
});

Deno.test("PageCacheWarmer: the device opened ahead once, for every warm; stop() closes it once", async () => {
  const { io, calls, releaseAll } = recordingIo();
  const warmer = PageCacheWarmer.onWalks("/dev/nbd4", {
    pinnedRuns: () => [0, 4096],
    onPinnedRead: () => {},
  }, { io, minIntervalMs: 0, log: () => {} });
  assert.deepEqual(calls, ["open /dev/nbd4"], "not opened ahead");
  for (let warm = 0; warm < 3; warm++) {
    warmer.request();
    const running = warmer.running;
    await releaseAll();
    await running;
  }
  assert.deepEqual(calls, ["open /dev/nbd4", ...Array(3).fill("willNeed 7 0 4096")]);
  // stop() during a warm: closed when that warm ends, once.
  warmer.request();
  const running = warmer.running;
  warmer.stop();
  await releaseAll();
  await running;
  warmer.stop();
  await releaseAll();
  assert.deepEqual(calls.filter((call) => call.startsWith("close")), ["close 7"]);

  // stop() before the open ends: closed once it does, and no warm.
  const early = slowOpeningWarmer("/dev/nbd5");
  early.warmer.stop();
  early.warmer.request();
  assert.equal(early.warmer.running, undefined);
  early.opened(9);
  await early.releaseAll();
  assert.deepEqual(early.calls, ["close 9"]);

  // stop() while a warm waits for the open: no advice, closed once when the open ends.
  const pending = slowOpeningWarmer("/dev/nbd6");
  pending.warmer.request();
  const warm = pending.warmer.running;
  assert.ok(warm, "no warm started");
  pending.warmer.stop();
  pending.opened(11);
  await pending.releaseAll();
  assert.equal(await warm, undefined);
  assert.deepEqual(pending.calls, ["close 11"]);
});

/** A warmer on walks of one pinned page whose device opens when `opened` is called. */
function slowOpeningWarmer(path: string) {
  let opened!: (fd: number) => void;
  const recording = recordingIo();
  recording.io.open = () => new Promise((resolve) => opened = resolve);
  const warmer = PageCacheWarmer.onWalks(path, {
    pinnedRuns: () => [0, 4096],
    onPinnedRead: () => {},
  }, { io: recording.io, minIntervalMs: 0, log: () => {} });
  return { ...recording, warmer, opened: (fd: number) => opened(fd) };
}

Deno.test("PageCacheWarmer: a later walk warms again; stop() and a device that will not open end it", async () => {
  const { io, calls, releaseAll } = recordingIo();
  const warmer = new PageCacheWarmer("/dev/nbd0", () => [0, 4096], {
    io,
    minIntervalMs: 0,
    log: () => {},
  });
  for (let walk = 0; walk < 2; walk++) {
    warmer.request();
    await releaseAll();
    await warmer.running;
  }
  assert.equal(calls.filter((call) => call.startsWith("willNeed")).length, 2);
  warmer.stop();
  warmer.request();
  assert.equal(warmer.running, undefined, "a warm after stop()");

  const refused = recordingIo({ openFd: -1 });
  const logs: string[] = [];
  const broken = new PageCacheWarmer("/dev/nbd9", () => [0, 4096], {
    io: refused.io,
    minIntervalMs: 0,
    log: (line) => logs.push(line),
  });
  broken.request();
  assert.equal(await broken.running, undefined);
  broken.request();
  assert.equal(broken.running, undefined, "tried again after the open failed");
  assert.deepEqual(refused.calls, ["open /dev/nbd9"]);
  assert.match(logs[0], /could not open it to read metadata ahead/);
});

Deno.test("PageCacheWarmer: WILLNEED for all runs in one process_madvise through libc on a real file", async () => {
  const path = Deno.makeTempFileSync({ prefix: "erofs-oci-warm-" });
  try {
    Deno.writeFileSync(path, new Uint8Array(64 << 10).fill(1));
    const logs: string[] = [];
    const warmer = new PageCacheWarmer(path, () => [0, 8192, 32768, 16384], {
      log: (line) => logs.push(line),
    });
    warmer.request();
    const report = await warmer.running;
    assert.equal(report?.failed, 0, logs.join("\n"));
    assert.equal(report?.bytes, 24576);
    assert.match(logs.join("\n"), /one batch/, "not advised in one call");
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("willNeedRangesAsync: more ranges than one call takes, and a range past the end", async () => {
  const path = Deno.makeTempFileSync({ prefix: "erofs-oci-warm-" });
  const file = Deno.openSync(path, { read: true, write: true });
  try {
    file.truncateSync(3000 * 4096);
    const fd = openFile(path, O_RDONLY);
    try {
      // 1500 one-page ranges, every other page: two calls (UIO_MAXIOV is 1024).
      const ranges = Array.from({ length: 1500 }, (_, i) => [2 * i * 4096, 4096]).flat();
      assert.equal(await willNeedRangesAsync(fd, ranges), 1500 * 4096);
      assert.equal(await willNeedRangesAsync(fd, []), 0);
      // Advice past the end of the file is no error (readahead stops at the end).
      assert.equal(await willNeedRangesAsync(fd, [3000 * 4096, 8192]), 8192);
      // An offset that is not page-aligned is refused by the kernel: the caller goes one by one.
      assert.equal(await willNeedRangesAsync(fd, [100, 4096]), -1);
    } finally {
      closeFd(fd);
    }
  } finally {
    file.close();
    Deno.removeSync(path);
  }
});

Deno.test("PageCacheWarmer: a batch that stops early counts the rest failed; a refused batch goes one by one", async () => {
  const { io, calls, releaseAll } = recordingIo();
  let answer = 8192 + 4096; // the first two runs
  io.willNeedAll = (fd, runs) => {
    calls.push(`willNeedAll ${fd} ${runs.length / 2}`);
    return Promise.resolve(answer);
  };
  const logs: string[] = [];
  const warmer = new PageCacheWarmer("/dev/nbd2", () => [0, 8192, 20480, 4096, 65536, 12288], {
    io,
    minIntervalMs: 0,
    log: (line) => logs.push(line),
  });
  warmer.request();
  let report = await warmer.running;
  assert.deepEqual(report && { ...report, ms: 0 }, { runs: 3, bytes: 12288, failed: 1, ms: 0 });
  assert.deepEqual(calls, ["open /dev/nbd2", "willNeedAll 7 3"]);
  assert.match(logs[0], /1 failed.*one batch/);

  answer = -1;
  for (let warm = 0; warm < 2; warm++) {
    calls.length = 0;
    warmer.request();
    const running = warmer.running;
    await releaseAll();
    report = await running;
    assert.equal(report?.bytes, 24576);
    assert.equal(calls.filter((call) => call.startsWith("willNeed ")).length, 3);
  }
  // Asked once; after its refusal, one by one without asking again.
  assert.equal(calls.filter((call) => call.startsWith("willNeedAll")).length, 0);
});

Deno.test("PageCacheWarmer: a walk's rate of pinned reads warms; the interval doubles", async () => {
  const { io, releaseAll } = recordingIo();
  const warmer = new PageCacheWarmer("/dev/nbd1", () => [0, 4096], {
    io,
    minIntervalMs: 1000,
    log: () => {},
  });
  // Warms started: each sets a new `running` (checked right after each request).
  let started = 0;
  let last: unknown;
  const seen = () => {
    const running = warmer.running;
    if (running && running !== last) [started, last] = [started + 1, running];
  };
  const warms = () => (seen(), started);
  // Reads slower than a walk's: none.
  const slowGapMs = WALK_SPAN_MS / (WALK_READS - 1) + 1;
  for (let i = 0; i < 3 * WALK_READS; i++) {
    warmer.notePinnedRead(i * slowGapMs);
    seen();
  }
  assert.equal(warms(), 0);
  // WALK_READS within WALK_SPAN_MS: one warm.
  const t = 100_000;
  for (let i = 0; i < WALK_READS - 1; i++) {
    warmer.notePinnedRead(t + i);
    seen();
  }
  assert.equal(warms(), 0, "a warm before WALK_READS reads");
  const first = t + WALK_READS;
  warmer.notePinnedRead(first);
  assert.equal(warms(), 1);
  await releaseAll();
  await warmer.running;
  // Then at most one per interval: 1 s, then 2 s, 4 s...
  warmer.request(first + 900);
  assert.equal(warms(), 1);
  for (
    const [at, expected] of [[t + 1000, 2], [t + 2900, 2], [t + 3000, 3], [t + 6900, 3], [
      t + 7000,
      4,
    ]]
  ) {
    warmer.request(first + at);
    assert.equal(warms(), expected, `at +${at} ms`);
    await releaseAll();
    await warmer.running;
  }
});
