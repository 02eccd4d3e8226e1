/**
 * Fixed-newstyle handshake of the user-space server (startNbdServer in-process), option by
 * option, with a raw client.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { type NbdServer, parseListenAddress, startNbdServer } from "./listen.ts";
import { claimSocketPath } from "./address.ts";
import {
  NBD_CMD_READ,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_SERVER,
  READ_ONLY_EXPORT_FLAGS,
} from "./protocol.ts";
import { CachedSource } from "../source/cached.ts";
import { infoRequest, RawNbdClient } from "../../tests/_support/nbd_client.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";
import { UsageError } from "../errors.ts";

const SIZE = 3 * 1024 * 1024 + 17;
const DATA = patternBytes(SIZE);

async function withServer(
  fn: (server: NbdServer, path: string) => Promise<void>,
  handshakeTimeoutMs?: number,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nbd-hs-" });
  const path = `${dir}/nbd.sock`;
  const server = await startNbdServer({
    listen: { transport: "unix", path },
    source: new CachedSource(new MemorySource(DATA)),
    export: { name: "image", sizeBytes: SIZE, flags: READ_ONLY_EXPORT_FLAGS, description: "test" },
    handshakeTimeoutMs,
  });
  try {
    await fn(server, path);
  } finally {
    await server.close();
    ok(!exists(path), "unix socket removed on close");
    await Deno.remove(dir, { recursive: true });
  }
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Greeting + client flags, leaving the client at option haggling. */
async function greet(path: string): Promise<RawNbdClient> {
  const client = await RawNbdClient.connectUnix(path);
  const greeting = await client.greet();
  ok(greeting);
  const v = new DataView(greeting.buffer);
  assertEquals(new TextDecoder().decode(greeting.subarray(0, 8)), "NBDMAGIC");
  assertEquals(new TextDecoder().decode(greeting.subarray(8, 16)), "IHAVEOPT");
  assertEquals(v.getUint16(16), 3, "FIXED_NEWSTYLE | NO_ZEROES");
  return client;
}

Deno.test("handshake: GO with block-size request, then reads", async () => {
  await withServer(async (_server, path) => {
    const c = await greet(path);
    try {
      await c.sendOption(NBD_OPT_GO, infoRequest("image", [3, 1]));
      const infos = new Map<number, Uint8Array>();
      for (;;) {
        const r = await c.readOptionReply();
        assertEquals(r.option, NBD_OPT_GO);
        if (r.type === NBD_REP_ACK) break;
        assertEquals(r.type, NBD_REP_INFO);
        infos.set(new DataView(r.data.buffer).getUint16(0), r.data);
      }
      const exp = new DataView(infos.get(0)!.buffer);
      assertEquals(infos.get(0)!.length, 12);
      assertEquals(exp.getBigUint64(2), BigInt(SIZE));
      assertEquals(exp.getUint16(10), 0x107, "HAS_FLAGS|READ_ONLY|SEND_FLUSH|CAN_MULTI_CONN");
      const bs = new DataView(infos.get(3)!.buffer);
      // The largest READ one client may have granted: its guaranteed share (1/128 of the
      // 64 MiB budget) and its part of the pool (1/8 of it).
      assertEquals(
        [bs.getUint32(2), bs.getUint32(6), bs.getUint32(10)],
        [1, 4096, (512 << 10) + (8 << 20)],
      );
      assertEquals(new TextDecoder().decode(infos.get(1)!.subarray(2)), "image");
      await c.request(NBD_CMD_READ, SIZE - 10, 10);
      assertEquals((await c.reply())?.data, DATA.subarray(SIZE - 10));
    } finally {
      c.close();
    }
  });
});

