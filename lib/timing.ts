/**
 * Start-up timeline marks for `mount` and its server, off unless EROFS_OCI_TIMING is set:
 * a path starting with "/" gets one line per mark appended (the CLI and the server it spawns
 * share it: O_APPEND lines do not interleave), anything else sends them to stderr (the
 * server's stderr is its log). A line is `timing <pid> <label> <epoch ms> +<ms since this
 * runtime's time origin>`: epoch times put two processes on one axis, the offset says how far
 * into its own start-up each process was. Off, a mark costs one comparison.
 */
import { every } from "./timers.ts";
const setting = Deno.env.get("EROFS_OCI_TIMING");
const enabled = setting !== undefined && setting !== "" && setting !== "0";
const toFile = enabled && setting!.startsWith("/");
const encoder = new TextEncoder();

/** Whether marks are recorded (EROFS_OCI_TIMING set). */
export function timingEnabled(): boolean {
  return enabled;
}

/** Records that this process reached `label` now. */
export function mark(label: string): void {
  if (!enabled) return;
  const sinceOrigin = performance.now();
  const epochMs = performance.timeOrigin + sinceOrigin;
  const line = `timing ${Deno.pid} ${label} ${epochMs.toFixed(1)} +${sinceOrigin.toFixed(1)}\n`;
  try {
    if (toFile) Deno.writeFileSync(setting!, encoder.encode(line), { append: true });
    else Deno.stderr.writeSync(encoder.encode(line));
  } catch { /* a diagnostic only */ }
}

/** The one watcher of this process (markHeldEventLoop): whose it is now, and until when. */
let heldWatch: { who: string; endMs: number } | undefined;

/**
 * While marks are recorded: a mark whenever this process's event loop was held longer than
 * `thresholdMs` (a timer that came that much late), for the next `forMs` — where a start-up's
 * wait for an I/O completion goes when the thread that would take it runs something else. One
 * watcher per process: a later call (the server's, in a process that began as the CLI) renames
 * it and moves its end.
 */
export function markHeldEventLoop(who: string, forMs = 5000, thresholdMs = 20): void {
  if (!enabled) return;
  const endMs = performance.now() + forMs;
  if (heldWatch) {
    heldWatch.who = who;
    heldWatch.endMs = endMs;
    return;
  }
  const watch = heldWatch = { who, endMs };
  const tickMs = 5;
  let lastMs = performance.now();
  // On lib/timers.ts, not setInterval: the marks must not add Node's timers to the start-up
  // they time. It holds the process for `forMs` at most (Deno's own timers cannot be unref'd).
  const timer = every(tickMs, () => {
    const nowMs = performance.now();
    const heldMs = nowMs - lastMs - tickMs;
    if (heldMs > thresholdMs) mark(`${watch.who}: event loop held ${heldMs.toFixed(0)} ms`);
    lastMs = nowMs;
    if (nowMs > watch.endMs) timer.cancel();
  });
}
