/**
 * Per-host state shared by every client in the process: rate limiting (429, `Retry-After`,
 * RFC 9110 §10.2.3 and RFC 6585 §4) and mirrors that recently failed. A mount server holds one
 * client per layer; if each backed off on its own, N layers would keep hammering a registry that
 * asked all of them to wait, so the wait is kept per host and every request to it honours it.
 */
import { OciError } from "../errors.ts";
import type { RetryPolicy } from "./retry.ts";

/** Waits without Retry-After grow from this, doubling per consecutive 429, up to the cap. */
const BASE_RATE_LIMIT_DELAY_MS = 500;
const MAX_RATE_LIMIT_DELAY_MS = 30_000;
/** A Retry-After past this is treated as this (a day-long ban is an outage, not pacing). */
const MAX_RETRY_AFTER_MS = 10 * 60_000;
/** How long a failed mirror is skipped before it is tried again. */
export const MIRROR_DOWN_MS = 10_000;

interface HostState {
  blockedUntilMs: number;
  strikes: number;
  downUntilMs: number;
}

const states = new Map<string, HostState>();

function stateOf(host: string): HostState {
  let state = states.get(host);
  if (!state) {
    state = { blockedUntilMs: 0, strikes: 0, downUntilMs: 0 };
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
 * server's Retry-After, or an exponentially growing pause without one. Returns the pause in ms.
 */
export function noteRateLimited(host: string, retryAfterMs: number | undefined): number {
  const state = stateOf(host);
  state.strikes++;
  const delayMs = retryAfterMs ??
    Math.min(MAX_RATE_LIMIT_DELAY_MS, BASE_RATE_LIMIT_DELAY_MS * 2 ** (state.strikes - 1)) *
      (0.75 + Math.random() * 0.5);
  state.blockedUntilMs = Math.max(state.blockedUntilMs, Date.now() + delayMs);
  return delayMs;
}

/** A reply other than a rate limit: the next 429 starts the backoff from the beginning. */
export function noteAnswered(host: string): void {
  const state = states.get(host);
  if (state) state.strikes = 0;
}

/**
 * Waits until `host` accepts requests again. When its pause ends after the policy's deadline,
 * throws at once (an OciError with status 429) rather than sleeping into a certain failure.
 */
export async function waitForHost(
  host: string,
  policy: RetryPolicy,
  signal?: AbortSignal,
): Promise<void> {
  const state = states.get(host);
  if (!state) return;
  const waitMs = state.blockedUntilMs - Date.now();
  if (waitMs <= 0) return;
  if (Date.now() + waitMs > policy.deadlineAtMs) {
    const error = new OciError(
      `registry ${host} is rate limiting requests (429): retry after ${Math.ceil(waitMs / 1000)} s`,
      "a registry mirror (hosts.toml) spreads the load; or try again later",
    );
    error.status = 429;
    throw error;
  }
  signal?.throwIfAborted();
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, waitMs);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Marks a mirror as failing: it is skipped for MIRROR_DOWN_MS. */
export function markHostDown(host: string): void {
  stateOf(host).downUntilMs = Date.now() + MIRROR_DOWN_MS;
}

export function isHostDown(host: string): boolean {
  return (states.get(host)?.downUntilMs ?? 0) > Date.now();
}
