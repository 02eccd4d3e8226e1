/**
 * Kernel NBD sockets served with direct reads (direct_conns.ts, reader_worker.ts), driven by a
 * raw client on the other end of a unix socket: READs of cached chunks and pinned pages are
 * answered by the reader thread, everything else by serveTransmission on this thread, and the
 * replies of both arrive whole, with the right bytes, whatever the mix. Real disk cache.
 */
import assert from "node:assert/strict";
import { connectUnix } from "../../ffi/io.ts";
import { DiskCache } from "../source/disk_cache.ts";
import { CachedSource } from "../source/cached.ts";
import { DiskCachedSource } from "../source/disk_cached.ts";
import { PIN_PAGE_BYTES, PrefetchedSource } from "../source/prefetched.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";
import { encodeRequest, RawNbdClient } from "../../tests/_support/nbd_client.ts";
import { DirectNbdConns } from "./direct_conns.ts";
import { serveTransmission, type TransmissionEnd } from "./transmission.ts";
import {
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EPERM,
  NBD_SIMPLE_REPLY_MAGIC,
} from "./protocol.ts";

const CHUNK = 16 << 10;

interface Harness {
  image: Uint8Array;
  inner: MemorySource;
  disk: DiskCachedSource;
  served: PrefetchedSource;
  noted: number[];
  conns: DirectNbdConns;
  clients: RawNbdClient[];
  ends: Promise<TransmissionEnd>[];
  [Symbol.asyncDispose](): Promise<void>;
}

async function harness(sockets = 1): Promise<Harness> {
  const dir = await Deno.makeTempDir({ prefix: "nbd-direct-" });
  try {
    return await connected(dir, sockets);
  } catch (error) {
    await Deno.remove(dir, { recursive: true });
    throw error;
  }
}

