/**
 * The background windows after a listed-metadata mount (lib/source/background_windows.ts, issue
 * 12's cold python): real disk cache, real PrefetchedSource and CachedSource, an in-memory
 * registry that records every fetch. While pinned pages are read at a walk's rate (a cold `find`)
 * no window is fetched, but a few pinned reads (mount(2)'s superblock and root) hold nothing
 * back; a read of file data starts them at once, its own window first, and may add a window the
 * list lacks within the budget; a demand read never waits for the windows in flight.
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { PIN_PAGE_BYTES, PrefetchedSource } from "../lib/source/prefetched.ts";
import {
  BackgroundWindows,
  METADATA_WALK_QUIET_MIN_MS,
  METADATA_WALK_QUIET_MS,
  newWalkClock,
  pauseDuringWalks,
  WALK_MIN_READS,
  WALK_QUIET_GAPS,
  WALK_SPAN_MS,
  windowDelayMs,
} from "../lib/source/background_windows.ts";
import type { WalkClock } from "../lib/source/walk_clock_body.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";
import { sleep } from "./_support/wait.ts";

const CHUNK = 16 << 10;
const WINDOW = 64 << 10;
const WINDOWS = 12;
const DIGEST = "sha256:" + "ef".repeat(32);
const image = patternBytes(WINDOWS * WINDOW, 7);
/** Windows with "metadata" (a pinned page each); 1, 3, 5, 7, 9, 11 have none. */
const LISTED = [0, 2, 4, 6, 8, 10];

async function setUp(
  admitted: number[] = [],
  lanes: {
    inFlight?: number;
    idleInFlight?: number;
    pieceBytes?: number;
  } = {},
) {
  const dir = await Deno.makeTempDir();
  const cache = DiskCache.open({ checkCompleteBlobs: false, dir, chunkBytes: CHUNK })!;
  const inner = new MemorySource(image);
  const disk = cache.wrap(inner, { digest: DIGEST, origin: "test" }) as DiskCachedSource;
  const served = new PrefetchedSource(new CachedSource(disk, { cacheBytes: 8 << 20 }));
  // The last page of each listed window is pinned, as the metadata list does at mount.
  const pinnedPage = (w: number) => (w + 1) * WINDOW - PIN_PAGE_BYTES;
  for (const w of LISTED) served.pin(pinnedPage(w), image.slice(pinnedPage(w), (w + 1) * WINDOW));
  const windows = new BackgroundWindows({
    starts: LISTED.map((w) => w * WINDOW),
    windowBytes: WINDOW,
    sizeBytes: image.length,
    fill: (offset, length) => disk.fillAhead(offset, length),
    inFlight: 2,
    ...lanes,
    admit: (w) => admitted.includes(w),
    activity: () => served.readActivity(),
  });
  served.onDataRead((offset, length) => windows.promote(offset, length));
  const readPinned = (w: number) => served.read(pinnedPage(w), PIN_PAGE_BYTES);
  /** A walk's burst: WALK_MIN_READS pinned reads at once (one FUSE reader report's worth). */
  const walkBurst = async (i: number) => {
    for (let r = 0; r < WALK_MIN_READS; r++) await readPinned(LISTED[(i + r) % LISTED.length]);
  };
  const cleanUp = async () => {
    await served.close();
    await Deno.remove(dir, { recursive: true });
  };
  return { inner, disk, served, windows, readPinned, walkBurst, cleanUp };
}

/** The windows each fetch of `reads` falls in. */
const windowsOf = (reads: { offset: number; length: number }[]) =>
  reads.map((r) => Math.floor(r.offset / WINDOW));

Deno.test("windowDelayMs: a recent data read goes at once, a walk's reads hold back", () => {
  const now = 10_000;
  assert.equal(windowDelayMs({ walkMs: -Infinity, dataMs: -Infinity }, now), 0);
  assert.equal(
    windowDelayMs({ walkMs: now - 5, dataMs: -Infinity }, now),
    METADATA_WALK_QUIET_MS - 5,
  );
  assert.equal(windowDelayMs({ walkMs: now - 5, dataMs: now - 10 }, now), 0);
  assert.equal(
    windowDelayMs({ walkMs: now - METADATA_WALK_QUIET_MS, dataMs: -Infinity }, now),
    0,
  );
});

