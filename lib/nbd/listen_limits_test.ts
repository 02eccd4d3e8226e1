/**
 * The user-space server's limits, with raw clients: what a client beyond maxConnections is told
 * and what it may hold, the largest READ as advertised, and an idle TCP client's unsent replies.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { type ConnectionEvent, type NbdServer, startNbdServer } from "./listen.ts";
import {
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_EINVAL,
  NBD_INFO_BLOCK_SIZE,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_REP_ACK,
  NBD_REP_ERR_POLICY,
  NBD_REP_INFO,
  READ_ONLY_EXPORT_FLAGS,
} from "./protocol.ts";
import { infoRequest, RawNbdClient } from "../../tests/_support/nbd_client.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";

const MiB = 1024 * 1024;
const SIZE = 3 * MiB + 17;
const DATA = patternBytes(SIZE);
const TOO_MANY = "too many connections: all 2 slots are taken, try again later";

/** A server of at most two connections on a fresh socket, its clients closed after `use`. */
async function withTwoSlotServer(
  use: (path: string, server: NbdServer, clients: RawNbdClient[]) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nbd-limits-" });
  const path = `${dir}/s.sock`;
  const server = startNbdServer({
    listen: { transport: "unix", path },
    source: new MemorySource(DATA),
    export: { name: "x", sizeBytes: SIZE, flags: READ_ONLY_EXPORT_FLAGS },
    maxConnections: 2,
  });
  const clients: RawNbdClient[] = [];
  try {
    await use(path, server, clients);
  } finally {
    for (const c of clients) c.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Two clients through the handshake: every slot taken. */
async function fill(path: string, clients: RawNbdClient[]): Promise<void> {
  for (let i = 0; i < 2; i++) {
    const c = await RawNbdClient.connectUnix(path);
    clients.push(c);
    await c.handshake();
  }
}

async function connect(path: string, clients: RawNbdClient[]): Promise<RawNbdClient> {
  const c = await RawNbdClient.connectUnix(path);
  clients.push(c);
  return c;
}

/** The reply to `option` from a refused client: the refusal, with its reason. */
async function expectRefusal(c: RawNbdClient, option: number, data?: Uint8Array): Promise<void> {
  await c.sendOption(option, data);
  const reply = await c.readOptionReply();
  assertEquals([reply.option, reply.type], [option, NBD_REP_ERR_POLICY]);
  assertEquals(new TextDecoder().decode(reply.data), TOO_MANY);
}

/** The client got a slot: its GO succeeds (a refused one's gets an error, or is closed). */
function admitted(c: RawNbdClient): Promise<boolean> {
  return c.handshake().then(() => true, () => false);
}

Deno.test("listen: a client beyond maxConnections is told why in the handshake, without a slot", () =>
  withTwoSlotServer(async (path, server, clients) => {
    await fill(path, clients);
    const third = await connect(path, clients);
    ok(await third.greet(), "the greeting");
    await expectRefusal(third, NBD_OPT_INFO, infoRequest("", [NBD_INFO_BLOCK_SIZE]));
    await expectRefusal(third, NBD_OPT_LIST);
    await expectRefusal(third, NBD_OPT_GO, infoRequest("x", []));
    assertEquals(server.connectionCount(), 2);
    await third.sendOption(NBD_OPT_ABORT);
    assertEquals((await third.readOptionReply()).type, NBD_REP_ACK);
    ok(await third.closedByServer());

    // EXPORT_NAME has no error reply: that client is hung up on, sent nothing.
    const named = await connect(path, clients);
    ok(await named.greet());
    await named.sendOption(NBD_OPT_EXPORT_NAME, new TextEncoder().encode("x"));
    ok(await named.closedByServer());
    // One that says nothing is dropped after a short while.
    const silent = await connect(path, clients);
    ok(await silent.greet());
    ok(await silent.closedByServer());

    // The slots were never theirs: one frees once a served client leaves.
    clients[0].close();
    let served = false;
    for (let attempt = 0; attempt < 50 && !served; attempt++) {
      served = await admitted(await connect(path, clients));
      if (!served) await new Promise((r) => setTimeout(r, 20));
    }
    ok(served);
  }));

Deno.test("listen: refusals told at once are bounded; beyond them a newcomer is closed at once", () =>
  withTwoSlotServer(async (path, _server, clients) => {
    await fill(path, clients);
    // Sixteen refused clients that say nothing, each being told until the refusal timeout.
    const told = [];
    for (let i = 0; i < 16; i++) {
      const c = await connect(path, clients);
      ok(await c.readExactly(18), `refused client ${i} got no greeting`);
      told.push(c);
    }
    const seventeenth = await connect(path, clients);
    ok(await seventeenth.closedByServer(), "the 17th refusal was told too");
    // Once they are dropped, newcomers are told again: the refusals hold nothing after.
    for (const c of told) ok(await c.closedByServer());
    const later = await connect(path, clients);
    ok(await later.greet(), "a refusal was left counted");
    await expectRefusal(later, NBD_OPT_GO, infoRequest("", []));
  }));

Deno.test("listen: close() ends refusals in progress", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nbd-limits-" });
  const path = `${dir}/s.sock`;
  const server = startNbdServer({
    listen: { transport: "unix", path },
    source: new MemorySource(DATA),
    export: { name: "x", sizeBytes: SIZE, flags: READ_ONLY_EXPORT_FLAGS },
    maxConnections: 1,
  });
  const clients: RawNbdClient[] = [];
  try {
    const served = await connect(path, clients);
    await served.handshake();
    const refused = await connect(path, clients);
    ok(await refused.greet());
    await server.close();
    ok(await refused.closedByServer());
    ok(await served.closedByServer());
  } finally {
    for (const c of clients) c.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("listen: a burst of newcomers evicts distinct stalled clients, never one twice", () =>
  withTwoSlotServer(async (path, server, clients) => {
    // Two silent clients hold the slots until both count as stalled.
    for (let i = 0; i < 2; i++) await connect(path, clients);
    await new Promise((r) => setTimeout(r, 1300));
    // Five at once: two may take the stalled clients' slots, the rest are refused.
    const burst = await Promise.all(
      Array.from({ length: 5 }, () => connect(path, clients)),
    );
    const served = (await Promise.all(burst.map(admitted))).filter((a) => a).length;
    ok(served <= 2, `admitted: ${served}`);
    ok(server.connectionCount() <= 2, `connections: ${server.connectionCount()}`);
  }));

Deno.test("listen: a READ longer than the advertised maximum gets EINVAL; the connection goes on", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nbd-limits-" });
  const path = `${dir}/s.sock`;
  // 16 MiB for 64 slots: the largest grant, so the advertised maximum, is 2.125 MiB.
  const server = startNbdServer({
    listen: { transport: "unix", path },
    source: new MemorySource(DATA),
    export: { name: "x", sizeBytes: SIZE, flags: READ_ONLY_EXPORT_FLAGS },
    maxInflightBytes: 16 * MiB,
  });
  const c = await RawNbdClient.connectUnix(path);
  try {
    ok(await c.greet());
    await c.sendOption(NBD_OPT_GO, infoRequest("", [NBD_INFO_BLOCK_SIZE]));
    let maxBytes = 0;
    for (let r = await c.readOptionReply(); r.type !== NBD_REP_ACK; r = await c.readOptionReply()) {
      assertEquals(r.type, NBD_REP_INFO);
      const v = new DataView(r.data.buffer);
      if (v.getUint16(0) === NBD_INFO_BLOCK_SIZE) maxBytes = v.getUint32(10);
    }
    assertEquals(maxBytes, 2 * MiB + 128 * 1024);
    // Simple replies: the spec's answer to an over-long READ is an error, not a disconnect.
    await c.request(NBD_CMD_READ, 0, maxBytes + 4096);
    assertEquals(await c.reply(), { cookie: 1n, error: NBD_EINVAL });
    await c.request(NBD_CMD_READ, 0, maxBytes);
    assertEquals((await c.reply())?.data, DATA.subarray(0, maxBytes));
  } finally {
    c.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("listen: an idle TCP client's unsent replies are dropped with it; its slot is freed", async () => {
  const events: ConnectionEvent[] = [];
  const server = startNbdServer({
    listen: { transport: "tcp", hostname: "127.0.0.1", port: 0 },
    source: new MemorySource(DATA),
    export: { name: "x", sizeBytes: SIZE, flags: READ_ONLY_EXPORT_FLAGS },
    idleTimeoutMs: 300,
    onConnection: (event) => events.push(event),
  });
  const port = server.address.transport === "tcp" ? server.address.port : 0;
  const c = new RawNbdClient(await Deno.connect({ hostname: "127.0.0.1", port }));
  try {
    await c.handshake();
    // 48 MiB asked for and never read: more than the socket buffers hold, so the server's
    // writes block until the idle timeout closes the connection under them.
    for (let i = 0; i < 16; i++) await c.request(NBD_CMD_READ, 0, 3 * MiB);
    let closed: ConnectionEvent | undefined;
    while (!(closed = events.find((e) => e.kind === "closed"))) {
      await new Promise((r) => setTimeout(r, 50));
    }
    ok(events.some((e) => e.kind === "idle"), JSON.stringify(events));
    assertEquals(closed.kind === "closed" && closed.end.reason, "aborted");
    assertEquals(server.connectionCount(), 0);
  } finally {
    c.close();
    await server.close();
  }
});

Deno.test("listen: clients holding the shared pool without taking their replies are closed when another waits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nbd-hostage-" });
  const path = `${dir}/s.sock`;
  const events: ConnectionEvent[] = [];
  // 16 MiB for 8 connections: 1 MiB each guaranteed, a pool of 8 MiB, at most 2 MiB of it each.
  const server = startNbdServer({
    listen: { transport: "unix", path },
    source: new MemorySource(DATA),
    export: { name: "x", sizeBytes: SIZE, flags: READ_ONLY_EXPORT_FLAGS },
    maxConnections: 8,
    maxInflightBytes: 16 * MiB,
    poolHostageMs: 500,
    onConnection: (event) => events.push(event),
  });
  const clients: RawNbdClient[] = [];
  let keepAlive: ReturnType<typeof setInterval> | undefined;
  try {
    // Four hostages take the whole pool and never read, but send a FLUSH every 100 ms: never
    // idle, so the idle timeout (5 minutes) would not close them.
    const hostages: RawNbdClient[] = [];
    for (let i = 0; i < 4; i++) {
      const hostage = await connect(path, clients);
      await hostage.handshake();
      await hostage.request(NBD_CMD_READ, 0, 3 * MiB);
      hostages.push(hostage);
    }
    keepAlive = setInterval(() => {
      for (const hostage of hostages) hostage.request(NBD_CMD_FLUSH, 0, 0).catch(() => {});
    }, 100);
    await new Promise((r) => setTimeout(r, 300));
    // A READ past the newcomer's guaranteed share needs the pool: it waited for the hostages.
    const reader = await connect(path, clients);
    await reader.handshake();
    await reader.request(NBD_CMD_READ, 0, 2 * MiB);
    const reply = await Promise.race([
      reader.reply(),
      new Promise((r) => setTimeout(() => r("waited"), 5000)),
    ]);
    ok(reply !== "waited", `the READ waited behind the hostages: ${JSON.stringify(events)}`);
    assertEquals((reply as { error: number }).error, 0);
    ok(events.filter((e) => e.kind === "pool-hostage").length >= 1, JSON.stringify(events));
  } finally {
    clearInterval(keepAlive);
    for (const c of clients) c.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});
