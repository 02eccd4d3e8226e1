/**
 * A deliberately low-level NBD client for tests: it sends exactly the bytes a test asks for
 * (pipelined requests, bad magic, half a header) and reads replies as they come, so the
 * server's behaviour is observed rather than smoothed over by a real client library.
 */
import {
  NBD_CMD_READ,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INIT_MAGIC,
  NBD_OPT_REPLY_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
} from "../../lib/nbd/protocol.ts";

export interface Reply {
  cookie: bigint;
  error: number;
  data?: Uint8Array;
}

export interface OptionReply {
  option: number;
  type: number;
  data: Uint8Array;
}

export class RawNbdClient {
  #pending = new Map<bigint, { type: number; length: number }>();
  #nextCookie = 1n;
  #buf = new Uint8Array(0);

  constructor(readonly conn: Deno.Conn) {}

  static async connectUnix(path: string): Promise<RawNbdClient> {
    return new RawNbdClient(await Deno.connect({ transport: "unix", path }));
  }

  async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) done += await this.conn.write(bytes.subarray(done));
  }

  /** Reads exactly n bytes; null if the server closed the connection first. */
  async readExactly(n: number): Promise<Uint8Array | null> {
    while (this.#buf.length < n) {
      const chunk = new Uint8Array(Math.max(65536, n - this.#buf.length));
      let got: number | null;
      try {
        got = await this.conn.read(chunk);
      } catch {
        got = null; // ECONNRESET counts as closed
      }
      if (got === null) return null;
      const joined = new Uint8Array(this.#buf.length + got);
      joined.set(this.#buf);
      joined.set(chunk.subarray(0, got), this.#buf.length);
      this.#buf = joined;
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }

  /** True once the server has closed the connection (reads hit EOF). */
  async closedByServer(): Promise<boolean> {
    return (await this.readExactly(1)) === null;
  }

  /**
   * Reads the server's greeting (returned; null if the server closed first) and answers it
   * with FIXED_NEWSTYLE, leaving the client at option haggling.
   */
  async greet(): Promise<Uint8Array | null> {
    const greeting = await this.readExactly(18);
    if (greeting) await this.write(u32(NBD_FLAG_C_FIXED_NEWSTYLE));
    return greeting;
  }

  /** Client side of fixed newstyle, ending with NBD_OPT_GO (or EXPORT_NAME when asked). */
  async handshake(
    exportName = "",
    useExportName = false,
  ): Promise<{ size: bigint; flags: number }> {
    const greeting = await this.readExactly(18);
    if (!greeting) throw new Error("server closed during greeting");
    const gv = new DataView(greeting.buffer);
    if (gv.getBigUint64(0) !== NBD_INIT_MAGIC || gv.getBigUint64(8) !== NBD_OPTS_MAGIC) {
      throw new Error("bad greeting");
    }
    await this.write(u32(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
    const name = new TextEncoder().encode(exportName);
    if (useExportName) {
      await this.sendOption(1, name);
      const reply = await this.readExactly(10);
      if (!reply) throw new Error("server closed after EXPORT_NAME");
      const v = new DataView(reply.buffer);
      return { size: v.getBigUint64(0), flags: v.getUint16(8) };
    }
    const data = new Uint8Array(4 + name.length + 2);
    new DataView(data.buffer).setUint32(0, name.length);
    data.set(name, 4);
    await this.sendOption(7, data);
    let size = -1n, flags = -1;
    for (;;) {
      const reply = await this.readOptionReply();
      if (reply.type === 1) break;
      if (reply.type !== 3) throw new Error(`GO failed: reply type 0x${reply.type.toString(16)}`);
      const v = new DataView(reply.data.buffer);
      if (v.getUint16(0) === 0) {
        size = v.getBigUint64(2);
        flags = v.getUint16(10);
      }
    }
    return { size, flags };
  }

  async sendOption(option: number, data: Uint8Array = new Uint8Array(0), length = data.length) {
    const header = new Uint8Array(16);
    const v = new DataView(header.buffer);
    v.setBigUint64(0, NBD_OPTS_MAGIC);
    v.setUint32(8, option);
    v.setUint32(12, length);
    await this.write(concat(header, data));
  }

  async readOptionReply(): Promise<OptionReply> {
    const header = await this.readExactly(20);
    if (!header) throw new Error("server closed during option haggling");
    const v = new DataView(header.buffer);
    if (v.getBigUint64(0) !== NBD_OPT_REPLY_MAGIC) throw new Error("bad option reply magic");
    const length = v.getUint32(16);
    const data = length ? await this.readExactly(length) : new Uint8Array(0);
    if (!data) throw new Error("server closed inside an option reply");
    return { option: v.getUint32(8), type: v.getUint32(12), data };
  }

  /** Sends one request; returns its cookie. `magic` lets a test send a bad one. */
  async request(
    type: number,
    offset: number | bigint,
    length: number,
    options: { payload?: Uint8Array; magic?: number; flags?: number } = {},
  ): Promise<bigint> {
    const cookie = this.#nextCookie++;
    await this.write(encodeRequest(type, cookie, offset, length, options));
    this.#pending.set(cookie, { type, length });
    return cookie;
  }

  /** The next reply in arrival order, with READ data; null if the server closed. */
  async reply(): Promise<Reply | null> {
    const header = await this.readExactly(16);
    if (!header) return null;
    const v = new DataView(header.buffer);
    if (v.getUint32(0) !== NBD_SIMPLE_REPLY_MAGIC) throw new Error("bad reply magic");
    const error = v.getUint32(4);
    const cookie = v.getBigUint64(8);
    const pending = this.#pending.get(cookie);
    if (!pending) throw new Error(`reply for unknown cookie ${cookie}`);
    this.#pending.delete(cookie);
    if (pending.type !== NBD_CMD_READ || error !== 0) return { cookie, error };
    const data = await this.readExactly(pending.length);
    if (!data) throw new Error("server closed inside READ data");
    return { cookie, error, data };
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}

/** NBD_OPT_INFO/GO data: the export name and the NBD_INFO_* types asked for. */
export function infoRequest(name: string, infos: number[]): Uint8Array {
  const n = new TextEncoder().encode(name);
  const data = new Uint8Array(4 + n.length + 2 + 2 * infos.length);
  const v = new DataView(data.buffer);
  v.setUint32(0, n.length);
  data.set(n, 4);
  v.setUint16(4 + n.length, infos.length);
  infos.forEach((t, i) => v.setUint16(6 + n.length + 2 * i, t));
  return data;
}

export function encodeRequest(
  type: number,
  cookie: bigint,
  offset: number | bigint,
  length: number,
  options: { payload?: Uint8Array; magic?: number; flags?: number } = {},
): Uint8Array {
  const buf = new Uint8Array(28 + (options.payload?.length ?? 0));
  const v = new DataView(buf.buffer);
  v.setUint32(0, options.magic ?? NBD_REQUEST_MAGIC);
  v.setUint16(4, options.flags ?? 0);
  v.setUint16(6, type);
  v.setBigUint64(8, cookie);
  v.setBigUint64(16, BigInt(offset));
  v.setUint32(24, length);
  if (options.payload) buf.set(options.payload, 28);
  return buf;
}

function u32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