Deno.test("handshake: LIST, INFO, STRUCTURED_REPLY, unknown options, bad names", async () => {
  await withServer(async (_server, path) => {
    const c = await greet(path);
    try {
      await c.sendOption(NBD_OPT_LIST);
      const server = await c.readOptionReply();
      assertEquals(server.type, NBD_REP_SERVER);
      const nameLength = new DataView(server.data.buffer).getUint32(0);
      assertEquals(new TextDecoder().decode(server.data.subarray(4, 4 + nameLength)), "image");
      assertEquals((await c.readOptionReply()).type, NBD_REP_ACK);

      await c.sendOption(NBD_OPT_LIST, new Uint8Array(3));
      assertEquals((await c.readOptionReply()).type, NBD_REP_ERR_INVALID);

      await c.sendOption(NBD_OPT_STRUCTURED_REPLY);
      assertEquals((await c.readOptionReply()).type, NBD_REP_ERR_UNSUP);

      // Unknown option with data: the data is consumed and the stream stays in sync.
      await c.sendOption(99, new Uint8Array(1000).fill(0x49));
      const unknown = await c.readOptionReply();
      assertEquals([unknown.option, unknown.type], [99, NBD_REP_ERR_UNSUP]);

      await c.sendOption(NBD_OPT_INFO, infoRequest("nope", []));
      assertEquals((await c.readOptionReply()).type, NBD_REP_ERR_UNKNOWN);
      // A long name with control characters: not echoed raw (a reply string stays short, no NUL).
      await c.sendOption(
        NBD_OPT_INFO,
        infoRequest(`x\x00\x1b[31m\u009b\u202e${"n".repeat(60_000)}`, []),
      );
      const hostile = await c.readOptionReply();
      assertEquals(hostile.type, NBD_REP_ERR_UNKNOWN);
      const message = new TextDecoder().decode(hostile.data);
      ok(hostile.data.length < 300, `${hostile.data.length} bytes`);
      ok(![...message].some((ch) => ch.charCodeAt(0) < 0x20), message.slice(0, 40));
      ok(
        message.startsWith("unknown export 'x\\u0000\\u001b[31m\\u009b\\u202ennn"),
        message.slice(0, 50),
      );

      await c.sendOption(NBD_OPT_INFO, new Uint8Array([0, 0, 1, 0, 0]));
      assertEquals((await c.readOptionReply()).type, NBD_REP_ERR_INVALID);

      // INFO on the default export "", then GO.
      await c.sendOption(NBD_OPT_INFO, infoRequest("", []));
      const info = await c.readOptionReply();
      assertEquals(info.type, NBD_REP_INFO);
      assertEquals((await c.readOptionReply()).type, NBD_REP_ACK);
      await c.sendOption(NBD_OPT_GO, infoRequest("", []));
      assertEquals((await c.readOptionReply()).type, NBD_REP_INFO);
      assertEquals((await c.readOptionReply()).type, NBD_REP_ACK);
      await c.request(NBD_CMD_READ, 0, 100);
      assertEquals((await c.reply())?.data, DATA.subarray(0, 100));
    } finally {
      c.close();
    }
  });
});

Deno.test("handshake: old-style EXPORT_NAME, with and without NO_ZEROES", async () => {
  await withServer(async (_server, path) => {
    // With NO_ZEROES (the test client's handshake sets it): exactly 10 bytes, then transmission.
    const a = await RawNbdClient.connectUnix(path);
    try {
      const { size, flags } = await a.handshake("image", true);
      assertEquals([size, flags], [BigInt(SIZE), READ_ONLY_EXPORT_FLAGS]);
      await a.request(NBD_CMD_READ, 5, 5);
      assertEquals((await a.reply())?.data, DATA.subarray(5, 10));
    } finally {
      a.close();
    }
    // Without NO_ZEROES: 124 zero bytes follow.
    const b = await greet(path);
    try {
      await b.sendOption(1, new TextEncoder().encode(""));
      const reply = await b.readExactly(10 + 124);
      ok(reply);
      assertEquals(new DataView(reply.buffer).getBigUint64(0), BigInt(SIZE));
      assertEquals(reply.subarray(10), new Uint8Array(124));
      await b.request(NBD_CMD_READ, 0, 3);
      assertEquals((await b.reply())?.data, DATA.subarray(0, 3));
    } finally {
      b.close();
    }
    // Unknown name: EXPORT_NAME cannot report errors, so the server hangs up.
    const c = await greet(path);
    try {
      await c.sendOption(1, new TextEncoder().encode("other"));
      ok(await c.closedByServer());
    } finally {
      c.close();
    }
  });
});

