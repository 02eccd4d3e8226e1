/**
 * The FUSE request handler without a kernel: requests built byte by byte as fuse.h lays them
 * out, replies decoded the same way. Covers what the kernel tests cannot force: INIT
 * negotiation, READDIR paging, INTERRUPT, unknown opcodes, no-reply opcodes, malformed input.
 */
import assert from "node:assert/strict";
import { SingleFileFuseServer } from "./server.ts";
import {
  FOPEN_DIRECT_IO,
  FOPEN_KEEP_CACHE,
  FUSE_ASYNC_READ,
  FUSE_MAX_PAGES,
  IN_HEADER_SIZE,
  Op,
} from "./protocol.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";

interface Reply {
  unique: bigint;
  error: number;
  body: Uint8Array;
  view: DataView;
}

function request(opcode: number, unique: bigint, nodeId: bigint, body = new Uint8Array()) {
  const out = new Uint8Array(IN_HEADER_SIZE + body.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, out.length, true);
  v.setUint32(4, opcode, true);
  v.setBigUint64(8, unique, true);
  v.setBigUint64(16, nodeId, true);
  out.set(body, IN_HEADER_SIZE);
  return out;
}

function readBody(offset: number, size: number): Uint8Array<ArrayBuffer> {
  const body = new Uint8Array(40);
  const v = new DataView(body.buffer);
  v.setBigUint64(8, BigInt(offset), true);
  v.setUint32(16, size, true);
  return body;
}