Deno.test("WalkClock: a walk is over after a quiet of WALK_QUIET_GAPS times its longest pause", () => {
  /** `batches` reports of WALK_MIN_READS pinned reads each, `everyMs` apart, from `startMs`. */
  const walk = (clock: WalkClock, startMs: number, batches: number, everyMs: number) => {
    for (let b = 0; b < batches; b++) {
      for (let r = 0; r < WALK_MIN_READS; r++) clock.note(startMs + b * everyMs);
    }
  };
  const idle = newWalkClock();
  assert.equal(idle.quietMs, METADATA_WALK_QUIET_MIN_MS, "no walk yet");
  walk(idle, 1000, 20, 5); // an idle machine's find: reports a few ms apart
  assert.equal(idle.quietMs, METADATA_WALK_QUIET_MIN_MS);
  const now = 1000 + 19 * 5;
  assert.equal(
    windowDelayMs({ walkMs: now, dataMs: -Infinity, walkQuietMs: idle.quietMs }, now + 5),
    15,
  );
  const loaded = newWalkClock();
  walk(loaded, 1000, 5, 40); // a loaded machine's: 40 ms apart
  assert.equal(loaded.quietMs, WALK_QUIET_GAPS * 40);
  walk(loaded, 1200, 2, 150);
  assert.equal(loaded.quietMs, METADATA_WALK_QUIET_MS, "never more than the maximum");
  // A pause longer than the maximum ends the walk: the next one starts from its own pace.
  walk(loaded, 5000, 10, 5);
  assert.equal(loaded.quietMs, METADATA_WALK_QUIET_MIN_MS);
  // The pause between mount(2)'s few reads and a walk is not the walk's.
  const mounted = newWalkClock();
  mounted.note(1000);
  mounted.note(1100);
  walk(mounted, 1150, 10, 5);
  assert.equal(mounted.quietMs, METADATA_WALK_QUIET_MIN_MS);
});

Deno.test("WalkClock: WALK_MIN_READS pinned reads within WALK_SPAN_MS are a walk, fewer are not", () => {
  const clock = newWalkClock();
  for (let i = 0; i < WALK_MIN_READS - 1; i++) clock.note(1000 + i);
  assert.equal(clock.walkMs, -Infinity, "fewer reads than a walk's");
  clock.note(1000 + WALK_MIN_READS);
  assert.equal(clock.walkMs, 1000 + WALK_MIN_READS);
  // Reads spread out (one a span apart, like `ls` now and then) never make a walk.
  const spread = newWalkClock();
  for (let i = 0; i < 10 * WALK_MIN_READS; i++) spread.note(i * (WALK_SPAN_MS + 1));
  assert.equal(spread.walkMs, -Infinity);
});

Deno.test("PrefetchedSource: mount(2)'s few pinned reads are no walk, a find's report is", async () => {
  const t = await setUp();
  try {
    await t.readPinned(0); // superblock
    await t.readPinned(2); // root directory
    assert.equal(t.served.readActivity().walkMs, -Infinity);
    // The FUSE reader thread's report of a find's READs: 64 pinned pages at once.
    const ranges = Array.from(
      { length: 64 },
      (_, i) => [(LISTED[i % LISTED.length] + 1) * WINDOW - PIN_PAGE_BYTES, PIN_PAGE_BYTES],
    ).flat();
    const before = performance.now();
    t.served.noteDirectReads(ranges);
    assert(t.served.readActivity().walkMs >= before);
    assert.equal(t.served.readActivity().dataMs, -Infinity, "pinned reads counted as data");
  } finally {
    await t.cleanUp();
  }
});

Deno.test("background windows: a few pinned reads at ready do not hold them back", async () => {
  const t = await setUp([], { pieceBytes: 2 * CHUNK });
  try {
    // mount(2) reads the superblock and the root directory right after ready.
    await t.readPinned(0);
    await t.readPinned(2);
    const done = t.windows.start();
    // Held as a walk, nothing would be fetched before METADATA_WALK_QUIET_MS.
    await sleep(METADATA_WALK_QUIET_MS / 4);
    assert(t.inner.reads.length > 0, "windows held back by two pinned reads");
    await done;
    assert.deepEqual([...new Set(windowsOf(t.inner.reads))].sort((a, b) => a - b), LISTED);
  } finally {
    await t.cleanUp();
  }
});

