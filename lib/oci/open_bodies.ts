/**
 * Blob bodies a host sent whole (it ignored Range and answered 200 from byte 0), kept open past
 * the read that asked for part of them, at the blob offset they reached. Without this every
 * read of such a host is a GET from byte 0 up to its window: `--fetch-all`, a pass of 8 MiB runs,
 * made the host send about (size / 8 MiB + 1) / 2 times the layer (4.2× a 40 MiB layer measured,
 * tests/range_ignored_mount_test.ts; 1.1× now). A later read at or past a kept body's offset goes
 * on from there instead (the bytes between are read and dropped: a new GET would send them too),
 * so a pass through the blob in order takes one GET. A kept body is not read while it waits (the
 * host's send stops on the full socket); it is cancelled after KEEP_MS unused, when more than
 * MAX_KEPT wait for one blob, and when its client closes.
 */
import { after, sleep, type Timer } from "../timers.ts";
import { abortable } from "../source/abortable.ts";

/** One kept body: its reader and where in the blob its next byte belongs. */
export interface OpenBody {
  readonly reader: ReadableStreamBYOBReader | ReadableStreamDefaultReader<Uint8Array>;
  /** Blob offset of the next byte the reader gives. */
  position: number;
  /** The blob's size: a body at its end is not kept. */
  readonly size: number;
  /** Aborts the GET (the signal its fetch was given): a read that uses it links its own. */
  readonly abort: AbortController;
}

/** How long a body waits for the next read: short of the idle send timeouts of servers. */
const KEEP_MS = 20_000;
/** Bodies kept per blob: a pass in order and a reader elsewhere. */
const MAX_KEPT = 2;
/** How long a read that would skip bytes of a kept body lets a read of those come first. */
const GRACE_MS = 10;

interface Kept {
  body: OpenBody;
  timer: Timer;
}

/** Cancels `body`'s GET: nothing more comes over its connection. */
export function dropBody(body: OpenBody): void {
  body.abort.abort();
  body.reader.cancel().catch(() => {});
}

/**
 * Makes `controller` follow `signal` (aborted with it) until the returned function is called:
 * a body's fetch signal follows the stall watch of the read using the body, and only that one.
 * `reader`, when given, is cancelled too: Deno's fetch ends a pending body read at its signal's
 * abort only while the Response lives, and a kept body holds just its reader (a kept body that
 * stopped sending held its read, and every later read of the blob, for good).
 */
export function follow(
  controller: AbortController,
  signal: AbortSignal,
  reader?: OpenBody["reader"],
): () => void {
  const onAbort = () => {
    controller.abort(signal.reason);
    reader?.cancel(signal.reason).catch(() => {});
  };
  if (signal.aborted) {
    onAbort();
    return () => {};
  }
  signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

/** A body being read by a read that ends at blob offset `until`; `back` settles when it ends. */
interface Lent {
  until: number;
  back: Promise<void>;
  settle(): void;
}

/**
 * The bodies one client keeps, per blob digest, and those being read now: a read at or past
 * where one being read will stop waits for it (a GET of its own would download from byte 0;
 * concurrent reads of a file, the kernel's readahead, each made one and the host sent the layer
 * 2.5 times for one `cat` of every file). The wait is bounded by that read's own stall watch.
 */
export class OpenBodies {
  readonly #kept = new Map<string, Kept[]>();
  readonly #lent = new Map<OpenBody, Lent>();
  readonly #lentOf = new Map<string, Set<OpenBody>>();
  #closed = false;
  /** Per blob, the offsets of reads letting a read of earlier bytes take a body first. */
  readonly #asking = new Map<string, Set<number[]>>();

  /**
   * A body of `digest` lent to the caller for a read from `offset` to `until` (give it back with
   * end()): the one that is or will be furthest along but not past `offset`, kept now or after
   * the read of it under way; undefined when there is none (the caller makes a GET).
   */
  async take(
    digest: string,
    offset: number,
    until: number,
    signal?: AbortSignal,
  ): Promise<OpenBody | undefined> {
    const asking = this.#asking.get(digest) ?? new Set<number[]>();
    this.#asking.set(digest, asking);
    const me = [offset];
    let graced = false;
    try {
      for (;;) {
        const kept = this.#bestKept(digest, offset);
        let lent: Lent | undefined;
        for (const body of this.#lentOf.get(digest) ?? []) {
          const l = this.#lent.get(body)!;
          if (l.until <= offset && (!lent || l.until > lent.until)) lent = l;
        }
        if (kept && (!lent || kept.body.position >= lent.until)) {
          const at = kept.body.position;
          // Bytes before `offset` would be dropped: a read of them that came at the same time
          // (the kernel's readahead sends a file's reads together, not always in order) takes
          // the body first, and this one waits for that read.
          const before = () => [...asking].some((t) => t !== me && t[0] >= at && t[0] < offset);
          if (at < offset && (!graced || before())) {
            graced = true;
            asking.add(me);
            await sleep(GRACE_MS, signal);
            continue;
          }
          this.#unkeep(digest, kept);
          this.lend(digest, kept.body, until);
          return kept.body;
        }
        if (!lent) return undefined;
        await abortable(lent.back, signal);
      }
    } finally {
      asking.delete(me);
      if (!asking.size) this.#asking.delete(digest);
    }
  }

  /** `body` (a 200 just received) is being read up to `until`: reads past it wait for it. */
  lend(digest: string, body: OpenBody, until: number): void {
    let settle!: () => void;
    const back = new Promise<void>((resolve) => settle = resolve);
    this.#lent.set(body, { until, back, settle });
    const set = this.#lentOf.get(digest) ?? new Set();
    this.#lentOf.set(digest, set);
    set.add(body);
  }

  /** A lent body's read is over: kept for the next read of `digest` when `keep`, else dropped. */
  end(digest: string, body: OpenBody, keep: boolean): void {
    const lent = this.#lent.get(body);
    this.#lent.delete(body);
    const set = this.#lentOf.get(digest);
    set?.delete(body);
    if (set && !set.size) this.#lentOf.delete(digest);
    if (keep && !this.#closed) this.#keep(digest, body);
    else dropBody(body);
    lent?.settle();
  }

  #bestKept(digest: string, offset: number): Kept | undefined {
    let best: Kept | undefined;
    for (const kept of this.#kept.get(digest) ?? []) {
      const at = kept.body.position;
      if (at <= offset && (!best || at > best.body.position)) best = kept;
    }
    return best;
  }

  #unkeep(digest: string, kept: Kept): void {
    kept.timer.cancel();
    const list = this.#kept.get(digest)!;
    list.splice(list.indexOf(kept), 1);
    if (!list.length) this.#kept.delete(digest);
  }

  /** Keeps `body` for the next read of `digest` (the oldest one kept goes beyond MAX_KEPT). */
  #keep(digest: string, body: OpenBody): void {
    const list = this.#kept.get(digest) ?? [];
    this.#kept.set(digest, list);
    const kept: Kept = {
      body,
      timer: after(KEEP_MS, () => this.#drop(digest, kept)),
    };
    list.push(kept);
    if (list.length > MAX_KEPT) this.#drop(digest, list[0]);
  }

  /** Cancels every kept body (those being read end with their reads). */
  close(): void {
    this.#closed = true;
    for (const [digest, list] of [...this.#kept]) {
      for (const kept of [...list]) this.#drop(digest, kept);
    }
  }

  #drop(digest: string, kept: Kept): void {
    if (this.#kept.get(digest)?.includes(kept)) this.#unkeep(digest, kept);
    dropBody(kept.body);
  }
}
