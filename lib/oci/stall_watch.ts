/**
 * A registry transfer that stops making progress: a connection whose peer vanished without a
 * reset (a dropped NAT mapping, a crashed load balancer) or a registry that hangs sends nothing
 * and never fails, so a read waited forever with nothing in the log. A watch aborts its
 * attempt once no byte came for the stall time, or fewer than MIN_WINDOW_BYTES in a stall
 * time's worth of waiting (a peer dripping a byte every few seconds kept a 600-byte manifest
 * coming for half an hour, a blob range for days); the caller asks again on a new connection
 * and says so.
 */
import { OciError } from "../errors.ts";
import { every, type Timer } from "../timers.ts";

let stallMsOverride: number | undefined;

/**
 * Sets the stall time of this process's watches, over EROFS_OCI_REGISTRY_STALL_S (undefined: the
 * environment's again). For in-process tests: setting the variable instead reached the CLIs other
 * tests running at the same time started (a pull behind a 5 s delay gave up after 2 s).
 */
export function setStallMs(ms: number | undefined): void {
  stallMsOverride = ms;
}

/** EROFS_OCI_REGISTRY_STALL_S (default 30): seconds without a byte before an attempt is given up. */
export function stallMs(): number {
  if (stallMsOverride !== undefined) return stallMsOverride;
  const seconds = Number(Deno.env.get("EROFS_OCI_REGISTRY_STALL_S") || 30);
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 30_000;
}

/** What a registry must send per stall time of waiting (about 1 KiB/s with the default). */
export const MIN_WINDOW_BYTES = 32 * 1024;

/** What a reply under a renewable deadline (endBy's renewMs) must bring to earn a fresh one. */
const RENEW_BYTES = 1 << 20;

const active = new Set<StallWatch>();
let timer: Timer | undefined;

export class StallWatch {
  /** Aborts with a Deno.errors.TimedOut (a network error: retried) once stalled. */
  readonly signal: AbortSignal;
  readonly #controller = new AbortController();
  readonly #stallMs: number;
  #lastMs = performance.now();
  #paused = false;
  /** Waiting in the current window: before the last pause, and since `#since` unless paused. */
  #waitedMs = 0;
  #since = performance.now();
  #windowBytes = 0;
  /** Body bytes announced (Content-Length, the range asked for), and those received so far. */
  #expected: number | undefined;
  #received = 0;
  stalled = false;
  /** Why it stalled, as a phrase after the registry's name ("stopped sending for 30 s"). */
  why = "";
  /** Date.now() after which the attempt is given up however it goes (endBy). */
  #endByMs = Infinity;
  /** endBy's renewal: each RENEW_BYTES received move the end this far ahead of now. */
  #renewMs: number | undefined;
  #bytesSinceRenewal = 0;
  /** True when the attempt was given up at its deadline (endBy), not for silence. */
  overDeadline = false;
  readonly #startedMs = Date.now();