function harness(source = new MemorySource(patternBytes(10_000)), pageCache = false) {
  const replies: Reply[] = [];
  const server = new SingleFileFuseServer(source, "blob", (head, data) => {
    const bytes = new Uint8Array(head.length + (data?.length ?? 0));
    bytes.set(head);
    if (data) bytes.set(data, head.length);
    const v = new DataView(bytes.buffer);
    assert.equal(v.getUint32(0, true), bytes.length, "out_header.len is the reply length");
    replies.push({
      unique: v.getBigUint64(8, true),
      error: -v.getInt32(4, true) || 0,
      body: bytes.subarray(16),
      view: new DataView(bytes.buffer, 16),
    });
  }, { maxWriteBytes: 1 << 20, pageCache });
  return { server, replies, source };
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

Deno.test("fuse protocol: INIT keeps only offered flags, 256 pages, and our minor at most 44", async () => {
  const { server, replies } = harness();
  const init = new Uint8Array(64);
  const v = new DataView(init.buffer);
  v.setUint32(0, 7, true);
  v.setUint32(4, 45, true);
  v.setUint32(8, 131072, true);
  v.setUint32(12, FUSE_ASYNC_READ | FUSE_MAX_PAGES | (1 << 3), true);
  server.handle(request(Op.INIT, 1n, 0n, init));
  await server.initialized;
  const r = replies[0];
  assert.equal(r.error, 0);
  assert.equal(r.body.length, 64);
  assert.equal(r.view.getUint32(0, true), 7);
  assert.equal(r.view.getUint32(4, true), 44);
  assert.equal(r.view.getUint32(8, true), 131072, "readahead not raised");
  assert.equal(r.view.getUint32(12, true), FUSE_ASYNC_READ | FUSE_MAX_PAGES);
  assert.equal(r.view.getUint16(28, true), 256);
});

Deno.test("fuse protocol: an old kernel protocol is refused with EPROTO", async () => {
  const { server, replies } = harness();
  const init = new Uint8Array(64);
  new DataView(init.buffer).setUint32(0, 7, true);
  new DataView(init.buffer).setUint32(4, 26, true);
  server.handle(request(Op.INIT, 1n, 0n, init));
  await assert.rejects(server.initialized, /7\.26/);
  assert.equal(replies[0].error, 71);
});

Deno.test("fuse protocol: lookup, getattr, open and readdir describe one 0444 file", () => {
  const { server, replies } = harness();
  const name = (s: string) => new TextEncoder().encode(s + "\0");
  server.handle(request(Op.LOOKUP, 2n, 1n, name("blob")));
  server.handle(request(Op.LOOKUP, 3n, 1n, name("other")));
  server.handle(request(Op.GETATTR, 4n, 2n, new Uint8Array(16)));
  server.handle(request(Op.OPEN, 5n, 2n, new Uint8Array(8)));
  const write = new Uint8Array(8);
  write[0] = 1; // O_WRONLY
  server.handle(request(Op.OPEN, 6n, 2n, write));
  server.handle(request(Op.GETATTR, 7n, 99n, new Uint8Array(16)));
  const [entry, missing, attr, open, openWrite, unknownNode] = replies;
  assert.equal(entry.error, 0);
  assert.equal(entry.view.getBigUint64(0, true), 2n, "node id");
  assert.equal(entry.view.getBigUint64(40 + 8, true), 10_000n, "size");
  assert.equal(entry.view.getUint32(40 + 60, true), 0o100444, "mode");
  assert.equal(missing.error, 2);
  assert.equal(attr.view.getUint32(16 + 60, true), 0o100444);
  assert.equal(open.view.getUint32(8, true) & FOPEN_DIRECT_IO, FOPEN_DIRECT_IO);
  assert.equal(openWrite.error, 30, "EROFS for write opens");
  assert.equal(unknownNode.error, 2);
});

Deno.test("fuse protocol: with pageCache OPEN keeps the file's cache and asks no direct I/O", () => {
  const { server, replies } = harness(undefined, true);
  server.handle(request(Op.OPEN, 5n, 2n, new Uint8Array(8)));
  const flags = replies[0].view.getUint32(8, true);
  assert.equal(replies[0].error, 0);
  assert.equal(flags & FOPEN_DIRECT_IO, 0, "direct I/O would bypass the page cache");
  assert.equal(flags & FOPEN_KEEP_CACHE, FOPEN_KEEP_CACHE, "the cache is dropped at each open");
});

Deno.test("fuse protocol: readdir pages by cookie when the buffer is small", () => {
  const { server, replies } = harness();
  const names: string[] = [];
  let offset = 0;
  for (let unique = 10n; unique < 20n; unique++) {
    server.handle(request(Op.READDIR, unique, 1n, readBody(offset, 40)));
    const r = replies.at(-1)!;
    if (r.body.length === 0) break;
    const namelen = r.view.getUint32(16, true);
    names.push(new TextDecoder().decode(r.body.subarray(24, 24 + namelen)));
    offset = Number(r.view.getBigUint64(8, true));
  }
  assert.deepEqual(names, [".", "..", "blob"]);
});

Deno.test("fuse protocol: reads are clipped at EOF and never ask the source past its end", async () => {
  const { server, replies, source } = harness();
  server.handle(request(Op.READ, 20n, 2n, readBody(9_990, 4096)));
  server.handle(request(Op.READ, 21n, 2n, readBody(10_000, 4096)));
  server.handle(request(Op.READ, 22n, 2n, readBody(50_000, 4096)));
  await tick();
  const byUnique = new Map(replies.map((r) => [r.unique, r]));
  assert.deepEqual(byUnique.get(20n)!.body, source.bytes.slice(9_990));
  assert.equal(byUnique.get(21n)!.body.length, 0);
  assert.equal(byUnique.get(22n)!.body.length, 0);
  assert.deepEqual(source.outOfRange, []);
});

Deno.test("fuse protocol: INTERRUPT is answered ENOSYS (no more are sent); its READ goes on and answers", async () => {
  const source = new MemorySource(patternBytes(10_000), { delayMs: () => 30 });
  const { server, replies } = harness(source);
  server.handle(request(Op.READ, 30n, 2n, readBody(0, 4096)));
  const interrupt = new Uint8Array(8);
  new DataView(interrupt.buffer).setBigUint64(0, 30n, true);
  const interruptUnique = 31n | (1n << 63n); // FUSE_INT_REQ_BIT
  server.handle(request(Op.INTERRUPT, interruptUnique, 0n, interrupt));
  await tick();
  assert.deepEqual(replies.map((r) => [r.unique, r.error]), [[interruptUnique, 38]]);
  await new Promise((resolve) => setTimeout(resolve, 60));
  assert.deepEqual(replies.map((r) => [r.unique, r.error]), [[interruptUnique, 38], [30n, 0]]);
});

Deno.test("fuse protocol: FORGET gets no reply, unknown opcodes ENOSYS, short requests are dropped", () => {
  const { server, replies } = harness();
  server.handle(request(Op.FORGET, 40n, 2n, new Uint8Array(8)));
  server.handle(request(Op.BATCH_FORGET, 41n, 0n, new Uint8Array(8)));
  server.handle(request(Op.STATX, 42n, 2n, new Uint8Array(24)));
  server.handle(request(Op.GETXATTR, 43n, 2n, new Uint8Array(16)));
  server.handle(request(4242, 44n, 2n));
  server.handle(new Uint8Array(12));
  assert.deepEqual(replies.map((r) => [r.unique, r.error]), [[42n, 38], [43n, 38], [44n, 38]]);
});