Deno.test("background windows: none fetched while only pinned pages are read, all after a quiet", async () => {
  const t = await setUp([], { pieceBytes: 2 * CHUNK });
  try {
    await t.walkBurst(0); // a walk has begun before the windows start
    const done = t.windows.start();
    const walkEnd = performance.now() + 4 * METADATA_WALK_QUIET_MS;
    for (let i = 0; performance.now() < walkEnd; i++) {
      await t.walkBurst(i);
      await sleep(10);
    }
    assert.equal(t.inner.reads.length, 0, "windows fetched during a walk of pinned pages");
    await done; // quiet now: every listed window, nothing else
    await t.disk.whenDurable();
    assert.deepEqual([...new Set(windowsOf(t.inner.reads))].sort((a, b) => a - b), LISTED);
    for (const w of LISTED) {
      const got = await t.disk.read(w * WINDOW, WINDOW);
      assert.deepEqual(got, image.subarray(w * WINDOW, (w + 1) * WINDOW), `window ${w}`);
    }
    assert.equal(t.windows.pendingCount, 0);
    // Nothing but pinned pages was read: one fill at a time, in pieces, the first after the
    // walk of pieceBytes (they grow from there, see the next test).
    assert.equal(t.inner.maxInFlight, 1);
    assert.equal(t.inner.reads[0].length, 2 * CHUNK, JSON.stringify(t.inner.reads));
  } finally {
    await t.cleanUp();
  }
});

Deno.test("background windows: a data read starts them during a walk, its window first", async () => {
  // Window 9 is not listed and may be added; window 11 is not listed and may not.
  const t = await setUp([9]);
  try {
    await t.walkBurst(0);
    const done = t.windows.start();
    await sleep(METADATA_WALK_QUIET_MIN_MS / 4); // still a walk: its reads come this fast
    await t.walkBurst(1);
    assert.equal(t.inner.reads.length, 0, JSON.stringify(t.inner.reads));
    // File data in window 8 (listed last but one): its chunk, then window 8, then window 9.
    const at = 8 * WINDOW + CHUNK;
    assert.deepEqual(await t.served.read(at, 100), image.subarray(at, at + 100));
    await done;
    // The demand read's own fetch, then window 8's other chunks, then window 9, then the rest.
    const order = windowsOf(t.inner.reads).filter((w, i, all) => i === 0 || w !== all[i - 1]);
    assert.deepEqual(order.slice(0, 2), [8, 9], JSON.stringify(t.inner.reads));
    assert.deepEqual(
      [...new Set(order)].sort((a, b) => a - b),
      [...LISTED, 9].sort((a, b) => a - b),
    );
    // A read in window 11 (not admitted) fetches its own chunks, not the window's first ones.
    const before = t.inner.reads.length;
    await t.served.read(11 * WINDOW + 2 * CHUNK, 10);
    await sleep(20);
    const after = t.inner.reads.slice(before);
    assert(
      after.length > 0 && after.every((r) => r.offset >= 11 * WINDOW + 2 * CHUNK),
      JSON.stringify(after),
    );
  } finally {
    await t.cleanUp();
  }
});

Deno.test("background windows: a demand read does not wait for the windows in flight", async () => {
  const t = await setUp([], { idleInFlight: 2 });
  // Window fetches (longer than a chunk) hang until released; a demand read's chunk does not.
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  const hung: number[] = [];
  const fetch = t.inner.read.bind(t.inner);
  t.inner.read = async (offset, length, signal) => {
    if (length > CHUNK) {
      hung.push(Math.floor(offset / WINDOW));
      await released;
    }
    return await fetch(offset, length, signal);
  };
  try {
    const done = t.windows.start(); // nothing read yet: windows 0 and 2 start at once
    await sleep(10);
    assert.deepEqual(hung, [0, 2]);
    const at = 6 * WINDOW + CHUNK; // in a window not started
    assert.deepEqual(await t.served.read(at, 4096), image.subarray(at, at + 4096));
    // Answered while both window fetches still hang.
    assert.deepEqual(t.inner.reads, [{ offset: at, length: CHUNK }]);
    assert.deepEqual(hung, [0, 2]);
    release();
    await done;
    assert.deepEqual([...new Set(windowsOf(t.inner.reads))].sort((a, b) => a - b), LISTED);
  } finally {
    release();
    await t.cleanUp();
  }
});