  constructor(outer?: AbortSignal, limitMs = stallMs()) {
    this.#stallMs = limitMs;
    this.signal = outer
      ? AbortSignal.any([outer, this.#controller.signal])
      : this.#controller.signal;
    active.add(this);
    // Runs only while an attempt is watched, and a watched attempt keeps the process busy
    // anyway (Deno's own timers, lib/timers.ts, cannot be unref'd).
    timer ??= every(Math.max(50, Math.min(5_000, limitMs / 4)), checkAll);
  }

  /** `bytes` (or headers) arrived, or a send begins: the stall time counts from now. */
  progressed(bytes = 0): void {
    const now = performance.now();
    if (this.#paused) {
      this.#paused = false;
      this.#since = now;
    }
    this.#lastMs = now;
    this.#windowBytes += bytes;
    this.#received += bytes;
    if (this.#renewMs !== undefined) {
      this.#bytesSinceRenewal += bytes;
      if (this.#bytesSinceRenewal >= RENEW_BYTES) {
        this.#bytesSinceRenewal = 0;
        this.#endByMs = Math.max(this.#endByMs, Date.now() + this.#renewMs);
      }
    }
  }

  /**
   * The headers came and a body of `expectedBytes` (if known) follows: its windows start now
   * (waiting for the headers is the "no byte" rule's), and a window needs only what is left.
   */
  startBody(expectedBytes?: number): void {
    this.progressed();
    this.#newWindow(performance.now());
    this.#expected = expectedBytes;
    this.#received = 0;
  }

  /**
   * Gives the attempt up at `deadlineMs` (Date.now() time: its operation's deadline) even while
   * bytes come: a registry sending a few KiB/s passes the stall rule, and a read of a MiB then
   * took minutes with no word. The caller's retry policy decides what follows (a transfer that
   * brought a MiB gets a fresh deadline and resumes; a trickle is given up). `renewMs`: for a
   * reply read in one attempt (a manifest, a chunk table), each MiB that arrives moves the end to
   * `renewMs` from then, as a download's attempt that brought a MiB earns a fresh deadline.
   */
  endBy(deadlineMs: number, renewMs?: number): void {
    this.#endByMs = deadlineMs;
    this.#renewMs = renewMs;
    this.#bytesSinceRenewal = 0;
  }

  /** Seconds since the watch began (what a deadline's message reports). */
  get elapsedS(): number {
    return Math.round((Date.now() - this.#startedMs) / 1000);
  }

  /** Body bytes received since startBody (or since the watch began). */
  get receivedBytes(): number {
    return this.#received;
  }

  /** A wait on purpose (the registry's pace, backoff): not a stall, until progressed(). */
  pause(): void {
    if (!this.#paused) this.#waitedMs += performance.now() - this.#since;
    this.#paused = true;
  }

  /** The attempt ended (either way): no longer watched. */
  done(): void {
    active.delete(this);
    if (active.size === 0 && timer !== undefined) {
      timer.cancel();
      timer = undefined;
    }
  }

  /** @internal */
  check(nowMs: number): void {
    if (this.#paused) return;
    if (Date.now() >= this.#endByMs) {
      this.overDeadline = true;
      this.#stall(`sent only ${this.#received} bytes in ${this.elapsedS} s`);
      return;
    }
    const seconds = this.#stallMs / 1000;
    if (nowMs - this.#lastMs >= this.#stallMs) {
      this.#stall(`stopped sending for ${seconds} s`);
      return;
    }
    if (this.#waitedMs + nowMs - this.#since < this.#stallMs) return;
    const left = this.#expected === undefined
      ? Infinity
      : this.#expected - (this.#received - this.#windowBytes);
    if (this.#windowBytes < Math.min(MIN_WINDOW_BYTES, left)) {
      this.#stall(`sent only ${this.#windowBytes} bytes in ${seconds} s`);
      return;
    }
    this.#newWindow(nowMs);
  }

  #newWindow(nowMs: number): void {
    this.#waitedMs = 0;
    this.#since = nowMs;
    this.#windowBytes = 0;
  }

  #stall(why: string): void {
    this.stalled = true;
    this.why = why;
    this.done();
    this.#controller.abort(new Deno.errors.TimedOut(`the registry ${why}`));
  }
}

function checkAll(): void {
  const nowMs = performance.now();
  for (const watch of [...active]) watch.check(nowMs);
}

/**
 * A registry body that stopped for the stall time: one line for the user, and a network error
 * for the code that can ask again (a download resumes with a Range request).
 */
export class StalledError extends OciError {}

/**
 * `response` whose body is watched by `watch` while it is read: the time counts only while the
 * reader waits on the registry (not while it works on what it got), and a body that stops for
 * the stall time fails (StalledError) instead of waiting forever. Ends the watch when the body
 * ends, fails or is cancelled, or here for a reply without one. A body still coming at the
 * watch's deadline (endBy) fails with one line that is no network error (nothing to retry:
 * the operation's time is up): `who` sent `what` too slowly (a registry dripping a manifest
 * padded to MiBs passed the stall rule and kept `inspect` waiting for most of an hour).
 */
export function watchedBody(
  response: Response,
  watch: StallWatch,
  host: string,
  slow: { who: string; what: string } = { who: host, what: "its reply" },
): Response {
  if (response.status < 200 || response.status > 599) {
    // Outside what a Response can be made with (fetch passes 600-999 on): no registry answer.
    watch.done();
    response.body?.cancel().catch(() => {});
    throw new OciError(`${host} answered with HTTP status ${response.status}`);
  }
  if (!response.body) {
    watch.done();
    return response;
  }
  const length = Number(response.headers.get("content-length") ?? NaN);
  watch.startBody(Number.isSafeInteger(length) && length >= 0 ? length : undefined);
  const reader = response.body.getReader();
  // fetch is meant to end a body being read when its signal aborts, but Deno 2.9's does not
  // once a garbage collection has run: a stalled or interrupted download then waited for the
  // peer to hang up. The read is cancelled here, and the body fails with why.
  const onAbort = () => reader.cancel(watch.signal.reason).catch(() => {});
  watch.signal.addEventListener("abort", onAbort, { once: true });
  const finish = () => {
    watch.signal.removeEventListener("abort", onAbort);
    watch.done();
  };
  const failure = (cause: unknown) =>
    !watch.stalled ? cause : watch.overDeadline
      ? new OciError(
        `${slow.who} sent ${slow.what} too slowly: gave up after ${watch.elapsedS} s ` +
          `(${watch.receivedBytes} bytes in)`,
        undefined,
        { cause },
      )
      : new StalledError(`${host} ${watch.why}`, undefined, { cause });
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      watch.progressed();
      try {
        const { value, done } = await reader.read();
        watch.progressed(value?.byteLength ?? 0);
        watch.pause();
        if (watch.signal.aborted) throw watch.signal.reason;
        if (done) {
          finish();
          controller.close();
        } else controller.enqueue(value);
      } catch (error) {
        finish();
        controller.error(failure(error));
      }
    },
    cancel(reason) {
      finish();
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  const watched = new Response(body, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
  // Callers read where a redirect ended (blob locations), which a new Response forgets.
  Object.defineProperty(watched, "url", { value: response.url });
  return watched;
}
