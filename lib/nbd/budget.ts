/**
 * One byte budget for READ replies shared by every connection of a server, so that a flood of
 * clients asking for big reads they never collect costs bounded memory. A connection that cannot
 * get bytes stops reading requests (back-pressure) instead of allocating.
 *
 * Fairness: half the budget is split into equal guaranteed shares, one per connection slot, that
 * only their connection can use; the other half is a shared pool handed out first come, first
 * served. Clients that hold the whole pool hostage (by never reading their replies) therefore
 * cannot starve a newcomer: it still gets its guaranteed share, enough for nbdinfo and for
 * steady (if slower) progress of a real client, until the idle timeout closes the hostage
 * holders and frees the pool.
 */

interface Waiter {
  account: BudgetAccount;
  bytes: number;
  grant(): void;
}

export class InflightBudget {
  /** Bytes each connection can always get, whatever the others hold. */
  readonly guaranteedBytes: number;
  /** Bytes shared by all connections beyond their guaranteed share. */
  readonly sharedBytes: number;
  /** The most of the shared pool one connection may hold at once. */
  readonly sharedPerConnectionBytes: number;
  #sharedUsed = 0;
  #waiters: Waiter[] = [];

  /**
   * `totalBytes` bounds all reply buffers of up to `maxConnections` connections together.
   * `sharedPerConnectionBytes` caps one connection's take of the pool (default: all of it): a
   * client collecting its replies slowly then holds a part of the pool, not all of it, and
   * others' larger READs go on beside it.
   */
  constructor(
    readonly totalBytes: number,
    readonly maxConnections: number,
    sharedPerConnectionBytes?: number,
  ) {
    if (!(totalBytes > 0) || !Number.isSafeInteger(totalBytes)) {
      throw new RangeError(`budget must be a positive number of bytes, got ${totalBytes}`);
    }
    if (!(maxConnections >= 1) || !Number.isSafeInteger(maxConnections)) {
      throw new RangeError(`connection count must be at least 1, got ${maxConnections}`);
    }
    this.guaranteedBytes = Math.floor(totalBytes / 2 / maxConnections);
    this.sharedBytes = totalBytes - this.guaranteedBytes * maxConnections;
    this.sharedPerConnectionBytes = Math.min(
      this.sharedBytes,
      sharedPerConnectionBytes ?? this.sharedBytes,
    );
  }

  /** The largest single request that can ever be granted. */
  get maxGrantBytes(): number {
    return this.guaranteedBytes + this.sharedPerConnectionBytes;
  }

  /** Bytes of the shared pool in use now. */
  get sharedUsedBytes(): number {
    return this.#sharedUsed;
  }

  /** One connection's account. Close it when the connection ends. */
  account(): BudgetAccount {
    return new BudgetAccount(this);
  }

