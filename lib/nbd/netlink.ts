/**
 * Generic netlink, just enough to drive the kernel's "nbd" family: message and attribute
 * encoding and strict decoding of replies (a malformed reply is an error, never a guess). The
 * socket that sends requests is in ./genl_socket.ts. Netlink data is in host byte order (little-endian on every platform
 * we ship for). Layouts from linux/netlink.h and linux/genetlink.h.
 */
import { NbdError } from "../errors.ts";
import { strerror } from "../../ffi/libc.ts";

// linux/netlink.h
export const NETLINK_GENERIC = 16;
export const NLMSG_HDR_BYTES = 16;
export const NLA_HDR_BYTES = 4;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
/** Flags of an NLMSG_ERROR message: request payload left out / extended-ACK TLVs follow. */
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;
export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;
export const NLMSGERR_ATTR_MSG = 1;
export const NLA_F_NESTED = 0x8000;
const NLA_TYPE_MASK = 0x3fff;

// linux/genetlink.h
export const GENL_HDR_BYTES = 4;
export const GENL_ID_CTRL = 0x10;
export const CTRL_CMD_GETFAMILY = 3;
export const CTRL_ATTR_FAMILY_ID = 1;
export const CTRL_ATTR_FAMILY_NAME = 2;
export const CTRL_VERSION = 2;

/** A reply the kernel would never send (or a truncated one): refuse to interpret it. */
export class NetlinkFormatError extends NbdError {
  constructor(detail: string) {
    super(`malformed netlink reply: ${detail}`);
  }
}

/** The kernel answered a netlink request with an error code (and maybe an extended-ACK text). */
export class NetlinkError extends NbdError {
  readonly errno: number;
  readonly extack?: string;
  constructor(what: string, code: number, extack?: string, hint?: string) {
    super(`${what}: ${strerror(code)}${extack ? ` (${extack})` : ""}`, hint);
    this.errno = code;
    this.extack = extack;
  }
}

export interface NetlinkMessage {
  type: number;
  flags: number;
  seq: number;
  portId: number;
  payload: Uint8Array;
}

export interface NetlinkAttr {
  /** Attribute type with the NESTED / NET_BYTEORDER bits masked off. */
  type: number;
  payload: Uint8Array;
}

export interface GenlMessage {
  /** nlmsg_type: the family id. */
  family: number;
  cmd: number;
  version: number;
  attrs: NetlinkAttr[];
}

const align4 = (n: number) => (n + 3) & ~3;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---------------------------------------------------------------------------------------------
// Encoding

/** One attribute: 4-byte header + payload, padded to 4 bytes. */
export function encodeAttr(type: number, payload: Uint8Array): Uint8Array<ArrayBuffer> {
  const length = NLA_HDR_BYTES + payload.length;
  if (length > 0xffff) throw new RangeError(`netlink attribute ${type} too long (${length} B)`);
  const out = new Uint8Array(align4(length));
  const dv = view(out);
  dv.setUint16(0, length, true);
  dv.setUint16(2, type, true);
  out.set(payload, NLA_HDR_BYTES);
  return out;
}