Deno.test("handshake: ABORT, too-long option, bad magic, bad client flags, silent client", async () => {
  await withServer(async (server, path) => {
    const abort = await greet(path);
    await abort.sendOption(NBD_OPT_ABORT);
    const ack = await abort.readOptionReply();
    assertEquals(ack.type, NBD_REP_ACK);
    ok(await abort.closedByServer());
    abort.close();

    const big = await greet(path);
    await big.sendOption(99, new Uint8Array(0), 10 * 1024 * 1024);
    assertEquals((await big.readOptionReply()).type, NBD_REP_ERR_TOO_BIG);
    ok(await big.closedByServer());
    big.close();

    const magic = await greet(path);
    await magic.write(new Uint8Array(16).fill(7));
    ok(await magic.closedByServer());
    magic.close();

    const flags = await RawNbdClient.connectUnix(path);
    await flags.readExactly(18);
    await flags.write(new Uint8Array([0, 0, 0, 0x80]));
    ok(await flags.closedByServer());
    flags.close();

    // Connects and says nothing: dropped after the handshake timeout.
    const silent = await RawNbdClient.connectUnix(path);
    await silent.readExactly(18);
    const started = Date.now();
    ok(await silent.closedByServer());
    ok(Date.now() - started < 5000);
    silent.close();

    // Meanwhile a well-behaved client is served.
    const good = await RawNbdClient.connectUnix(path);
    await good.handshake();
    await good.request(NBD_CMD_READ, 1000, 24);
    assertEquals((await good.reply())?.data, DATA.subarray(1000, 1024));
    good.close();
    ok(server.connectionCount() <= 1);
  }, 300);
});

Deno.test("handshake: a client haggling past 256 options is told why before it is dropped", async () => {
  await withServer(async (_server, path) => {
    const c = await greet(path);
    try {
      // One write: the server answers each as it reads it.
      const one = new Uint8Array(16);
      new DataView(one.buffer).setBigUint64(0, 0x49484156454f5054n);
      new DataView(one.buffer).setUint32(8, 99);
      const all = new Uint8Array(16 * 257);
      for (let i = 0; i < 257; i++) all.set(one, 16 * i);
      await c.write(all);
      for (let i = 0; i < 256; i++) {
        assertEquals((await c.readOptionReply()).type, NBD_REP_ERR_UNSUP);
      }
      const last = await c.readOptionReply();
      assertEquals([last.option, last.type], [99, NBD_REP_ERR_POLICY]);
      assertEquals(new TextDecoder().decode(last.data), "too many options");
      ok(await c.closedByServer());
    } finally {
      c.close();
    }
  });
});

Deno.test("handshake: an over-long EXPORT_NAME is hung up on, not sent an option reply", async () => {
  await withServer(async (_server, path) => {
    const c = await greet(path);
    try {
      // An option reply here would be read as the export's size and flags.
      await c.sendOption(NBD_OPT_EXPORT_NAME, new Uint8Array(0), 10 * 1024 * 1024);
      ok(await c.closedByServer(), "the server sent bytes after an over-long EXPORT_NAME");
    } finally {
      c.close();
    }
  });
});

Deno.test("handshake: server close() ends live sessions and removes the socket", async () => {
  await withServer(async (server, path) => {
    const a = await RawNbdClient.connectUnix(path);
    await a.handshake();
    const b = await RawNbdClient.connectUnix(path); // stuck in the handshake
    await b.readExactly(18);
    await server.close();
    ok(await a.closedByServer());
    ok(await b.closedByServer());
    ok(!exists(path));
    a.close();
    b.close();
  });
});

