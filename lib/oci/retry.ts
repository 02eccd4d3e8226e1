import { OciError } from "../errors.ts";
import { StalledError } from "./stall_watch.ts";
import { sleep } from "../timers.ts";

/** Retry policy for one logical registry operation. */
export interface RetryPolicy {
  /** Absolute time (Date.now() ms) after which no new attempt starts. */
  deadlineAtMs: number;
  /** Attempts without progress before giving up even within the deadline. */
  maxAttempts: number;
  /**
   * When set, the attempts made so far by every request under this policy: an operation that
   * retries on its own around requests (a document whose body broke off) spends one budget with
   * their retries instead of maxAttempts of them per try of its own.
   */
  attempts?: { made: number };
}

const BASE_DELAY_MS = 100;
const MAX_DELAY_MS = 2_000;

/** Statuses worth another try: server-side trouble and rate limiting (RFC 9110 §15.6, 6585). */
export function isTransientStatus(status: number): boolean {
  return status === 408 || status === 429 || status === 500 || status === 502 ||
    status === 503 || status === 504;
}

/**
 * Network-level failures (connection refused/reset, TLS, truncated body): Deno's fetch reports
 * them as TypeError, body stream errors as Deno.errors.* or TypeError.
 */
export function isNetworkError(error: unknown): boolean {
  if (error instanceof FailedAtRedirectTarget) return isNetworkError(error.cause);
  if (error instanceof DOMException) return false; // AbortError/TimeoutError: the caller's choice
  if (error instanceof StalledError) return true;
  return error instanceof TypeError || error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted || error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.UnexpectedEof || error instanceof Deno.errors.Interrupted ||
    error instanceof Deno.errors.ConnectionRefused || error instanceof Deno.errors.TimedOut ||
    (error instanceof Error && error.name === "Http");
}

/**
 * A request that failed at the host a registry redirected it to (object storage), not at the
 * registry: its messages name that host ("cannot reach registry" named the registry, which had
 * answered). `cause` is what failed there.
 */
export class FailedAtRedirectTarget extends Error {
  constructor(
    readonly host: string,
    readonly registry: string,
    cause: unknown,
    /** The URL that failed (for the proxy that carried it, if any). */
    readonly url: string,
  ) {
    super(`request to ${host} failed`, { cause });
  }
}

/** The pause before retry `attempt` (1-based): exponential, with jitter. */
export function backoffDelayMs(attempt: number): number {
  return Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** (attempt - 1)) *
    (0.75 + Math.random() * 0.5);
}

/**
 * Sleeps before attempt `attempt` (1-based retry count) with exponential backoff and jitter, or
 * `atLeastMs` when longer (a server's Retry-After); returns false when the policy says to stop
 * instead.
 */
export async function backoff(
  attempt: number,
  policy: RetryPolicy,
  signal?: AbortSignal,
  atLeastMs = 0,
): Promise<boolean> {
  if (attempt >= policy.maxAttempts) return false;
  const delayMs = Math.max(atLeastMs, backoffDelayMs(attempt));
  if (Date.now() + delayMs >= policy.deadlineAtMs) return false;
  signal?.throwIfAborted();
  await sleep(delayMs, signal);
  return true;
}

/**
 * The policy for the next attempt of a long transfer after one that brought `progressedBytes`:
 * a transfer can outlive one operation's deadline, so an attempt that brought a MiB earns a
 * fresh one — a MiB, so that a registry resetting every connection after a few bytes is still
 * given up (`pull` of a layer that broke off after 60 s failed without a resume GET).
 */
export function policyAfterAttempt(
  policy: RetryPolicy,
  progressedBytes: number,
  fresh: () => RetryPolicy,
): RetryPolicy {
  return progressedBytes >= FRESH_DEADLINE_PROGRESS_BYTES ? fresh() : policy;
}

const FRESH_DEADLINE_PROGRESS_BYTES = 1 << 20;

/** One line for an error that ended a retried operation. */
export function describeFailure(error: unknown): string {
  if (error instanceof FailedAtRedirectTarget) return describeFailure(error.cause);
  if (error instanceof OciError) return error.message;
  // fetch's own message is only "fetch failed"; what failed (refused, DNS, TLS) is its cause.
  const cause = error instanceof TypeError && error.message === "fetch failed" &&
      error.cause instanceof Error
    ? error.cause
    : error;
  const message = cause instanceof Error ? cause.message : String(cause);
  return message.split("\n")[0]
    .replace(/^error sending request (?:from \S+ )?for (?:url \([^)]*\)|\S+ \([^)]*\)): /, "")
    .replace(/^client error \((?:Connect|SendRequest)\): /, "")
    .slice(0, 200);
}
