/**
 * A bound on the registry blob GETs one process has in flight (RegistryBlob's reads, whatever
 * asks for them: a mount's demand fetches, its disk cache fills, prefetches, `serve`). Each GET
 * holds a connection and, for reads not streamed to disk, a buffer of its range: 32 readers
 * missing a disk cache smaller than what they read made 33-322 GETs at once (as many pooled
 * connections stayed open after), the server's RSS 240-485 MB. Waiters are served in order.
 */

/** GETs in flight at most; enough for a registry 20 ms away to keep readers busy. */
export const MAX_BLOB_REQUESTS = 16;

export class RequestSlots {
  #free: number;
  readonly #waiting: { wake(): void }[] = [];

  constructor(slots: number) {
    this.#free = slots;
  }

  /** Runs `request` once a slot is free (ended by `signal` while it waits: its reason thrown). */
  async run<T>(request: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    await this.#take(signal);
    try {
      return await request();
    } finally {
      this.#give();
    }
  }

  /** Requests waiting for a slot now. */
  get waiting(): number {
    return this.#waiting.length;
  }

  #take(signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const waiter = {
        wake: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      const onAbort = () => {
        const at = this.#waiting.indexOf(waiter);
        if (at >= 0) this.#waiting.splice(at, 1);
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }

  #give(): void {
    const next = this.#waiting.shift();
    if (next) next.wake(); // the slot passes on: #free stays as it is
    else this.#free++;
  }
}

/** The process's slots for registry blob GETs. */
export const blobRequestSlots = new RequestSlots(MAX_BLOB_REQUESTS);