Deno.test("background windows: after a data read, the others go nearest to it first, not in offset order", async () => {
  const t = await setUp([], { inFlight: 1, idleInFlight: 1 });
  try {
    const at = 6 * WINDOW + CHUNK;
    assert.deepEqual(await t.served.read(at, 100), image.subarray(at, at + 100));
    await t.windows.start();
    const order = windowsOf(t.inner.reads).filter((w, i, all) => i === 0 || w !== all[i - 1]);
    // The read's own window, then 8 (after it wins the tie with 4), 4, 10, 2, 0.
    assert.deepEqual(order, [6, 8, 4, 10, 2, 0], JSON.stringify(t.inner.reads));
  } finally {
    await t.cleanUp();
  }
});

Deno.test("background windows: idle pieces double while no walk comes, and start small again after one", async () => {
  const activity = { walkMs: -Infinity, dataMs: -Infinity };
  const pieces: number[] = [];
  const windows = new BackgroundWindows({
    starts: [0, 8 * CHUNK, 16 * CHUNK],
    windowBytes: 8 * CHUNK,
    sizeBytes: 24 * CHUNK,
    pieceBytes: CHUNK,
    fill: (_offset, length) => {
      pieces.push(length / CHUNK);
      // A walk during the fifth fill, over by the time it ends.
      if (pieces.length === 5) activity.walkMs = performance.now() - METADATA_WALK_QUIET_MS;
      return Promise.resolve();
    },
    inFlight: 1,
    activity: () => activity,
  });
  await windows.start();
  // Window 0 in pieces of 1, 2, 4 chunks (and the 1 left), window 1 whole, window 2 from 1 again.
  assert.deepEqual(pieces, [1, 2, 4, 1, 8, 1, 2, 4, 1]);
});

Deno.test("pauseDuringWalks: waits out a walk, not a data read, and at most maxMs in all", async () => {
  const open = new AbortController().signal;
  const nobodyWaits = () => false;
  const timed = async (pause: () => Promise<void>) => {
    const startMs = performance.now();
    await pause();
    return performance.now() - startMs;
  };
  // A walk's last read just now, over after 40 ms of quiet: the pause lasts about that long.
  const walk = { walkMs: performance.now(), dataMs: -Infinity, walkQuietMs: 40 };
  const waited = await timed(() => pauseDuringWalks(() => walk)(open, nobodyWaits));
  assert(waited >= 35 && waited < 1000, `${waited} ms`);
  // File data read meanwhile (a reader may wait for the fill): no pause.
  const reading = { walkMs: performance.now(), dataMs: performance.now(), walkQuietMs: 40 };
  assert((await timed(() => pauseDuringWalks(() => reading)(open, nobodyWaits))) < 20);
  // A walk that goes on, another process waiting for the chunks: maxMs in all, however often
  // the fill asks.
  const endless = () => ({ walkMs: performance.now(), dataMs: -Infinity, walkQuietMs: 40 });
  const othersWait = () => true;
  const pause = pauseDuringWalks(endless, 60, 300);
  const first = await timed(() => pause(open, othersWait));
  const second = await timed(() => pause(open, othersWait));
  assert(first >= 55 && first < 250, `${first} ms`);
  assert(second < 20, `${second} ms after the budget was spent`);
  // Nobody else waiting: the longer bound, until a waiter comes (then at once, past maxMs).
  const alone = pauseDuringWalks(endless, 60, 300);
  assert((await timed(() => alone(open, nobodyWaits))) >= 295);
  let waiterCame = false;
  const latecomer = pauseDuringWalks(endless, 60, 5000);
  setTimeout(() => waiterCame = true, 150);
  const untilWaiter = await timed(() => latecomer(open, () => waiterCame));
  assert(untilWaiter >= 145 && untilWaiter < 1000, `${untilWaiter} ms`);
  // A closing source does not wait.
  const closing = new AbortController();
  closing.abort();
  assert((await timed(() => pauseDuringWalks(endless)(closing.signal, nobodyWaits))) < 20);
});

