/**
 * Server side of the fixed-newstyle NBD handshake, for user-space clients (nbdcopy, nbdinfo,
 * nbdfuse, qemu). The kernel path skips it: netlink CONNECT hands the kernel a socket that is
 * already in the transmission phase. Facts from the NBD protocol document (doc/proto.md).
 */
import { type NbdConn, readExactly, writeFully } from "./conn_io.ts";
import {
  BLOCK_SIZE_MAX,
  BLOCK_SIZE_MIN,
  BLOCK_SIZE_PREFERRED,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_INIT_MAGIC,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_REPLY_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_SERVER,
} from "./protocol.ts";

export interface ExportDescription {
  /** Name given by NBD_OPT_LIST; clients may also ask for "" (the default export). */
  name: string;
  sizeBytes: number;
  /** Transmission flags (READ_ONLY_EXPORT_FLAGS). */
  flags: number;
  /** Free text for NBD_INFO_DESCRIPTION. */
  description?: string;
  /** Largest request advertised by NBD_INFO_BLOCK_SIZE. Default BLOCK_SIZE_MAX (32 MiB). */
  maxBlockBytes?: number;
}

export type HandshakeResult =
  | { ok: true; exportName: string }
  | { ok: false; reason: string };

/**
 * Why a client is turned away during option haggling: every option it sends gets this error
 * reply (an NBD_REP_ERR_* type) with `message`, which clients show the user (nbdinfo with
 * LIBNBD_DEBUG=1, qemu as "server reported: …"). An EXPORT_NAME cannot be answered with an
 * error: that client is hung up on.
 */
export interface Refusal {
  reply: number;
  message: string;
}

/** Option payloads above this are refused (names are at most 4 KiB by the protocol). */
const MAX_OPTION_BYTES = 64 * 1024;
/** A client that keeps haggling past this many options is told so and dropped. */
const MAX_OPTIONS = 256;
/**
 * A refused client gets this many error replies, then is dropped: a real client gives up
 * after a few (libnbd: STRUCTURED_REPLY, INFO, GO, then ABORT).
 */
const MAX_REFUSED_OPTIONS = 16;
const TOO_MANY_OPTIONS: Refusal = { reply: NBD_REP_ERR_POLICY, message: "too many options" };

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: false });

/**
 * Runs the handshake on a fresh connection. On `ok` the connection is in the transmission
 * phase (hand it to serveTransmission); otherwise the client left or was dropped and the caller
 * closes the connection. With `refusal` the client is only told why it is not served (then it
 * leaves, or is dropped): the caller bounds how long that may take.
 */