Deno.test("listen: address parsing and stale sockets", async () => {
  assertEquals(parseListenAddress("unix:/tmp/x.sock"), { transport: "unix", path: "/tmp/x.sock" });
  assertEquals(parseListenAddress("tcp:127.0.0.1:10809"), {
    transport: "tcp",
    hostname: "127.0.0.1",
    port: 10809,
  });
  assertEquals(parseListenAddress("tcp:[::1]:0"), { transport: "tcp", hostname: "::1", port: 0 });
  for (const bad of ["x", "unix:", "tcp:host", "tcp:h:99999", "tcp::1:2"]) {
    let error: unknown;
    try {
      parseListenAddress(bad);
    } catch (e) {
      error = e;
    }
    ok(error instanceof UsageError, bad);
  }
  // A socket file left by a killed server is replaced.
  const dir = await Deno.makeTempDir();
  const path = `${dir}/stale.sock`;
  const stale = Deno.listen({ transport: "unix", path });
  stale.close(); // Deno removes nothing: the file stays
  const server = await startNbdServer({
    listen: { transport: "unix", path },
    source: new MemorySource(DATA),
    export: { name: "x", sizeBytes: SIZE, flags: READ_ONLY_EXPORT_FLAGS },
  });
  try {
    // And a live one is refused.
    let error: unknown;
    try {
      await startNbdServer({
        listen: { transport: "unix", path },
        source: new MemorySource(DATA),
        export: { name: "x", sizeBytes: SIZE, flags: READ_ONLY_EXPORT_FLAGS },
      });
    } catch (e) {
      error = e;
    }
    ok(error instanceof Error && /in use/.test(error.message));
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("listen: TCP on an ephemeral port", async () => {
  const server = await startNbdServer({
    listen: { transport: "tcp", hostname: "127.0.0.1", port: 0 },
    source: new MemorySource(DATA),
    export: { name: "tcp", sizeBytes: SIZE, flags: READ_ONLY_EXPORT_FLAGS },
  });
  try {
    const addr = server.address;
    ok(addr.transport === "tcp" && addr.port > 0);
    assertEquals(server.uri, `nbd://127.0.0.1:${addr.port}/tcp`);
    const c = new RawNbdClient(await Deno.connect({ hostname: "127.0.0.1", port: addr.port }));
    try {
      await c.handshake("tcp");
      await c.request(NBD_CMD_READ, 0, 8);
      assertEquals((await c.reply())?.data, DATA.subarray(0, 8));
    } finally {
      c.close();
    }
  } finally {
    await server.close();
  }
});

Deno.test("listen: the socket is 0600, and a stopping server removes only its own file", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/s.sock`;
  const start = () =>
    startNbdServer({
      listen: { transport: "unix", path },
      source: new MemorySource(DATA),
      export: { name: "x", sizeBytes: SIZE, flags: READ_ONLY_EXPORT_FLAGS },
    });
  const first = start();
  try {
    assertEquals(Deno.statSync(path).mode! & 0o777, 0o600);
    // Its file removed under it, and the path taken by another server.
    Deno.removeSync(path);
    const second = start();
    try {
      await first.close();
      ok(Deno.lstatSync(path).isSocket, "the other server's socket stays");
      const conn = await Deno.connect({ transport: "unix", path });
      conn.close();
    } finally {
      await second.close();
    }
    ok(!existsSync(path), "each server removes its own");
  } finally {
    await first.close();
    await Deno.remove(dir, { recursive: true });
  }
});

function existsSync(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("claimSocketPath: a live server whose backlog is full is in use, found without waiting", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/full.sock`;
  // A server that accepts nobody, its backlog filled by clients that never got in.
  const holder = new Deno.Command("python3", {
    args: [
      "-c",
      `import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(0)
cs = []
for i in range(8):
    c = socket.socket(socket.AF_UNIX); c.setblocking(False)
    try: c.connect(sys.argv[1])
    except BlockingIOError: pass
    cs.append(c)
print("ready", flush=True); time.sleep(60)`,
      path,
    ],
    stdout: "piped",
  }).spawn();
  try {
    const reader = holder.stdout.getReader();
    assertEquals(new TextDecoder().decode((await reader.read()).value).trim(), "ready");
    reader.releaseLock();
    const startedMs = Date.now();
    let error: unknown;
    try {
      claimSocketPath(path);
    } catch (e) {
      error = e;
    }
    ok(error instanceof Error && /in use/.test(error.message), String(error));
    ok(Date.now() - startedMs < 2000, "answered at once");
    ok(Deno.lstatSync(path).isSocket, "left in place");
  } finally {
    holder.kill();
    await holder.status;
    await holder.stdout.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});