  /** Shared-pool bytes that holding `bytes` more would take for `account`. */
  #extra(account: BudgetAccount, bytes: number): number {
    const g = this.guaranteedBytes;
    return Math.max(0, account.heldBytes + bytes - g) - Math.max(0, account.heldBytes - g);
  }

  /** @internal BudgetAccount.tryAcquire */
  tryAcquire(account: BudgetAccount, bytes: number): boolean {
    if (bytes > this.maxGrantBytes) return false;
    const extra = this.#extra(account, bytes);
    // Strictly first come, first served for the pool: a big request is not overtaken forever.
    if (
      extra === 0 ||
      (!this.#poolWaiters() && extra <= this.sharedBytes - this.#sharedUsed &&
        !this.#overCap(account, extra))
    ) {
      this.#take(account, bytes, extra);
      return true;
    }
    return false;
  }

  /** @internal BudgetAccount.acquire */
  acquire(account: BudgetAccount, bytes: number, signal?: AbortSignal): Promise<void> {
    if (bytes > this.maxGrantBytes) {
      return Promise.reject(
        new RangeError(`${bytes} bytes exceed the in-flight budget's largest grant`),
      );
    }
    if (this.tryAcquire(account, bytes)) return Promise.resolve();
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        account,
        bytes,
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      const onAbort = () => {
        const at = this.#waiters.indexOf(waiter);
        if (at >= 0) this.#waiters.splice(at, 1);
        this.#grantWaiters(); // the head may have been what blocked the others
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  /**
   * @internal BudgetAccount.keepUntil: moves `bytes` of `account` into the pool until `settled`
   * settles, when the pool has room for them; false (nothing moved) when it has not.
   */
  keepUntil(account: BudgetAccount, bytes: number, settled: Promise<unknown>): boolean {
    const moved = Math.min(bytes, account.heldBytes);
    const g = this.guaranteedBytes;
    // What of them the account held in the pool already is freed there by the move.
    const inPool = Math.max(0, account.heldBytes - g) - Math.max(0, account.heldBytes - moved - g);
    if (this.#sharedUsed + moved - inPool > this.sharedBytes) return false;
    this.#sharedUsed += moved;
    this.release(account, moved);
    settled.then(() => {}, () => {}).then(() => {
      this.#sharedUsed -= moved;
      this.#grantWaiters();
    });
    return true;
  }

  /** @internal BudgetAccount.release */
  release(account: BudgetAccount, bytes: number): void {
    const g = this.guaranteedBytes;
    const before = Math.max(0, account.heldBytes - g);
    account.heldBytes -= bytes;
    this.#sharedUsed -= before - Math.max(0, account.heldBytes - g);
    this.#grantWaiters();
  }

  #take(account: BudgetAccount, bytes: number, extra: number): void {
    account.heldBytes += bytes;
    this.#sharedUsed += extra;
  }

  #grantWaiters(): void {
    // Whoever is back within its guaranteed share goes first, wherever it is queued.
    for (let i = 0; i < this.#waiters.length;) {
      const waiter = this.#waiters[i];
      if (this.#extra(waiter.account, waiter.bytes) > 0) {
        i++;
        continue;
      }
      this.#waiters.splice(i, 1);
      this.#take(waiter.account, waiter.bytes, 0);
      waiter.grant();
    }
    // Then the pool, first come first served, past those that wait for their own replies to
    // bring them under their cap (they take nothing from the others meanwhile).
    for (let i = 0; i < this.#waiters.length;) {
      const waiter = this.#waiters[i];
      const extra = this.#extra(waiter.account, waiter.bytes);
      if (this.#overCap(waiter.account, extra)) {
        i++;
        continue;
      }
      if (extra > this.sharedBytes - this.#sharedUsed) return;
      this.#waiters.splice(i, 1);
      this.#take(waiter.account, waiter.bytes, extra);
      waiter.grant();
    }
  }

  /** True when a connection waits for bytes of the shared pool (others hold them). */
  poolWanted(): boolean {
    return this.#poolWaiters();
  }

  /** True when someone waits for the pool (not only for its own replies, over its cap). */
  #poolWaiters(): boolean {
    return this.#waiters.some((w) => !this.#overCap(w.account, this.#extra(w.account, w.bytes)));
  }

  /** True when taking `extra` more of the pool would put `account` over its cap. */
  #overCap(account: BudgetAccount, extra: number): boolean {
    return Math.max(0, account.heldBytes - this.guaranteedBytes) + extra >
      this.sharedPerConnectionBytes;
  }
}

/** What one connection holds of an InflightBudget. */
export class BudgetAccount {
  /** Bytes granted and not yet released. */
  heldBytes = 0;

  constructor(readonly budget: InflightBudget) {}

  /**
   * Resolves once `bytes` are granted (at once when they fit the guaranteed share); rejects with
   * the signal's reason if it aborts first, or with a RangeError if they can never be granted.
   */
  acquire(bytes: number, signal?: AbortSignal): Promise<void> {
    return this.budget.acquire(this, bytes, signal);
  }

  /** Takes `bytes` at once if they can be granted without waiting; false otherwise. */
  tryAcquire(bytes: number): boolean {
    return this.budget.tryAcquire(this, bytes);
  }

  release(bytes: number): void {
    this.budget.release(this, Math.min(bytes, this.heldBytes));
  }

  /** What this connection holds of the shared pool (beyond its guaranteed share). */
  get poolBytes(): number {
    return Math.max(0, this.heldBytes - this.budget.guaranteedBytes);
  }

  /**
   * A READ whose connection ends while the source still writes its buffer (a fetch shared with
   * other reads goes on): its bytes stay counted, in the shared pool, until `settled`. False
   * when the pool has no room: the caller then holds them (and its connection) until then.
   * Released with the account, clients that each left with a READ in flight while the registry
   * was slow had the server hold ~1.7 GB of buffers under a 64 MiB budget.
   */
  keepUntil(bytes: number, settled: Promise<unknown>): boolean {
    return this.budget.keepUntil(this, bytes, settled);
  }

  /** Returns whatever is still held (the connection is gone). */
  close(): void {
    if (this.heldBytes > 0) this.release(this.heldBytes);
  }
}
