/**
 * The server-wide READ byte budget (lib/nbd/budget.ts) and how the transmission phase uses it:
 * guaranteed shares, a first-come shared pool, aborts, and a reply allocation that fails.
 */
import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import { InflightBudget } from "./budget.ts";
import { serveTransmission, type TransmissionOptions } from "./transmission.ts";
import { NBD_CMD_READ, NBD_ENOMEM } from "./protocol.ts";
import { RawNbdClient } from "../../tests/_support/nbd_client.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";

const KiB = 1024;

/** Settles pending grants (they resolve in microtasks). */
const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

function granted(p: Promise<void>): { done: boolean } {
  const state = { done: false };
  p.then(() => state.done = true, () => {});
  return state;
}

Deno.test("budget: half is split into per-connection guarantees, half is shared", () => {
  const budget = new InflightBudget(64 * 1024 * KiB, 64);
  assertEquals(budget.guaranteedBytes, 512 * KiB);
  assertEquals(budget.sharedBytes, 32 * 1024 * KiB);
  assertEquals(budget.maxGrantBytes, 32 * 1024 * KiB + 512 * KiB);
});

Deno.test("budget: a hog holding the pool cannot starve others of their guaranteed share", async () => {
  const budget = new InflightBudget(1024 * KiB, 4); // 128 KiB each guaranteed, 512 KiB shared
  const hog = budget.account();
  await hog.acquire(640 * KiB); // its share plus the whole pool
  assertEquals(budget.sharedUsedBytes, 512 * KiB);
  const hogMore = granted(hog.acquire(64 * KiB));
  const other = budget.account();
  await other.acquire(128 * KiB); // within its share: at once, although the pool is empty
  const otherMore = granted(other.acquire(4 * KiB)); // needs the pool: queued after the hog
  await tick();
  assertEquals([hogMore.done, otherMore.done], [false, false]);
  // Back within its share, the queued request goes ahead of the hog's (which needs the pool).
  other.release(64 * KiB);
  await tick();
  assertEquals([hogMore.done, otherMore.done], [false, true]);
  hog.close();
  await tick();
  ok(hogMore.done, "the hog's request is granted once the pool is free");
  assertEquals(hog.heldBytes, 64 * KiB);
});

Deno.test("budget: the pool is first come, first served; aborts leave the queue", async () => {
  const budget = new InflightBudget(1024 * KiB, 4);
  const a = budget.account(), b = budget.account(), c = budget.account();
  await a.acquire(640 * KiB);
  const abort = new AbortController();
  const bBig = b.acquire(500 * KiB, abort.signal);
  const cSmall = granted(c.acquire(200 * KiB)); // would fit once a releases, but b is first
  a.release(300 * KiB);
  await tick();
  assertEquals(cSmall.done, false);
  abort.abort(new Error("connection gone"));
  await rejects(bBig, /connection gone/);
  await tick();
  ok(cSmall.done, "the next in line is granted when the head leaves");
  await rejects(a.acquire(budget.maxGrantBytes + 1), RangeError);
  a.close();
  c.close();
  assertEquals(budget.sharedUsedBytes, 0);
});

Deno.test("transmission: a READ whose reply buffer cannot be allocated gets ENOMEM; the next works", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nbd-budget-" });
  const listener = Deno.listen({ transport: "unix", path: `${dir}/s` });
  try {
    const accepted = listener.accept();
    const client = await RawNbdClient.connectUnix(`${dir}/s`);
    const conn = await accepted;
    const data = patternBytes(64 * KiB);
    let failNext = true;
    const options: TransmissionOptions = {
      readOnly: true,
      allocateReply(bytes) {
        if (failNext) {
          failNext = false;
          throw new RangeError("Array buffer allocation failed");
        }
        return new Uint8Array(bytes);
      },
    };
    const served = serveTransmission(conn, new MemorySource(data), options);
    try {
      await client.request(NBD_CMD_READ, 0, 4096);
      assertEquals((await client.reply())?.error, NBD_ENOMEM);
      await client.request(NBD_CMD_READ, 4096, 4096);
      assertEquals((await client.reply())?.data, data.subarray(4096, 8192));
    } finally {
      client.close();
      await served;
    }
  } finally {
    listener.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("budget: with a per-connection cap, a slow client holds its part of the pool, not all", async () => {
  // 64 slots of 8 KiB guaranteed, 512 KiB shared, at most 128 KiB of it to one connection.
  const budget = new InflightBudget(1024 * KiB, 64, 128 * KiB);
  assertEquals(budget.maxGrantBytes, 8 * KiB + 128 * KiB);
  const slow = budget.account();
  await slow.acquire(136 * KiB); // its share and its whole cap
  const more = granted(slow.acquire(64 * KiB)); // over its cap: waits for its own replies
  const other = budget.account();
  const big = granted(other.acquire(136 * KiB)); // not held up behind the capped waiter
  await tick();
  assertEquals(more.done, false);
  assertEquals(big.done, true);
  assertEquals(budget.sharedUsedBytes, 256 * KiB);
  slow.release(136 * KiB);
  await tick();
  assertEquals(more.done, true);
  await rejects(other.acquire(137 * KiB), /exceed the in-flight budget's largest grant/);
});