function concat(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function uintAttr(type: number, bytes: number, value: number | bigint): Uint8Array<ArrayBuffer> {
  const big = BigInt(value);
  if (big < 0n || big >= 1n << BigInt(8 * bytes)) {
    throw new RangeError(`netlink attribute ${type}: ${value} does not fit in u${8 * bytes}`);
  }
  const payload = new Uint8Array(bytes);
  const dv = view(payload);
  if (bytes === 1) dv.setUint8(0, Number(big));
  else if (bytes === 2) dv.setUint16(0, Number(big), true);
  else if (bytes === 4) dv.setUint32(0, Number(big), true);
  else dv.setBigUint64(0, big, true);
  return encodeAttr(type, payload);
}

/** Attribute builders (host byte order). Nested attributes carry no NLA_F_NESTED bit, as the
 * nbd family's parser (nla_parse_nested_deprecated) and the kernel's own replies do. */
export const attr = {
  u8: (type: number, value: number) => uintAttr(type, 1, value),
  u16: (type: number, value: number) => uintAttr(type, 2, value),
  u32: (type: number, value: number) => uintAttr(type, 4, value),
  u64: (type: number, value: number | bigint) => uintAttr(type, 8, value),
  /** NUL-terminated string (NLA_NUL_STRING / NLA_STRING both accept it). */
  string: (type: number, value: string) =>
    encodeAttr(type, concat([new TextEncoder().encode(value), new Uint8Array(1)])),
  nested: (type: number, children: readonly Uint8Array[]) => encodeAttr(type, concat(children)),
};

export interface GenlRequest {
  family: number;
  cmd: number;
  version: number;
  seq: number;
  /** Defaults to REQUEST|ACK: every request ends with an NLMSG_ERROR (0 = success). */
  flags?: number;
  attrs: readonly Uint8Array[];
}

/** nlmsghdr + genlmsghdr + attributes. */
export function encodeGenlRequest(req: GenlRequest): Uint8Array<ArrayBuffer> {
  const body = concat(req.attrs);
  const out = new Uint8Array(NLMSG_HDR_BYTES + GENL_HDR_BYTES + body.length);
  const dv = view(out);
  dv.setUint32(0, out.length, true);
  dv.setUint16(4, req.family, true);
  dv.setUint16(6, req.flags ?? (NLM_F_REQUEST | NLM_F_ACK), true);
  dv.setUint32(8, req.seq >>> 0, true);
  dv.setUint32(12, 0, true); // port id: the kernel fills in ours
  dv.setUint8(16, req.cmd);
  dv.setUint8(17, req.version);
  out.set(body, NLMSG_HDR_BYTES + GENL_HDR_BYTES);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding

/** Splits one recv() buffer into messages; every length is checked against the buffer. */
export function parseNetlinkMessages(buf: Uint8Array): NetlinkMessage[] {
  const out: NetlinkMessage[] = [];
  let at = 0;
  while (at < buf.length) {
    if (buf.length - at < NLMSG_HDR_BYTES) {
      throw new NetlinkFormatError(`${buf.length - at} trailing bytes, less than a header`);
    }
    const dv = view(buf.subarray(at));
    const length = dv.getUint32(0, true);
    if (length < NLMSG_HDR_BYTES) throw new NetlinkFormatError(`message length ${length} < 16`);
    if (length > buf.length - at) {
      throw new NetlinkFormatError(
        `message length ${length} exceeds the ${buf.length - at} B read`,
      );
    }
    out.push({
      type: dv.getUint16(4, true),
      flags: dv.getUint16(6, true),
      seq: dv.getUint32(8, true),
      portId: dv.getUint32(12, true),
      payload: buf.subarray(at + NLMSG_HDR_BYTES, at + length),
    });
    at += align4(length);
  }
  return out;
}

/** Attributes of a payload; a length that is short or runs past the payload is an error. */
export function parseAttrs(bytes: Uint8Array): NetlinkAttr[] {
  const out: NetlinkAttr[] = [];
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < NLA_HDR_BYTES) {
      throw new NetlinkFormatError(`${bytes.length - at} trailing bytes in an attribute list`);
    }
    const dv = view(bytes.subarray(at));
    const length = dv.getUint16(0, true);
    const type = dv.getUint16(2, true) & NLA_TYPE_MASK;
    if (length < NLA_HDR_BYTES || length > bytes.length - at) {
      throw new NetlinkFormatError(`attribute ${type} has length ${length}`);
    }
    out.push({ type, payload: bytes.subarray(at + NLA_HDR_BYTES, at + length) });
    at += align4(length);
  }
  return out;
}

export function parseGenlMessage(msg: NetlinkMessage): GenlMessage {
  if (msg.payload.length < GENL_HDR_BYTES) {
    throw new NetlinkFormatError(`generic netlink message of ${msg.payload.length} B`);
  }
  return {
    family: msg.type,
    cmd: msg.payload[0],
    version: msg.payload[1],
    attrs: parseAttrs(msg.payload.subarray(GENL_HDR_BYTES)),
  };
}

export function findAttr(attrs: readonly NetlinkAttr[], type: number): NetlinkAttr | undefined {
  return attrs.find((a) => a.type === type);
}

