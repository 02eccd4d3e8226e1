import assert from "node:assert/strict";
import { startLibcWorker } from "../../ffi/libc_worker.ts";
import { closeFd, errno, libc, O_RDWR } from "../../ffi/libc.ts";
import { openFile } from "../../ffi/files.ts";
import type { LibcSymbols } from "../../ffi/libc.ts";
import { METADATA_WALK_QUIET_MIN_MS, WALK_MIN_READS } from "./background_windows.ts";
import { directReaderBody } from "./direct_read_body.ts";
import {
  activityRecorderBody,
  type SharedActivityArg,
  SharedReadActivity,
} from "./read_activity_cell.ts";
import { walkClockBody } from "./walk_clock_body.ts";

/** As a worker gets them: rebuilt from their source text, so they must not reach outside. */
function rebuilt<F>(fn: F): F {
  return new Function(`return (${String(fn)});`)() as F;
}
const recorderFromText = rebuilt(activityRecorderBody);
const clockFromText = rebuilt(walkClockBody);
const readerFromText = rebuilt(directReaderBody);

const NONE = { walkMs: -Infinity, dataMs: -Infinity, walkQuietMs: 200 };

Deno.test("SharedReadActivity: a reader's walk and data reads reach the main thread's activity", () => {
  const shared = new SharedReadActivity();
  const recorder = recorderFromText(shared.arg(), clockFromText);
  assert.deepEqual(shared.merge(NONE), NONE, "nothing recorded yet");
  for (let i = 1; i < WALK_MIN_READS; i++) recorder.pinned();
  assert.equal(shared.merge(NONE).walkMs, -Infinity, "fewer reads than a walk's");
  const before = performance.now();
  recorder.pinned();
  const walk = shared.merge(NONE);
  assert.ok(walk.walkMs >= before - 1 && walk.walkMs <= performance.now() + 1, `${walk.walkMs}`);
  assert.equal(walk.walkQuietMs, METADATA_WALK_QUIET_MIN_MS);
  assert.equal(walk.dataMs, -Infinity);
  // The main thread's own later walk wins, with its quiet; data reads: the later of both.
  const later = { walkMs: performance.now() + 50, dataMs: 5, walkQuietMs: 90 };
  assert.deepEqual(shared.merge(later), later);
  recorder.data();
  assert.ok(shared.merge(later).dataMs >= before);
});

Deno.test("directReaderBody: tells its recorder of reads from pinned pages and from chunks", () => {
  const dir = Deno.makeTempDirSync({ prefix: "activity-" });
  const fds: number[] = [];
  const file = (name: string, bytes: Uint8Array) => {
    Deno.writeFileSync(`${dir}/${name}`, bytes);
    const fd = openFile(`${dir}/${name}`, O_RDWR);
    fds.push(fd);
    return fd;
  };
  try {
    const PAGE = 4096, CHUNK = 16384;
    const data = new Uint8Array(2 * CHUNK).map((_, i) => i & 0xff);
    const calls: string[] = [];
    const read = readerFromText(libc(), errno, {
      mapFd: file("map", Uint8Array.of(1, 0)), // chunk 0 present, chunk 1 not
      dataFd: file("data", data),
      chunkBytes: CHUNK,
      sizeBytes: data.length,
      presentBytes: [1],
      pins: {
        fd: file("pins", data),
        mapFd: file("pin-map", new Uint8Array(8).fill(1, 5, 6)), // page 5 pinned
        pageBytes: PAGE,
      },
    }, { pinned: () => calls.push("pinned"), data: () => calls.push("data") });
    const dest = new Uint8Array(PAGE);
    assert.ok(read(5 * PAGE, dest));
    assert.deepEqual(dest, data.subarray(5 * PAGE, 6 * PAGE));
    assert.ok(read(PAGE, dest));
    assert.ok(!read(6 * PAGE, dest), "neither pinned nor present");
    assert.deepEqual(calls, ["pinned", "data"]);
  } finally {
    fds.forEach(closeFd);
    Deno.removeSync(dir, { recursive: true });
  }
});

/** Worker body: records a walk and a data read into the cell it is sent, then says so. */
function recordingBody(
  _libc: LibcSymbols,
  _errno: () => number,
  _arg: null,
  helpers: { recorder: typeof activityRecorderBody; clock: typeof walkClockBody },
): void {
  const scope = self as unknown as {
    onmessage: ((event: MessageEvent<{ arg: SharedActivityArg; reads: number }>) => void) | null;
    postMessage(message: unknown): void;
  };
  scope.onmessage = (event) => {
    const recorder = helpers.recorder(event.data.arg, helpers.clock);
    for (let i = 0; i < event.data.reads; i++) recorder.pinned();
    recorder.data();
    scope.postMessage("recorded");
  };
}

Deno.test("SharedReadActivity: written by another thread, on the main thread's clock", async () => {
  const worker = startLibcWorker("activity-test", recordingBody, null, {
    recorder: activityRecorderBody,
    clock: walkClockBody,
  });
  try {
    const shared = new SharedReadActivity();
    const done = new Promise((resolve) => worker.onmessage = resolve);
    const before = performance.now();
    worker.postMessage({ arg: shared.arg(), reads: WALK_MIN_READS });
    await done;
    const after = performance.now();
    const seen = shared.merge(NONE);
    assert.ok(
      seen.walkMs >= before - 1 && seen.walkMs <= after + 1,
      `${before} ${seen.walkMs} ${after}`,
    );
    assert.ok(seen.dataMs >= seen.walkMs && seen.dataMs <= after + 1);
  } finally {
    worker.terminate();
  }
});