/** The harness in `dir` (removed by its dispose, or by harness() when this throws). */
async function connected(dir: string, sockets: number): Promise<Harness> {
  const image = patternBytes(64 * CHUNK, 7);
  const inner = new MemorySource(image);
  const cache = DiskCache.open({
    checkCompleteBlobs: false,
    dir: `${dir}/cache`,
    chunkBytes: CHUNK,
  })!;
  const disk = cache.wrap(inner, { digest: "sha256:" + "cd".repeat(32), origin: "test" });
  assert(disk instanceof DiskCachedSource, "the disk cache did not take the blob");
  const served = new PrefetchedSource(new CachedSource(disk, { cacheBytes: 8 << 20 }));
  const files = served.openDirectReads();
  assert(files, "the source offers no direct reads");
  const listener = Deno.listen({ transport: "unix", path: `${dir}/s` });
  const fds: number[] = [];
  const clients: RawNbdClient[] = [];
  for (let i = 0; i < sockets; i++) {
    const accepted = listener.accept();
    fds.push(connectUnix(`${dir}/s`));
    clients.push(new RawNbdClient(await accepted));
  }
  listener.close();
  const noted: number[] = [];
  const conns = new DirectNbdConns(fds, files, (ranges) => {
    noted.push(...ranges);
    served.noteDirectReads(ranges);
  }, { maxReadBytes: 1 << 20 });
  const ends = conns.conns.map((conn) => serveTransmission(conn, served, { readOnly: true }));
  return {
    image,
    inner,
    disk,
    served,
    noted,
    conns,
    clients,
    ends,
    async [Symbol.asyncDispose]() {
      for (const client of clients) client.close();
      await Promise.allSettled(ends);
      await conns.close();
      await served.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("direct NBD reads: cached chunks and pinned pages by the reader, misses by this thread", async () => {
  await using h = await harness();
  const client = h.clients[0];
  await h.disk.fillAhead(0, 8 * CHUNK); // chunks 0-7 present
  const pinAt = 40 * CHUNK + PIN_PAGE_BYTES;
  h.served.pin(pinAt, h.image.slice(pinAt, pinAt + PIN_PAGE_BYTES));
  const innerReads = h.inner.reads.length;

  const cases = [
    { offset: CHUNK + 100, length: 3 * CHUNK }, // present chunks 1-4
    { offset: pinAt, length: PIN_PAGE_BYTES }, // a pinned page
    { offset: 7 * CHUNK, length: 2 * CHUNK }, // half present: a miss
    { offset: 20 * CHUNK, length: 4096 }, // a miss
  ];
  for (const { offset, length } of cases) {
    await client.request(NBD_CMD_READ, offset, length);
    const reply = await client.reply();
    assert.equal(reply?.error, 0);
    assert.deepEqual(reply?.data, h.image.subarray(offset, offset + length));
  }
  // The first two by the reader thread (it tells them, with the socket), the others fetched.
  await waitFor(() => h.conns.conns[0].servedDirectly === 2);
  assert.deepEqual(h.noted, [CHUNK + 100, 3 * CHUNK, pinAt, PIN_PAGE_BYTES]);
  assert(h.inner.reads.length > innerReads, "the misses reached the inner source");
  assert(
    h.inner.reads.slice(innerReads).every((r) => r.offset >= 7 * CHUNK),
    "a read the reader answered went to the inner source",
  );
});

Deno.test("direct NBD reads: pipelined requests of both kinds get whole replies with their bytes", async () => {
  await using h = await harness(2);
  await h.disk.fillAhead(0, 32 * CHUNK);
  const sent = new Map<bigint, { offset: number; length: number }>();
  // Interleaved: present and missing ranges, small and large, on two sockets at once.
  await Promise.all(h.clients.map(async (client, socket) => {
    for (let i = 0; i < 120; i++) {
      const offset = ((i * 7 + socket * 13) % 60) * CHUNK + (i % 5) * 512;
      const length = i % 3 === 0 ? 3 * CHUNK : 4096;
      const cookie = await client.request(NBD_CMD_READ, offset, length);
      sent.set(BigInt(socket) << 32n | cookie, { offset, length });
    }
    for (let i = 0; i < 120; i++) {
      const reply = await client.reply();
      assert(reply, "the server closed early");
      assert.equal(reply.error, 0);
      const { offset, length } = sent.get(BigInt(socket) << 32n | reply.cookie)!;
      assert.deepEqual(reply.data, h.image.subarray(offset, offset + length));
    }
  }));
  await waitFor(() => h.conns.conns.every((conn) => conn.servedDirectly > 0));
});

Deno.test("direct NBD reads: FLUSH, a WRITE and DISC go through the transmission code", async () => {
  await using h = await harness();
  const client = h.clients[0];
  await h.disk.fillAhead(0, 4 * CHUNK);
  await client.request(NBD_CMD_FLUSH, 0, 0);
  assert.equal((await client.reply())?.error, 0);
  await client.request(NBD_CMD_WRITE, 0, 8, { payload: new Uint8Array(8) });
  assert.equal((await client.reply())?.error, NBD_EPERM);
  // After the WRITE everything is passed on unparsed: the READ is answered, not by the reader.
  await client.request(NBD_CMD_READ, 0, 4096);
  const reply = await client.reply();
  assert.deepEqual(reply?.data, h.image.subarray(0, 4096));
  await client.request(NBD_CMD_DISC, 0, 0);
  const end = await h.ends[0];
  assert.equal(end.reason, "disconnect");
  assert.equal(h.conns.conns[0].servedDirectly, 0);
});

Deno.test("direct NBD reads: a bad magic ends the connection as a protocol error", async () => {
  await using h = await harness();
  const client = h.clients[0];
  await h.disk.fillAhead(0, 4 * CHUNK);
  await client.request(NBD_CMD_READ, 0, 4096, { magic: 0x12345678 });
  const end = await h.ends[0];
  assert.equal(end.reason, "protocol");
  assert.match(end.detail ?? "", /magic/);
  assert(await client.closedByServer(), "the socket stayed open");
});

Deno.test("direct NBD reads: the client's close ends the connection; close() stops the reader", async () => {
  const h = await harness();
  await h.disk.fillAhead(0, 4 * CHUNK);
  await h.clients[0].request(NBD_CMD_READ, 0, 4096);
  assert.deepEqual((await h.clients[0].reply())?.data, h.image.subarray(0, 4096));
  h.clients[0].close();
  assert.equal((await h.ends[0]).reason, "eof");
  const fd = h.conns.conns[0].fd;
  const socket = Deno.readLinkSync(`/proc/self/fd/${fd}`); // "socket:[inode]"
  await h[Symbol.asyncDispose]();
  // Another test file in this process (deno test --parallel) may hold the number by now.
  let now: string | undefined;
  try {
    now = Deno.readLinkSync(`/proc/self/fd/${fd}`);
  } catch { /* closed, and not reused */ }
  assert.notEqual(now, socket, "the socket was left open");
});

Deno.test("direct NBD reads: requests split anywhere across writes, any offsets and lengths", async () => {
  await using h = await harness();
  const client = h.clients[0];
  await h.disk.fillAhead(0, 24 * CHUNK);
  const size = h.image.length;
  let seed = 12345;
  const random = (n: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  // Present and missing, across the end, empty, and over the reader's largest READ.
  const requests: { cookie: bigint; offset: number; length: number }[] = [];
  const stream: Uint8Array[] = [];
  for (let i = 0; i < 300; i++) {
    const kind = random(10);
    const offset = kind === 0 ? size - random(8192) : random(size);
    const length = kind === 1 ? 0 : kind === 2 ? (1 << 20) + 4096 : 1 + random(3 * CHUNK);
    const cookie = BigInt(i + 1);
    requests.push({ cookie, offset, length });
    stream.push(encodeRequest(NBD_CMD_READ, cookie, offset, length));
  }
  const bytes = new Uint8Array(stream.length * 28);
  stream.forEach((request, i) => bytes.set(request, i * 28));
  const written = (async () => {
    for (let at = 0; at < bytes.length;) {
      const piece = 1 + random(100); // headers cut at every place
      await client.write(bytes.subarray(at, at + piece));
      at += piece;
    }
  })();
  const byCookie = new Map(requests.map((r) => [r.cookie, r]));
  for (let i = 0; i < requests.length; i++) {
    const header = await client.readExactly(16);
    assert(header, "the server closed early");
    const view = new DataView(header.buffer, header.byteOffset);
    assert.equal(view.getUint32(0), NBD_SIMPLE_REPLY_MAGIC);
    const request = byCookie.get(view.getBigUint64(8));
    assert(request, `a reply for cookie ${view.getBigUint64(8)}, asked for none or twice`);
    byCookie.delete(request.cookie);
    const { offset, length } = request;
    assert.equal(view.getUint32(4), 0, `READ ${offset}+${length}`);
    const expected = new Uint8Array(length); // zeros past the end
    if (offset < size) expected.set(h.image.subarray(offset, Math.min(size, offset + length)));
    const data = length > 0 ? await client.readExactly(length) : new Uint8Array(0);
    assert.deepEqual(data, expected, `READ ${offset}+${length}`);
  }
  await written;
  await waitFor(() => h.conns.conns[0].servedDirectly > 0);
});

async function waitFor(check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out waiting for the reader's report");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