Deno.test("background windows: startWhenQuiet starts them after a quiet, not while a walk goes on", async () => {
  // Far longer than the walk's 10 ms between bursts: a burst late by a loaded machine's
  // scheduling (at 60 ms, 1 run in 12 with 4 test files on 2 busy cores) is no quiet.
  const QUIET_MS = 400;
  const t = await setUp([], { pieceBytes: 2 * CHUNK });
  try {
    // mount(2)'s two pinned reads right after ready are no activity.
    await t.readPinned(0);
    await t.readPinned(2);
    const quietStarted = t.windows.startWhenQuiet(QUIET_MS);
    // A walk that goes on for several quiet spans holds the start back all along.
    const walkEnd = performance.now() + 3 * QUIET_MS;
    for (let i = 0; performance.now() < walkEnd; i++) {
      await t.walkBurst(i);
      await sleep(10);
    }
    assert.equal(t.windows.started, false, "started during a walk");
    assert.equal(t.inner.reads.length, 0, JSON.stringify(t.inner.reads));
    assert.equal(await quietStarted, true);
    assert(t.windows.started);
    // Started by the quiet (no data read): its fills are held while the walk's reads are
    // recent (windowDelayMs), then every listed window is filled.
    await t.windows.start();
    assert.deepEqual([...new Set(windowsOf(t.inner.reads))].sort((a, b) => a - b), LISTED);
    assert.equal(t.windows.pendingCount, 0);
  } finally {
    await t.cleanUp();
  }
});

/** One window on an idle mount, its signal's controller, and how many fills it started. */
function abortableWindow() {
  const abort = new AbortController();
  let fills = 0;
  const windows = new BackgroundWindows({
    starts: [0],
    windowBytes: WINDOW,
    sizeBytes: WINDOW,
    fill: () => {
      fills++;
      return Promise.resolve();
    },
    inFlight: 1,
    activity: () => ({ walkMs: -Infinity, dataMs: -Infinity }),
    signal: abort.signal,
  });
  return { abort, windows, fills: () => fills };
}

Deno.test("background windows: startWhenQuiet counts the quiet from when `after` settles", async () => {
  const QUIET_MS = 20;
  const t = await setUp([], { pieceBytes: 2 * CHUNK });
  try {
    const ready = Promise.withResolvers<void>();
    const quietStarted = t.windows.startWhenQuiet(QUIET_MS, ready.promise);
    // Quiet for many spans, but the server is not ready yet (its attach still runs).
    await sleep(6 * QUIET_MS);
    assert.equal(t.windows.started, false, "started before `after` settled");
    assert.equal(t.inner.reads.length, 0, JSON.stringify(t.inner.reads));
    const readyMs = performance.now();
    ready.resolve();
    assert.equal(await quietStarted, true);
    assert(t.windows.started);
    assert(performance.now() - readyMs >= QUIET_MS - 1, "the quiet counts from `after`");
    await t.windows.start();
    assert.deepEqual([...new Set(windowsOf(t.inner.reads))].sort((a, b) => a - b), LISTED);
  } finally {
    await t.cleanUp();
  }
  // Aborted while `after` is pending (a server whose start failed): never started.
  const { abort, windows, fills } = abortableWindow();
  const never = new Promise<void>(() => {});
  const quiet = windows.startWhenQuiet(10, never);
  abort.abort();
  assert.equal(await quiet, false);
  await sleep(30);
  assert.equal(windows.started, false);
  assert.equal(fills(), 0);
});

Deno.test("background windows: startWhenQuiet resolves false when start() came first or the signal aborted", async () => {
  const t = await setUp();
  try {
    const quiet = t.windows.startWhenQuiet(30);
    const done = t.windows.start();
    assert.equal(await quiet, false);
    await done;
  } finally {
    await t.cleanUp();
  }
  const { abort, windows, fills } = abortableWindow();
  const quiet = windows.startWhenQuiet(10_000); // would keep the test alive if not cleared
  abort.abort();
  assert.equal(await quiet, false);
  assert.equal(windows.started, false);
  assert.equal(fills(), 0);
});
