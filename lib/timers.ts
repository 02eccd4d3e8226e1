/**
 * Timers on Deno's own clock. In Deno 2.9 the global setTimeout and setInterval are Node's
 * (ext:deno_node/timers.ts): the first call in a process loads some 25 modules of Deno's Node
 * layer, which a mount's CLI and its server otherwise never load before the mount is ready
 * (lib/node_builtins.ts keeps node:crypto off that path for the same reason). Measured on the
 * host, a first setTimeout 6-80 ms against 0.2 ms for AbortSignal.timeout; several hundred ms
 * in the QEMU TCG guest of the benchmark, in each process. AbortSignal.timeout runs on Deno's
 * web timers, already loaded, so a timer here is one such signal.
 *
 * Deno refs a timeout signal's timer while it has an abort listener (the process stays alive
 * for it, as for setTimeout) and unrefs it when the last one goes: cancel() removes the
 * listener, and the signal fires later into nothing. A cancelled timer so holds a few hundred
 * bytes until it is due: use these for timeouts and pauses, not for thousands a second. The
 * per-connection deadlines of `serve`'s and the metrics' listeners stay on setTimeout for that
 * reason (a flood of connections would hold one signal per connection for its whole deadline;
 * clearTimeout frees it at once), as do diagnostics that must not keep a process alive
 * (fill_trace.ts).
 */

/** A pending callback; cancel() is idempotent and safe after it ran. */
export interface Timer {
  cancel(): void;
}

/**
 * The longest delay a timer keeps: Deno fires AbortSignal.timeout (and setTimeout) at once for
 * more than 2^31 - 1 ms (24.8 days), and refuses more than 2^53.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A delay AbortSignal.timeout accepts (a non-negative integer, at most MAX_TIMER_MS). */
function delayOf(ms: number): number {
  return Number.isFinite(ms) && ms > 0 ? Math.min(Math.ceil(ms), MAX_TIMER_MS) : 0;
}

/** Calls `fn` once, `ms` from now, unless cancelled first. */
export function after(ms: number, fn: () => void): Timer {
  const signal = AbortSignal.timeout(delayOf(ms));
  const fire = () => fn();
  signal.addEventListener("abort", fire, { once: true });
  return { cancel: () => signal.removeEventListener("abort", fire) };
}

/** Calls `fn` every `ms` (the next period counted from the end of a call) until cancelled. */
export function every(ms: number, fn: () => void): Timer {
  let current: Timer | undefined;
  let cancelled = false;
  const arm = () => {
    current = after(ms, () => {
      if (cancelled) return;
      arm();
      fn();
    });
  };
  arm();
  return {
    cancel() {
      cancelled = true;
      current?.cancel();
    },
  };
}

/** Resolves after `ms`; rejects with `signal`'s reason if it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => {
      timer.cancel();
      reject(signal!.reason);
    };
    const timer = after(ms, () => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    });
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Waits until `promise` settles or `ms` have passed, whichever comes first (a rejection of
 * `promise` within them rejects); the timer is cancelled either way.
 */
export async function waitAtMost(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: Timer | undefined;
  try {
    await Promise.race([promise, new Promise((resolve) => timer = after(ms, () => resolve(0)))]);
  } finally {
    timer?.cancel();
  }
}
