/**
 * Per-host state shared by every client in the process: rate limiting (429, `Retry-After`,
 * RFC 9110 §10.2.3 and RFC 6585 §4) and mirrors that recently failed. A mount server holds one
 * client per layer; if each backed off on its own, N layers would keep hammering a registry that
 * asked all of them to wait, so the wait is kept per host and every request to it honours it.
 */
import { OciError } from "../errors.ts";
import { warn } from "../log.ts";
import { backoffDelayMs, type RetryPolicy } from "./retry.ts";
import { after } from "../timers.ts";

/** Waits without Retry-After grow from this, doubling per consecutive 429, up to the cap. */
const BASE_RATE_LIMIT_DELAY_MS = 500;
const MAX_RATE_LIMIT_DELAY_MS = 30_000;
/** A Retry-After past this is treated as this (a day-long ban is an outage, not pacing). */
const MAX_RETRY_AFTER_MS = 10 * 60_000;
/**
 * However long the pause a reply asked for, one request goes through after this long to see
 * whether it still holds (a registry whose 429 said "a day" answered normally seconds later, and
 * a mount failed every read for 10 minutes): if it is answered, the pause ends.
 */
const PROBE_AFTER_MS = MAX_RATE_LIMIT_DELAY_MS;
/**
 * A pause longer than this is told on stderr (or the server's log): a command that waits 30 s
 * in silence looks hung. Shorter ones are ordinary pacing and stay in --debug.
 */
const NOTICE_PAUSE_MS = 5_000;
/** At most one such notice per host in this long (every layer's client meets the same pause). */
const NOTICE_EVERY_MS = 60_000;
/** How long a failed mirror is skipped before it is tried again. */
export const MIRROR_DOWN_MS = 10_000;

interface HostState {
  blockedUntilMs: number;
  /** When the last 429 came in: only a request sent after it ends the pause by its answer. */
  limitedAtMs: number;
  /** When the next request may go through the pause to test it. */
  probeAtMs: number;
  /** A probe was sent and its answer is awaited (waiters wait for it instead of giving up). */
  probing: boolean;
  /** Which probe is out, so that only its own failure ends the wait for it. */
  probeSerial: number;
  /** Resolved (and replaced) when the pause ends early: waiters look again. */
  changed: PromiseWithResolvers<void>;
  strikes: number;
  downUntilMs: number;
  noticedAtMs: number;
}

const states = new Map<string, HostState>();

function stateOf(host: string): HostState {
  let state = states.get(host);
  if (!state) {
    state = {
      blockedUntilMs: 0,
      limitedAtMs: 0,
      probeAtMs: 0,
      probing: false,
      probeSerial: 0,
      changed: Promise.withResolvers(),
      strikes: 0,
      downUntilMs: 0,
      noticedAtMs: -Infinity,
    };
    states.set(host, state);
  }
  return state;
}

