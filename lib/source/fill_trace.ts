/**
 * A diagnostic of the cold read path (issue 12's python start): with EROFS_OCI_FILL_TRACE set
 * to a file path, one line per event — `fill <pid> <ms since origin> <event> <fields…>` — of FUSE
 * READs answered by the main thread, disk-cache fills, their GETs' first and last body bytes,
 * hashes and writes, appended to that file, with `lag` lines where the event loop ran late
 * (> 6 ms for a 2 ms timer; with the V8 heap in use before and after, MB) and per process a
 * first `origin <performance.timeOrigin>` event to put its times on the epoch axis (the mount
 * command and its server share the file). Off, an event costs one comparison. Summed up per run
 * by scripts/bench/fill_trace_report.ts.
 */
const path = Deno.env.get("EROFS_OCI_FILL_TRACE");
const enabled = path !== undefined && path.startsWith("/");
const lines: string[] = [];
let flushPending = false;
let originWritten = false;

function flush(): void {
  flushPending = false;
  if (!lines.length) return;
  try {
    Deno.writeTextFileSync(path!, lines.join(""), { append: true });
  } catch { /* a diagnostic only */ }
  lines.length = 0;
}

/** Whether fill events are recorded. */
export const fillTraceEnabled = enabled;

/** Records `event` now with its fields (numbers or short words). */
export function fillTrace(event: string, ...fields: (number | string)[]): void {
  if (!enabled) return;
  if (!lines.length && !originWritten) {
    originWritten = true;
    lines.push(`fill ${Deno.pid} 0 origin ${performance.timeOrigin.toFixed(1)}\n`);
  }
  lines.push(`fill ${Deno.pid} ${performance.now().toFixed(2)} ${event} ${fields.join(" ")}\n`);
  // Written off the measured path, in batches.
  if (!flushPending) {
    flushPending = true;
    Deno.unrefTimer(setTimeout(flush, 200) as unknown as number);
  }
}

let fillIds = 0;
/** A number naming one fill in the events. */
export function nextFillId(): number {
  return ++fillIds;
}

if (enabled) {
  // Event-loop stalls: a 2 ms timer that came late says the main thread was busy; the V8 heap
  // in use before and after (MB) tells a garbage collection in it from other work. The heap is
  // read every HEAP_SAMPLE_MS and after each stall, not on every tick (Deno.memoryUsage() also
  // reads the RSS from the kernel, and a traced run should be perturbed as little as it can).
  const HEAP_SAMPLE_MS = 50;
  const heapInUseMb = () => Deno.memoryUsage().heapUsed / 2 ** 20;
  let last = performance.now();
  let heapMb = heapInUseMb();
  let heapSampledMs = last;
  const probe = setInterval(() => {
    const now = performance.now();
    if (now - last > 6) {
      const heapNowMb = heapInUseMb();
      fillTrace("lag", (now - last).toFixed(1), heapMb.toFixed(1), heapNowMb.toFixed(1));
      heapMb = heapNowMb;
      heapSampledMs = now;
    } else if (now - heapSampledMs >= HEAP_SAMPLE_MS) {
      heapMb = heapInUseMb();
      heapSampledMs = now;
    }
    last = now;
  }, 2);
  Deno.unrefTimer(probe as unknown as number);
}
