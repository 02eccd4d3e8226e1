/**
 * A reader that gets to traced bytes before the prefetch does (python started while the
 * prefetch still runs): through the server's wiring (ServerTraceHooks over the real cache
 * stack, pinning target) its read jumps the queue, waits for that piece alone and is served
 * from the pinned pages; nothing is fetched twice and no cache chunk is fetched around it.
 */
import assert from "node:assert/strict";
import { CachedSource } from "../source/cached.ts";
import { PrefetchedSource } from "../source/prefetched.ts";
import type { Source } from "../source/source.ts";
import type { LayerSpec } from "../state/mount_spec.ts";
import { encodeTrace } from "./format.ts";
import { pinningPrefetchTarget } from "./pinned_target.ts";
import { PREFETCH_FILE_ENV, ServerTraceHooks } from "./server_hooks.ts";

const MIB = 1 << 20;
const DIGEST = `sha256:${"3".repeat(64)}`;
const SIZE = 64 * MIB;
/** Twenty traced ranges 3 MiB apart (not coalesced): one prefetch read each, 8 at a time. */
const RANGES: [number, number, number][] = Array.from(
  { length: 20 },
  (_, i) => [0, i * 3 * MIB + 8192, 16384],
);

const byteAt = (offset: number) => (offset * 13 + (offset >> 12)) & 0xff;

/** A source whose reads wait until released one by one (the registry, slowly). */
function gatedSource() {
  const reads: number[] = [];
  const gates: (() => void)[] = [];
  const source: Source = {
    size: SIZE,
    async read(offset: number, length: number) {
      reads.push(offset);
      await new Promise<void>((resolve) => gates.push(resolve));
      const out = new Uint8Array(length);
      for (let i = 0; i < length; i++) out[i] = byteAt(offset + i);
      return out;
    },
  };
  return { source, reads, gates };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

Deno.test("a read of a traced range the prefetch has not reached jumps the queue, fetched once", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "erofs-oci-claim-" });
  const traceFile = `${dir}/trace.json`;
  Deno.writeFileSync(
    traceFile,
    encodeTrace({ version: 1, layers: [{ digest: DIGEST, size: SIZE }], ranges: RANGES }),
  );
  const abort = new AbortController();
  Deno.env.set(PREFETCH_FILE_ENV, traceFile);
  try {
    const hooks = new ServerTraceHooks([{ digest: DIGEST, sizeBytes: SIZE } as LayerSpec]);
    const gated = gatedSource();
    const served = new PrefetchedSource(new CachedSource(gated.source, { cacheBytes: 8 * MIB }));
    const exported = hooks.wrap(0, served, pinningPrefetchTarget(gated.source, served, served));
    hooks.startPrefetch(abort.signal, [undefined]);
    await tick();
    assert.equal(gated.reads.length, 8, "PREFETCH_PARALLEL pieces in flight, the rest queued");
    // The application reads inside the last traced range, twelve pieces down the queue.
    const last = RANGES[19][1];
    const appRead = exported.read(last + 4096, 4096);
    await tick();
    assert.deepEqual(gated.reads.slice(8), [last], "its piece is read now, as the ninth");
    gated.gates[8]();
    const got = await appRead;
    for (let i = 0; i < got.length; i += 511) assert.equal(got[i], byteAt(last + 4096 + i));
    // An untraced range is read as usual (through the cache: a whole chunk).
    const untraced = exported.read(62 * MIB, 4096);
    await tick();
    assert.deepEqual(gated.reads.slice(9), [62 * MIB]);
    gated.gates[9]();
    await untraced;
    // Let the prefetch finish.
    for (let i = 0; i < 1000 && hooks.progress(0)?.state === "running"; i++) {
      gated.gates.splice(0).forEach((release) => release());
      await tick();
    }
    const progress = hooks.progress(0)!;
    assert.equal(progress.state, "done");
    assert.equal(progress.bytesReadFirst, 16384);
    // Every traced piece fetched once: the application's read added no fetch of its own.
    const traced = gated.reads.filter((offset) => offset !== 62 * MIB);
    assert.equal(traced.length, RANGES.length, JSON.stringify(gated.reads));
    assert.deepEqual(traced.slice().sort((a, b) => a - b), RANGES.map(([, offset]) => offset));
  } finally {
    abort.abort();
    Deno.env.delete(PREFETCH_FILE_ENV);
    Deno.removeSync(dir, { recursive: true });
  }
});