function fixedSize(a: NetlinkAttr, bytes: number): DataView {
  if (a.payload.length !== bytes) {
    throw new NetlinkFormatError(`attribute ${a.type}: ${a.payload.length} B, expected ${bytes}`);
  }
  return view(a.payload);
}

export const readAttr = {
  u8: (a: NetlinkAttr) => fixedSize(a, 1).getUint8(0),
  u16: (a: NetlinkAttr) => fixedSize(a, 2).getUint16(0, true),
  u32: (a: NetlinkAttr) => fixedSize(a, 4).getUint32(0, true),
  u64: (a: NetlinkAttr) => fixedSize(a, 8).getBigUint64(0, true),
  /** A string attribute up to its first NUL (or its end). */
  string: (a: NetlinkAttr) => {
    const nul = a.payload.indexOf(0);
    return new TextDecoder().decode(nul < 0 ? a.payload : a.payload.subarray(0, nul));
  },
  nested: (a: NetlinkAttr) => parseAttrs(a.payload),
};

/** errno (positive; 0 = ACK) and the extended-ACK message of an NLMSG_ERROR. */
export function parseNetlinkError(msg: NetlinkMessage): { errno: number; extack?: string } {
  if (msg.payload.length < 4) throw new NetlinkFormatError("truncated NLMSG_ERROR");
  const error = view(msg.payload).getInt32(0, true);
  if (error > 0 || error < -4095) throw new NetlinkFormatError(`error code ${error}`);
  let extack: string | undefined;
  if (msg.flags & NLM_F_ACK_TLVS) {
    // After the error code comes the request's header (and its payload unless CAPPED).
    if (msg.payload.length < 4 + NLMSG_HDR_BYTES) {
      throw new NetlinkFormatError("NLMSG_ERROR without the request header");
    }
    const requestLength = view(msg.payload).getUint32(4, true);
    const skip = 4 + (msg.flags & NLM_F_CAPPED ? NLMSG_HDR_BYTES : align4(requestLength));
    if (skip > msg.payload.length) throw new NetlinkFormatError("NLMSG_ERROR TLVs out of range");
    const tlvs = parseAttrs(msg.payload.subarray(skip));
    const text = findAttr(tlvs, NLMSGERR_ATTR_MSG);
    if (text) extack = readAttr.string(text);
  }
  return { errno: -error, extack };
}

/** Collected answer to one request: data messages so far, and whether the ACK came. */
export interface ReplyState {
  replies: GenlMessage[];
  acked: boolean;
}

/**
 * Feeds one recv() buffer into `state` for the request numbered `seq` of `family`. Messages for
 * other sequence numbers or types are ignored; an error code throws NetlinkError (`what` names
 * the request in its message).
 */
export function absorbReplies(
  buf: Uint8Array,
  family: number,
  seq: number,
  state: ReplyState,
  what: string,
): void {
  for (const msg of parseNetlinkMessages(buf)) {
    if (msg.seq !== seq >>> 0) continue;
    if (msg.type === NLMSG_ERROR) {
      const { errno: code, extack } = parseNetlinkError(msg);
      if (code !== 0) throw new NetlinkError(what, code, extack);
      state.acked = true;
    } else if (msg.type === NLMSG_DONE) {
      state.acked = true;
    } else if (msg.type === NLMSG_OVERRUN) {
      throw new NetlinkFormatError("NLMSG_OVERRUN");
    } else if (msg.type === family) {
      state.replies.push(parseGenlMessage(msg));
    }
  }
}

/** The family id in an nlctrl CTRL_CMD_NEWFAMILY reply. */
export function familyIdFromReplies(replies: readonly GenlMessage[], name: string): number {
  for (const reply of replies) {
    const id = findAttr(reply.attrs, CTRL_ATTR_FAMILY_ID);
    if (!id) continue;
    const value = readAttr.u16(id);
    if (value === 0) throw new NetlinkFormatError(`family "${name}" has id 0`);
    return value;
  }
  throw new NetlinkFormatError(`no FAMILY_ID for "${name}"`);
}