export async function negotiate(
  conn: NbdConn,
  exp: ExportDescription,
  refusal?: Refusal,
): Promise<HandshakeResult> {
  const greeting = new Uint8Array(18);
  const gv = new DataView(greeting.buffer);
  gv.setBigUint64(0, NBD_INIT_MAGIC);
  gv.setBigUint64(8, NBD_OPTS_MAGIC);
  gv.setUint16(16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  await writeFully(conn, greeting);

  const clientFlags = new Uint8Array(4);
  if (!await readExactly(conn, clientFlags, "client flags")) {
    return { ok: false, reason: "client left before sending its flags" };
  }
  const flags = new DataView(clientFlags.buffer).getUint32(0);
  if (flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
    // The protocol requires dropping a client that sets flags we did not offer.
    return { ok: false, reason: `unknown client flags 0x${flags.toString(16)}` };
  }
  const noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;

  const header = new Uint8Array(16);
  const hv = new DataView(header.buffer);
  const maxOptions = refusal ? MAX_REFUSED_OPTIONS : MAX_OPTIONS;
  for (let count = 0;; count++) {
    if (!await readExactly(conn, header, "an option header")) {
      return { ok: false, reason: "client left during option haggling" };
    }
    if (hv.getBigUint64(0) !== NBD_OPTS_MAGIC) {
      return { ok: false, reason: "bad option magic" };
    }
    const option = hv.getUint32(8);
    const length = hv.getUint32(12);
    if (length > MAX_OPTION_BYTES) {
      // Too big to read and discard politely: say why, then hang up.
      await sendError(conn, option, { reply: NBD_REP_ERR_TOO_BIG, message: "option too long" });
      return { ok: false, reason: `option ${option} with ${length} bytes of data` };
    }
    const data = new Uint8Array(length);
    if (length && !await readExactly(conn, data, "option data")) {
      return { ok: false, reason: "client left during option data" };
    }
    if (count >= maxOptions && option !== NBD_OPT_ABORT) {
      const last = refusal ?? TOO_MANY_OPTIONS;
      await sendError(conn, option, last);
      return { ok: false, reason: last.message };
    }
    if (refusal && option !== NBD_OPT_ABORT) {
      await sendError(conn, option, refusal);
      if (option === NBD_OPT_EXPORT_NAME) return { ok: false, reason: refusal.message };
      continue;
    }

    switch (option) {
      case NBD_OPT_EXPORT_NAME: {
        const name = decoder.decode(data);
        if (!matches(exp, name)) {
          // EXPORT_NAME cannot carry an error: the protocol says to hang up.
          return { ok: false, reason: `unknown export ${quotedName(name)}` };
        }
        const reply = new Uint8Array(10 + (noZeroes ? 0 : 124));
        const rv = new DataView(reply.buffer);
        rv.setBigUint64(0, BigInt(exp.sizeBytes));
        rv.setUint16(8, exp.flags);
        await writeFully(conn, reply);
        return { ok: true, exportName: name };
      }
      case NBD_OPT_ABORT:
        await sendReply(conn, option, NBD_REP_ACK).catch(() => {});
        return { ok: false, reason: "client aborted" };
      case NBD_OPT_LIST: {
        if (length !== 0) {
          await sendReply(conn, option, NBD_REP_ERR_INVALID);
          break;
        }
        const name = encoder.encode(exp.name);
        const payload = new Uint8Array(4 + name.length);
        new DataView(payload.buffer).setUint32(0, name.length);
        payload.set(name, 4);
        await sendReply(conn, option, NBD_REP_SERVER, payload);
        await sendReply(conn, option, NBD_REP_ACK);
        break;
      }
      case NBD_OPT_INFO:
      case NBD_OPT_GO: {
        const parsed = parseInfoRequest(data);
        if (!parsed) {
          await sendReply(conn, option, NBD_REP_ERR_INVALID, encoder.encode("malformed request"));
          break;
        }
        if (!matches(exp, parsed.name)) {
          await sendReply(
            conn,
            option,
            NBD_REP_ERR_UNKNOWN,
            encoder.encode(`unknown export ${quotedName(parsed.name)}`),
          );
          break;
        }
        await sendInfo(conn, option, exp, parsed.requests);
        await sendReply(conn, option, NBD_REP_ACK);
        if (option === NBD_OPT_GO) return { ok: true, exportName: parsed.name };
        break;
      }
      default:
        // STARTTLS, STRUCTURED_REPLY, meta contexts and anything newer: simple replies only.
        await sendReply(conn, option, NBD_REP_ERR_UNSUP);
    }
  }
}

function matches(exp: ExportDescription, name: string): boolean {
  return name === "" || name === exp.name;
}

/** NBD_OPT_INFO/GO data: u32 name length, name, u16 count, count × u16 info types. */
function parseInfoRequest(data: Uint8Array): { name: string; requests: number[] } | undefined {
  if (data.length < 6) return undefined;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const nameLength = view.getUint32(0);
  if (nameLength > data.length - 6) return undefined;
  const name = decoder.decode(data.subarray(4, 4 + nameLength));
  const count = view.getUint16(4 + nameLength);
  if (6 + nameLength + 2 * count !== data.length) return undefined;
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(view.getUint16(6 + nameLength + 2 * i));
  return { name, requests };
}

async function sendInfo(
  conn: NbdConn,
  option: number,
  exp: ExportDescription,
  requests: number[],
): Promise<void> {
  const info = new Uint8Array(12);
  const iv = new DataView(info.buffer);
  iv.setUint16(0, NBD_INFO_EXPORT);
  iv.setBigUint64(2, BigInt(exp.sizeBytes));
  iv.setUint16(10, exp.flags);
  await sendReply(conn, option, NBD_REP_INFO, info);

  if (requests.includes(NBD_INFO_BLOCK_SIZE)) {
    const block = new Uint8Array(14);
    const bv = new DataView(block.buffer);
    bv.setUint16(0, NBD_INFO_BLOCK_SIZE);
    bv.setUint32(2, BLOCK_SIZE_MIN);
    bv.setUint32(6, BLOCK_SIZE_PREFERRED);
    bv.setUint32(10, exp.maxBlockBytes ?? BLOCK_SIZE_MAX);
    await sendReply(conn, option, NBD_REP_INFO, block);
  }
  if (requests.includes(NBD_INFO_NAME)) {
    await sendReply(conn, option, NBD_REP_INFO, typed(NBD_INFO_NAME, exp.name));
  }
  if (requests.includes(NBD_INFO_DESCRIPTION) && exp.description) {
    await sendReply(conn, option, NBD_REP_INFO, typed(NBD_INFO_DESCRIPTION, exp.description));
  }
}

function typed(type: number, text: string): Uint8Array {
  const bytes = encoder.encode(text);
  const out = new Uint8Array(2 + bytes.length);
  new DataView(out.buffer).setUint16(0, type);
  out.set(bytes, 2);
  return out;
}

/** Option reply: u64 magic, u32 option, u32 reply type, u32 length, data. */
async function sendReply(
  conn: NbdConn,
  option: number,
  type: number,
  data: Uint8Array = new Uint8Array(0),
): Promise<void> {
  const buf = new Uint8Array(20 + data.length);
  const view = new DataView(buf.buffer);
  view.setBigUint64(0, NBD_OPT_REPLY_MAGIC);
  view.setUint32(8, option);
  view.setUint32(12, type);
  view.setUint32(16, data.length);
  buf.set(data, 20);
  await writeFully(conn, buf);
}

/**
 * An error reply with its message; nothing for EXPORT_NAME, which has no error reply (the
 * protocol's answer is to hang up).
 */
async function sendError(conn: NbdConn, option: number, error: Refusal): Promise<void> {
  if (option === NBD_OPT_EXPORT_NAME) return;
  await sendReply(conn, option, error.reply, encoder.encode(error.message));
}

/**
 * A client's export name for a message: quoted, control characters escaped, at most 200
 * characters (a reply string must stay under 4096 bytes and hold no NUL; logs take it too).
 */
function quotedName(name: string): string {
  const cut = name.length > 200 ? `${name.slice(0, 200)}…` : name;
  const escape = (c: string) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
  // C0, DEL, C1 (terminal escapes) and the bidi overrides and isolates (text that reads
  // other than it is).
  // deno-lint-ignore no-control-regex -- control characters are what is escaped
  const controls = /[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
  return `'${cut.replace(controls, escape)}'`;
}