/** `Retry-After` as milliseconds from `nowMs`: delay-seconds or an HTTP-date; else undefined. */
export function parseRetryAfter(header: string | null, nowMs = Date.now()): number | undefined {
  if (header === null) return undefined;
  const text = header.trim();
  if (/^[0-9]{1,10}$/.test(text)) return Math.min(Number(text) * 1000, MAX_RETRY_AFTER_MS);
  if (!/^[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT$/.test(text)) {
    return undefined;
  }
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.min(Math.max(0, at - nowMs), MAX_RETRY_AFTER_MS);
}

/**
 * Records a 429 (or a 503 with Retry-After) from `host`: no request to it starts before the
 * server's Retry-After, or an exponentially growing pause without one, except one probe after
 * PROBE_AFTER_MS. A Retry-After of 0 (or a date past) still waits the usual retry backoff: it
 * made 8 retries in 17 ms. Returns the pause in ms.
 */
export function noteRateLimited(host: string, retryAfterMs: number | undefined): number {
  const state = stateOf(host);
  state.strikes++;
  const delayMs = retryAfterMs === undefined
    ? Math.min(MAX_RATE_LIMIT_DELAY_MS, BASE_RATE_LIMIT_DELAY_MS * 2 ** (state.strikes - 1)) *
      (0.75 + Math.random() * 0.5)
    : Math.max(retryAfterMs, backoffDelayMs(state.strikes));
  const nowMs = Date.now();
  state.limitedAtMs = nowMs;
  state.blockedUntilMs = Math.max(state.blockedUntilMs, nowMs + delayMs);
  state.probeAtMs = nowMs + Math.min(delayMs, PROBE_AFTER_MS);
  state.probing = false;
  return delayMs;
}

/**
 * A reply other than a rate limit to a request sent at `sentAtMs`: the next 429 starts the
 * backoff from the beginning, and a request sent after the last 429 (the probe) ends its pause.
 */
export function noteAnswered(host: string, sentAtMs = 0): void {
  const state = states.get(host);
  if (!state) return;
  state.strikes = 0;
  if (state.blockedUntilMs === 0 || sentAtMs < state.limitedAtMs) return;
  state.blockedUntilMs = 0;
  state.probing = false;
  wakeWaiters(state);
}

/**
 * The probe `probe` (from waitForHost) ended without an HTTP answer (network error, stall,
 * abort): nothing will end the pause early, so waiters whose deadline falls before the next
 * chance fail now instead of sleeping to their deadline (a mount's every read took 60 s).
 */
export function noteProbeFailed(host: string, probe: number): void {
  const state = states.get(host);
  if (!state?.probing || state.probeSerial !== probe) return;
  state.probing = false;
  wakeWaiters(state);
}

function wakeWaiters(state: HostState): void {
  state.changed.resolve();
  state.changed = Promise.withResolvers();
}

/**
 * Waits until `host` accepts requests again, or until this request may go as the pause's probe.
 * When neither happens before the policy's deadline (and no probe is out whose answer could end
 * the pause), throws at once (an OciError with status 429) rather than sleeping into a certain
 * failure. Returns the probe's number when this request is the probe (its sender reports a
 * failure without an HTTP answer to noteProbeFailed), else undefined.
 */
export async function waitForHost(
  host: string,
  policy: RetryPolicy,
  signal?: AbortSignal,
): Promise<number | undefined> {
  const state = states.get(host);
  if (!state) return undefined;
  for (;;) {
    const nowMs = Date.now();
    if (state.blockedUntilMs <= nowMs) return undefined;
    if (state.probeAtMs <= nowMs) {
      // This request tests the pause; the next may only after another PROBE_AFTER_MS.
      state.probeAtMs = nowMs + PROBE_AFTER_MS;
      state.probing = true;
      return ++state.probeSerial;
    }
    const wakeAtMs = Math.min(state.blockedUntilMs, state.probeAtMs);
    if (wakeAtMs > policy.deadlineAtMs && (!state.probing || nowMs >= policy.deadlineAtMs)) {
      throw rateLimitedError(host, state.blockedUntilMs - nowMs);
    }
    signal?.throwIfAborted();
    noticeWait(host, state, Math.min(wakeAtMs, policy.deadlineAtMs) - nowMs, nowMs);
    await sleepUntil(Math.min(wakeAtMs, policy.deadlineAtMs), state.changed.promise, signal);
  }
}

function noticeWait(host: string, state: HostState, waitMs: number, nowMs: number): void {
  if (waitMs <= NOTICE_PAUSE_MS || nowMs - state.noticedAtMs < NOTICE_EVERY_MS) return;
  state.noticedAtMs = nowMs;
  const askedMs = state.blockedUntilMs - nowMs;
  const asked = askedMs > waitMs + 1_000 ? ` (it asked for ${Math.ceil(askedMs / 1000)} s)` : "";
  warn(
    `registry ${host} is rate limiting requests (429): waiting ${Math.ceil(waitMs / 1000)} s ` +
      `before trying again${asked}`,
  );
}

function rateLimitedError(host: string, waitMs: number): OciError {
  const error = new OciError(
    `registry ${host} is rate limiting requests (429): retry after ${Math.ceil(waitMs / 1000)} s`,
    "a registry mirror (hosts.toml) spreads the load; or try again later",
  );
  error.status = 429;
  return error;
}

/** Sleeps until `atMs` (Date.now() time) or until `early` settles; rejects when `signal` aborts. */
function sleepUntil(atMs: number, early: Promise<void>, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const finish = () => {
      timer.cancel();
      signal?.removeEventListener("abort", onAbort);
      resolve();
    };
    const timer = after(atMs - Date.now(), finish);
    const onAbort = () => {
      timer.cancel();
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    early.then(finish);
  });
}

/** Marks a mirror as failing: it is skipped for MIRROR_DOWN_MS. */
export function markHostDown(host: string): void {
  stateOf(host).downUntilMs = Date.now() + MIRROR_DOWN_MS;
}

export function isHostDown(host: string): boolean {
  return (states.get(host)?.downUntilMs ?? 0) > Date.now();
}
