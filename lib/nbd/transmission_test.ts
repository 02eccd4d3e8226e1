/**
 * The transmission phase over a real unix socket, driven by a raw test client: the bytes on
 * the wire are what the kernel would send.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { serveTransmission, type TransmissionEnd } from "./transmission.ts";
import type { TransmissionOptions } from "./transmission.ts";
import {
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_EIO,
  NBD_EPERM,
} from "./protocol.ts";
import { CachedSource } from "../source/cached.ts";
import { InflightBudget } from "./budget.ts";
import type { Source } from "../source/source.ts";
import { encodeRequest, RawNbdClient } from "../../tests/_support/nbd_client.ts";
import { HeldSource, MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";

const MiB = 1024 * 1024;

interface Harness {
  client: RawNbdClient;
  served: Promise<TransmissionEnd>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** One server connection over a unix socket in a temp dir; everything is removed on dispose. */
async function connect(
  source: Source,
  options: Partial<TransmissionOptions> = {},
): Promise<Harness> {
  const dir = await Deno.makeTempDir({ prefix: "nbd-tx-" });
  const path = `${dir}/s`;
  const listener = Deno.listen({ transport: "unix", path });
  const accepted = listener.accept();
  const client = await RawNbdClient.connectUnix(path);
  const conn = await accepted;
  listener.close();
  const served = serveTransmission(conn, source, { readOnly: true, ...options });
  return {
    client,
    served,
    async [Symbol.asyncDispose]() {
      client.close();
      await served;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("transmission: 64 pipelined READs all answered with the right bytes", async () => {
  const data = patternBytes(8 * MiB);
  const source = new MemorySource(data, { delayMs: (o) => (o / 4096) % 5 });
  await using h = await connect(new CachedSource(source, { cacheBytes: 16 * MiB }));
  const wanted = new Map<bigint, { offset: number; length: number }>();
  // All 64 requests go out in one write before any reply is read.
  const batch: Uint8Array[] = [];
  for (let i = 0; i < 64; i++) {
    const offset = ((i * 7919) % 2000) * 4096;
    const length = 4096 * (1 + (i % 32));
    const cookie = BigInt(1000 + i);
    batch.push(encodeRequest(NBD_CMD_READ, cookie, offset, length));
    wanted.set(cookie, { offset, length });
  }
  const all = new Uint8Array(batch.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of batch) all.set(b, (at += b.length) - b.length);
  await h.client.write(all);
  const got = await readRawReplies(h.client, wanted);
  assertEquals(got.size, 64);
  for (const [cookie, bytes] of got) {
    const { offset, length } = wanted.get(cookie)!;
    ok(bytes.length === length);
    assertEquals(bytes, data.subarray(offset, offset + length));
  }
});

/** Reads replies for raw-sent READs (the client's own bookkeeping was bypassed). */
async function readRawReplies(
  client: RawNbdClient,
  wanted: Map<bigint, { offset: number; length: number }>,
): Promise<Map<bigint, Uint8Array>> {
  const got = new Map<bigint, Uint8Array>();
  while (got.size < wanted.size) {
    const header = await client.readExactly(16);
    if (!header) throw new Error("server closed early");
    const v = new DataView(header.buffer);
    assertEquals(v.getUint32(0), 0x67446698);
    assertEquals(v.getUint32(4), 0);
    const cookie = v.getBigUint64(8);
    const r = wanted.get(cookie);
    if (!r) throw new Error(`unexpected cookie ${cookie}`);
    got.set(cookie, (await client.readExactly(r.length))!);
  }
  return got;
}

Deno.test("transmission: replies come back out of order (slow first request)", async () => {
  const data = patternBytes(64 * 1024);
  const source = new MemorySource(data, { delayMs: (offset) => (offset === 0 ? 300 : 0) });
  await using h = await connect(source);
  const slow = await h.client.request(NBD_CMD_READ, 0, 4096);
  const fast = await h.client.request(NBD_CMD_READ, 8192, 4096);
  const first = await h.client.reply();
  const second = await h.client.reply();
  assertEquals(first?.cookie, fast);
  assertEquals(second?.cookie, slow);
  assertEquals(first?.data, data.subarray(8192, 12288));
  assertEquals(second?.data, data.subarray(0, 4096));
  ok(source.maxInFlight >= 2, "both reads ran at once");
});

Deno.test("transmission: WRITE → EPERM with its payload consumed; TRIM, FLUSH, unknown, oversized", async () => {
  const data = patternBytes(1 * MiB);
  await using h = await connect(new MemorySource(data));
  const c = h.client;
  // A write whose payload looks like a request: it must be skipped, not parsed.
  const payload = encodeRequest(NBD_CMD_READ, 99n, 0, 16);
  const bigPayload = new Uint8Array(300 * 1024).fill(0x25);
  const w1 = await c.request(NBD_CMD_WRITE, 0, payload.length, { payload });
  const w2 = await c.request(NBD_CMD_WRITE, 4096, bigPayload.length, { payload: bigPayload });
  const trim = await c.request(NBD_CMD_TRIM, 0, 4096);
  const flush = await c.request(NBD_CMD_FLUSH, 0, 0);
  const unknown = await c.request(42, 0, 0);
  const huge = await c.request(NBD_CMD_READ, 0, 33 * MiB);
  const read = await c.request(NBD_CMD_READ, 100, 50);
  const replies = new Map<bigint, { error: number; data?: Uint8Array }>();
  for (let i = 0; i < 7; i++) {
    const r = await c.reply();
    ok(r, "connection stayed open");
    replies.set(r.cookie, r);
  }
  assertEquals(replies.get(w1)?.error, NBD_EPERM);
  assertEquals(replies.get(w2)?.error, NBD_EPERM);
  assertEquals(replies.get(trim)?.error, NBD_EPERM);
  assertEquals(replies.get(flush)?.error, 0);
  assertEquals(replies.get(unknown)?.error, NBD_EINVAL);
  assertEquals(replies.get(huge)?.error, NBD_EINVAL);
  assertEquals(replies.get(huge)?.data, undefined);
  assertEquals(replies.get(read)?.data, data.subarray(100, 150));
});

Deno.test("transmission: bad request magic closes the connection", async () => {
  await using h = await connect(new MemorySource(patternBytes(4096)));
  await h.client.request(NBD_CMD_READ, 0, 16);
  await h.client.request(NBD_CMD_READ, 0, 16, { magic: 0x12345678 });
  // The good one may or may not be answered first; then EOF.
  const first = await h.client.reply();
  if (first) assertEquals(first.error, 0);
  ok(await h.client.closedByServer());
  const end = await h.served;
  assertEquals(end.reason, "protocol");
  ok(end.detail?.includes("magic"));
});

Deno.test("transmission: reads past the end are zero-filled only past the end", async () => {
  const size = 10_000;
  const data = patternBytes(size);
  const source = new MemorySource(data);
  await using h = await connect(new CachedSource(source, { chunkBytes: 4096, cacheBytes: 16384 }));
  const c = h.client;
  await c.request(NBD_CMD_READ, 8192, 4096); // 1808 real bytes + 2288 zeros
  const straddle = await c.reply();
  assertEquals(straddle?.data?.subarray(0, size - 8192), data.subarray(8192));
  assertEquals(straddle?.data?.subarray(size - 8192), new Uint8Array(4096 - (size - 8192)));
  await c.request(NBD_CMD_READ, 1n << 40n, 512); // entirely past the end
  assertEquals((await c.reply())?.data, new Uint8Array(512));
  await c.request(NBD_CMD_READ, 0xffff_ffff_ffff_f000n, 4096); // beyond 2^53
  assertEquals((await c.reply())?.data, new Uint8Array(4096));
  assertEquals(source.outOfRange, [], "the source was never asked past its end");
});

Deno.test("transmission: a failing source gives EIO for that request only", async () => {
  const data = patternBytes(64 * 1024);
  const source = new MemorySource(data, { fail: (offset) => offset === 16384 });
  await using h = await connect(source);
  const c = h.client;
  const bad = await c.request(NBD_CMD_READ, 16384, 4096);
  const good = await c.request(NBD_CMD_READ, 0, 4096);
  const replies = [await c.reply(), await c.reply()];
  const byCookie = new Map(replies.map((r) => [r!.cookie, r!]));
  assertEquals(byCookie.get(bad)?.error, NBD_EIO);
  assertEquals(byCookie.get(bad)?.data, undefined);
  assertEquals(byCookie.get(good)?.data, data.subarray(0, 4096));
  // Still serving.
  await c.request(NBD_CMD_READ, 32768, 10);
  assertEquals((await c.reply())?.data, data.subarray(32768, 32778));
});

Deno.test("transmission: DISC answers requests already received, then closes", async () => {
  const data = patternBytes(8192);
  await using h = await connect(new MemorySource(data, { delayMs: () => 100 }));
  const read = await h.client.request(NBD_CMD_READ, 0, 100);
  await h.client.request(NBD_CMD_DISC, 0, 0);
  const reply = await h.client.reply();
  assertEquals(reply?.cookie, read);
  assertEquals(reply?.data, data.subarray(0, 100));
  ok(await h.client.closedByServer());
  assertEquals((await h.served).reason, "disconnect");
});

Deno.test("transmission: abrupt disconnect mid-request ends the session cleanly", async () => {
  await using h = await connect(new MemorySource(patternBytes(8192), { delayMs: () => 50 }));
  await h.client.request(NBD_CMD_READ, 0, 4096);
  await h.client.write(encodeRequest(NBD_CMD_READ, 7n, 0, 10).subarray(0, 13));
  h.client.close();
  const end = await h.served;
  ok(["protocol", "closed", "eof"].includes(end.reason), end.reason);
});

Deno.test("transmission: a WRITE payload cut short by EOF ends the session", async () => {
  await using h = await connect(new MemorySource(patternBytes(8192)));
  await h.client.write(encodeRequest(NBD_CMD_WRITE, 1n, 0, 1 * MiB));
  await h.client.write(new Uint8Array(1000));
  h.client.close();
  assertEquals((await h.served).reason, "protocol");
});

Deno.test("transmission: back-pressure bounds requests in flight", async () => {
  const data = patternBytes(1 * MiB);
  const source = new MemorySource(data, { delayMs: () => 20 });
  await using h = await connect(source, { maxInFlight: 4 });
  const cookies: bigint[] = [];
  for (let i = 0; i < 40; i++) cookies.push(await h.client.request(NBD_CMD_READ, i * 4096, 4096));
  for (let i = 0; i < 40; i++) ok((await h.client.reply())?.data?.length === 4096);
  ok(source.maxInFlight <= 4, `max in flight ${source.maxInFlight}`);
});

Deno.test("transmission: aborting the signal closes the connection", async () => {
  const controller = new AbortController();
  await using h = await connect(new MemorySource(patternBytes(8192), { delayMs: () => 5000 }), {
    signal: controller.signal,
  });
  await h.client.request(NBD_CMD_READ, 0, 10); // hangs in the source
  setTimeout(() => controller.abort(), 50);
  assertEquals((await h.served).reason, "aborted");
  ok(await h.client.closedByServer());
});

Deno.test("transmission: with exportBytes, a READ past the export's end gets EINVAL", async () => {
  const size = 10_000;
  const data = patternBytes(size);
  const source = new MemorySource(data);
  await using h = await connect(source, { exportBytes: size });
  const c = h.client;
  await c.request(NBD_CMD_READ, size - 100, 100); // up to the end: served
  assertEquals((await c.reply())?.data, data.subarray(size - 100));
  for (
    const [offset, length] of [
      [BigInt(size - 100), 4096], // straddles the end
      [BigInt(size), 1], // at the end
      [0xffff_ffff_ffff_f000n, 8192], // wraps past 2^64
    ] as const
  ) {
    await c.request(NBD_CMD_READ, offset, length);
    const reply = await c.reply();
    assertEquals(reply?.error, NBD_EINVAL, `${offset}+${length}`);
    assertEquals(reply?.data, undefined);
  }
  assertEquals(source.outOfRange, []);
});

Deno.test("transmission: a client gone with READs queued: they are dropped, not served", async () => {
  const data = patternBytes(8 * MiB);
  const source = new MemorySource(data, { delayMs: () => 30 });
  await using h = await connect(source, { maxInFlight: 8 });
  // 200 READs in one write, then the socket is closed without reading a reply.
  const batch = new Uint8Array(200 * 28);
  for (let i = 0; i < 200; i++) {
    batch.set(encodeRequest(NBD_CMD_READ, BigInt(i), (i % 64) * 65536, 65536), i * 28);
  }
  await h.client.write(batch);
  h.client.close();
  const end = await h.served;
  // The first replies fail to be written; what was still queued goes with the connection.
  ok(source.reads.length <= 32, `${source.reads.length} source reads for a client that left`);
  ok(["aborted", "eof", "closed"].includes(end.reason), end.reason);
});

Deno.test("transmission: a client that ends its side while a READ waits for budget", async (t) => {
  const data = patternBytes(4 * MiB);
  for (const disc of [true, false]) {
    await t.step(disc ? "after DISC: both READs answered" : "without DISC: dropped", async () => {
      const source = new MemorySource(data, { delayMs: () => 200 });
      // One MiB of budget: the second READ waits for the first to be answered.
      const budget = new InflightBudget(MiB, 1).account();
      await using h = await connect(source, { budget });
      const first = await h.client.request(NBD_CMD_READ, 0, MiB);
      const second = await h.client.request(NBD_CMD_READ, MiB, MiB);
      if (disc) await h.client.request(NBD_CMD_DISC, 0, 0);
      await h.client.conn.closeWrite();
      if (disc) {
        for (const [cookie, offset] of [[first, 0], [second, MiB]] as const) {
          const reply = await h.client.reply();
          assertEquals(reply?.cookie, cookie);
          assertEquals(reply?.data, data.subarray(offset, offset + MiB));
        }
        assertEquals((await h.served).reason, "disconnect");
      } else {
        const end = await h.served;
        assertEquals(end.reason, "aborted");
        ok(/the client is gone/.test(end.detail ?? ""), end.detail);
        ok(source.reads.every((r) => r.offset < MiB), "the waiting READ was served for nobody");
      }
      budget.close();
    });
  }
});

Deno.test("transmission: a READ waiting for budget costs the same however much its client trickles", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--v8-flags=--expose-gc",
      new URL("../../tests/_support/trickle_child.ts", import.meta.url).href,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  ok(out.success, new TextDecoder().decode(out.stderr));
  const { reads, heapGrowthBytes } = JSON.parse(new TextDecoder().decode(out.stdout));
  assertEquals(reads, 256 * 1024 - 28);
  // One reaction per read kept ~300 B each: 80 MB for these reads.
  ok(heapGrowthBytes < 16 * MiB, `heap grew ${(heapGrowthBytes / MiB).toFixed(1)} MiB`);
});

Deno.test("transmission: a READ whose client left stays in the budget until the source is done", async (t) => {
  const data = patternBytes(4 * MiB);
  // Per connection 1 MiB guaranteed (2 connections), 2 MiB shared.
  const budget = new InflightBudget(4 * MiB, 2);
  /** A READ of `length` bytes, then a request with a bad magic: the server ends the connection. */
  const readAndLeave = async (h: Harness, length: number) => {
    await h.client.request(NBD_CMD_READ, 0, length);
    await h.client.write(new Uint8Array(28));
  };
  await t.step("with room in the pool: moved there, the connection ends at once", async () => {
    const source = new HeldSource(data, true);
    const account = budget.account();
    await using h = await connect(source, { budget: account });
    await readAndLeave(h, MiB);
    assertEquals((await h.served).reason, "protocol");
    account.close();
    // Released with the connection before, while the source went on filling the buffer: each
    // client in turn could leave one more such buffer behind.
    assertEquals(budget.sharedUsedBytes, MiB, "its MiB still counted");
    source.release();
    await new Promise((resolve) => setTimeout(resolve, 10));
    assertEquals(budget.sharedUsedBytes, 0, "released once the source is done");
  });
  await t.step(
    "with the pool full: the connection keeps them until the source is done",
    async () => {
      const source = new HeldSource(data, true);
      const holder = budget.account();
      ok(holder.tryAcquire(3 * MiB), "a client holds its MiB and the whole pool");
      const account = budget.account();
      await using h = await connect(source, { budget: account });
      await readAndLeave(h, MiB);
      let ended = false;
      h.served.then(() => ended = true);
      await new Promise((resolve) => setTimeout(resolve, 50));
      ok(!ended, "the connection waits for its READ's source");
      assertEquals(account.heldBytes, MiB);
      source.release();
      assertEquals((await h.served).reason, "protocol");
      account.close();
      holder.close();
      assertEquals(budget.sharedUsedBytes, 0);
    },
  );
});
