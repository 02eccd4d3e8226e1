import assert from "node:assert/strict";
import { PageCacheWarmer, WALK_READS, WALK_SPAN_MS, type WarmIo } from "./page_cache_warm.ts";

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
    "close 7",
  ]);
  assert.match(logs.join("\n"), /24576 bytes of pinned pages \(4 runs, 1 failed\) read ahead/);
  // Within the interval, a later walk starts none.
  warmer.request();
  assert.equal(warmer.running, undefined);
  assert.equal(calls.length, 6);
});

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

Deno.test("PageCacheWarmer: posix_fadvise(WILLNEED) through libc on a real file", async () => {
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
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("PageCacheWarmer: a walk's rate of pinned reads warms; the interval doubles", async () => {
  const { io, calls, releaseAll } = recordingIo();
  const warmer = new PageCacheWarmer("/dev/nbd1", () => [0, 4096], {
    io,
    minIntervalMs: 1000,
    log: () => {},
  });
  const warms = () => calls.filter((call) => call.startsWith("open")).length;
  // Reads slower than a walk's: none.
  const slowGapMs = WALK_SPAN_MS / (WALK_READS - 1) + 1;
  for (let i = 0; i < 3 * WALK_READS; i++) warmer.notePinnedRead(i * slowGapMs);
  assert.equal(warms(), 0);
  // WALK_READS within WALK_SPAN_MS: one warm.
  const t = 100_000;
  for (let i = 0; i < WALK_READS - 1; i++) warmer.notePinnedRead(t + i);
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
    await releaseAll();
    await warmer.running;
    assert.equal(warms(), expected, `at +${at} ms`);
  }
});
