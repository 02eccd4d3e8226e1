/**
 * Generic netlink encoding/decoding for the kernel NBD client: exact byte layouts of requests,
 * decoding of well-formed and hostile replies, error explanations, and the parts that run
 * against the host kernel without the nbd module (nlctrl, unix socket pairs).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  absorbReplies,
  attr,
  CTRL_ATTR_FAMILY_ID,
  encodeGenlRequest,
  familyIdFromReplies,
  findAttr,
  GENL_ID_CTRL,
  NetlinkError,
  NetlinkFormatError,
  NLA_F_NESTED,
  NLM_F_ACK,
  NLM_F_ACK_TLVS,
  NLM_F_CAPPED,
  NLM_F_REQUEST,
  NLMSG_ERROR,
  NLMSG_OVERRUN,
  parseAttrs,
  parseNetlinkMessages,
  readAttr,
  type ReplyState,
} from "./netlink.ts";
import { GenlSocket, resolveFamily } from "./genl_socket.ts";
import {
  closeKernelFds,
  connectAttrs,
  type ConnectOptions,
  explainNbdError,
  indexFromConnectReplies,
  NBD_ATTR_BACKEND_IDENTIFIER,
  NBD_ATTR_BLOCK_SIZE_BYTES,
  NBD_ATTR_CLIENT_FLAGS,
  NBD_ATTR_DEAD_CONN_TIMEOUT,
  NBD_ATTR_DEVICE_LIST,
  NBD_ATTR_INDEX,
  NBD_ATTR_SERVER_FLAGS,
  NBD_ATTR_SIZE_BYTES,
  NBD_ATTR_SOCKETS,
  NBD_ATTR_TIMEOUT,
  NBD_CMD_CONNECT,
  NBD_DEVICE_CONNECTED,
  NBD_DEVICE_INDEX,
  NBD_DEVICE_ITEM,
  NBD_SOCK_FD,
  NBD_SOCK_ITEM,
  NbdFamilyMissingError,
  openKernelConnections,
  reconfigureAttrs,
  resolveNbdFamily,
  statusFromReplies,
} from "./kernel.ts";
import { listNbdDevices, nbdIndexOfBlockDevice, nbdModuleLoaded } from "./sysfs.ts";
import { NbdError } from "../errors.ts";
import { libc } from "../../ffi/libc.ts";

const assertEquals = (actual: unknown, expected: unknown, msg?: string) =>
  assert.deepEqual(actual, expected, msg);
const assertMatch = (actual: string, re: RegExp, msg?: string) => assert.match(actual, re, msg);
function assertInstanceOf(
  value: unknown,
  cls: abstract new (...args: never[]) => unknown,
  msg?: string,
) {
  assert.ok(value instanceof cls, msg ?? `expected ${cls.name}, got ${value}`);
}
/** Runs `fn`, expects it to throw (an instance of `cls` when given) and returns the error. */
function assertThrows<E = Error>(
  fn: () => unknown,
  cls?: abstract new (...args: never[]) => E,
): E {
  try {
    fn();
  } catch (e) {
    if (cls) assertInstanceOf(e, cls, `expected ${cls.name}, got ${e}`);
    return e as E;
  }
  throw new assert.AssertionError({ message: "expected an exception" });
}

const FAMILY = 33;
const SEQ = 0x1234;

// ------------------------------------------------------------------ helpers building replies

function hdr(length: number, type: number, flags: number, seq: number): Uint8Array {
  const b = new Uint8Array(16);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, length, true);
  dv.setUint16(4, type, true);
  dv.setUint16(6, flags, true);
  dv.setUint32(8, seq, true);
  dv.setUint32(12, 0, true);
  return b;
}

function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A generic netlink data message with the given attribute bytes. */
function dataMsg(type: number, seq: number, cmd: number, attrs: Uint8Array[]): Uint8Array {
  const body = cat(new Uint8Array([cmd, 1, 0, 0]), ...attrs);
  return cat(hdr(16 + body.length, type, 0, seq), body);
}

/** NLMSG_ERROR with `error` (negative errno or 0), capped (request header only). */
function errorMsg(seq: number, error: number, extack?: string): Uint8Array {
  const code = new Uint8Array(4);
  new DataView(code.buffer).setInt32(0, error, true);
  const request = hdr(36, FAMILY, NLM_F_REQUEST | NLM_F_ACK, seq);
  const tlvs = extack === undefined ? new Uint8Array(0) : attr.string(1, extack);
  const body = cat(code, request, tlvs);
  const flags = NLM_F_CAPPED | (extack === undefined ? 0 : NLM_F_ACK_TLVS);
  return cat(hdr(16 + body.length, NLMSG_ERROR, flags, seq), body);
}

function absorb(buf: Uint8Array, seq = SEQ): ReplyState {
  const state: ReplyState = { replies: [], acked: false };
  absorbReplies(buf, FAMILY, seq, state, "test request");
  return state;
}

const baseConnect: ConnectOptions = {
  sizeBytes: 1400832,
  socketFds: [7],
  timeoutS: 30,
  deadConnTimeoutS: 3600,
  backendId: "/run/erofs-oci/nbd/x",
  readOnly: true,
};

function decodeAttrList(bytes: Uint8Array[]): ReturnType<typeof parseAttrs> {
  return parseAttrs(cat(...bytes));
}

// ------------------------------------------------------------------ encoding

Deno.test("encodeGenlRequest: nlmsghdr + genlmsghdr + 4-aligned attributes, little-endian", () => {
  const msg = encodeGenlRequest({
    family: 0x21,
    cmd: 5,
    version: 1,
    seq: 0xdeadbeef,
    attrs: [attr.u32(1, 0x01020304), attr.string(10, "ab")],
  });
  // 16 + 4 + (4+4) + align4(4+3)=8
  assertEquals(msg.length, 36);
  assertEquals(
    [...msg.subarray(0, 20)],
    [36, 0, 0, 0, 0x21, 0, 5, 0, 0xef, 0xbe, 0xad, 0xde, 0, 0, 0, 0, 5, 1, 0, 0],
  );
  assertEquals([...msg.subarray(20, 28)], [8, 0, 1, 0, 4, 3, 2, 1]);
  // string: length counts the NUL (4+3), padding after it
  assertEquals([...msg.subarray(28, 36)], [7, 0, 10, 0, 0x61, 0x62, 0, 0]);
});

Deno.test("attr: u64 and nested encodings; out-of-range values are refused", () => {
  assertEquals([...attr.u64(2, 2n ** 40n + 5n)], [12, 0, 2, 0, 5, 0, 0, 0, 0, 1, 0, 0]);
  const nested = attr.nested(7, [attr.nested(1, [attr.u32(1, 9)])]);
  assertEquals([...nested], [16, 0, 7, 0, 12, 0, 1, 0, 8, 0, 1, 0, 9, 0, 0, 0]);
  assertThrows(() => attr.u32(1, 2 ** 32), RangeError);
  assertThrows(() => attr.u8(1, -1), RangeError);
  assertThrows(() => attr.u64(1, 2n ** 64n), RangeError);
});

Deno.test("connectAttrs: size rounded up, flags, timeouts, backend and one SOCK_ITEM per fd", () => {
  const attrs = decodeAttrList(connectAttrs({ ...baseConnect, sizeBytes: 1400832 - 100 }));
  const get = (t: number) => findAttr(attrs, t)!;
  assertEquals(readAttr.u64(get(NBD_ATTR_SIZE_BYTES)), 1400832n);
  assertEquals(readAttr.u64(get(NBD_ATTR_BLOCK_SIZE_BYTES)), 4096n);
  assertEquals(readAttr.u64(get(NBD_ATTR_SERVER_FLAGS)), 0x2n); // READ_ONLY only with 1 socket
  assertEquals(readAttr.u64(get(NBD_ATTR_CLIENT_FLAGS)), 0n);
  assertEquals(readAttr.u64(get(NBD_ATTR_TIMEOUT)), 30n);
  assertEquals(readAttr.u64(get(NBD_ATTR_DEAD_CONN_TIMEOUT)), 3600n);
  assertEquals(readAttr.string(get(NBD_ATTR_BACKEND_IDENTIFIER)), "/run/erofs-oci/nbd/x");
  assertEquals(get(NBD_ATTR_BACKEND_IDENTIFIER).payload.at(-1), 0, "NUL-terminated");
  assertEquals(findAttr(attrs, NBD_ATTR_INDEX), undefined);

  const multi = decodeAttrList(
    connectAttrs({ ...baseConnect, socketFds: [5, 6, 7, 8], index: 3, blockSizeBytes: 512 }),
  );
  assertEquals(readAttr.u32(findAttr(multi, NBD_ATTR_INDEX)!), 3);
  assertEquals(readAttr.u64(findAttr(multi, NBD_ATTR_SERVER_FLAGS)!), 0x102n);
  assertEquals(readAttr.u64(findAttr(multi, NBD_ATTR_SIZE_BYTES)!), 1400832n);
  const items = readAttr.nested(findAttr(multi, NBD_ATTR_SOCKETS)!);
  assertEquals(items.map((i) => i.type), [
    NBD_SOCK_ITEM,
    NBD_SOCK_ITEM,
    NBD_SOCK_ITEM,
    NBD_SOCK_ITEM,
  ]);
  assertEquals(items.map((i) => readAttr.u32(findAttr(readAttr.nested(i), NBD_SOCK_FD)!)), [
    5,
    6,
    7,
    8,
  ]);
});

Deno.test("connectAttrs: invalid settings fail before asking the kernel", () => {
  const bad: Partial<ConnectOptions>[] = [
    { sizeBytes: 0 },
    { sizeBytes: -4096 },
    { sizeBytes: 1.5 },
    { blockSizeBytes: 3000 },
    { blockSizeBytes: 8192 },
    { blockSizeBytes: 256 },
    { socketFds: [] },
    { socketFds: [-1] },
    { timeoutS: -1 },
    { backendId: "a\0b" },
  ];
  for (const change of bad) {
    const e = assertThrows(() => connectAttrs({ ...baseConnect, ...change }), NbdError);
    assertMatch(e.message, /invalid|needs at least one socket|NUL/, JSON.stringify(change));
  }
});

Deno.test("reconfigureAttrs: index, backend identifier, sockets, optional timeout", () => {
  const attrs = decodeAttrList(reconfigureAttrs(4, [10, 11], "id-1", 5));
  assertEquals(readAttr.u32(findAttr(attrs, NBD_ATTR_INDEX)!), 4);
  assertEquals(readAttr.string(findAttr(attrs, NBD_ATTR_BACKEND_IDENTIFIER)!), "id-1");
  assertEquals(readAttr.nested(findAttr(attrs, NBD_ATTR_SOCKETS)!).length, 2);
  assertEquals(readAttr.u64(findAttr(attrs, NBD_ATTR_TIMEOUT)!), 5n);
  assertEquals(
    findAttr(decodeAttrList(reconfigureAttrs(4, [10], "id")), NBD_ATTR_TIMEOUT),
    undefined,
  );
  assertThrows(() => reconfigureAttrs(4, [], "id"), NbdError);
});

// ------------------------------------------------------------------ decoding

Deno.test("CONNECT reply: data message then ACK gives the index", () => {
  const state = absorb(cat(
    dataMsg(FAMILY, SEQ, NBD_CMD_CONNECT, [attr.u32(NBD_ATTR_INDEX, 7)]),
    errorMsg(SEQ, 0),
  ));
  assert(state.acked);
  assertEquals(indexFromConnectReplies(state.replies), 7);
});

Deno.test("replies arriving in separate reads accumulate; other sequence numbers are ignored", () => {
  const state: ReplyState = { replies: [], acked: false };
  absorbReplies(
    cat(
      dataMsg(FAMILY, SEQ - 1, NBD_CMD_CONNECT, [attr.u32(NBD_ATTR_INDEX, 1)]),
      errorMsg(SEQ - 1, -22),
    ),
    FAMILY,
    SEQ,
    state,
    "x",
  );
  assertEquals(state, { replies: [], acked: false });
  absorbReplies(
    dataMsg(FAMILY, SEQ, NBD_CMD_CONNECT, [attr.u32(NBD_ATTR_INDEX, 2)]),
    FAMILY,
    SEQ,
    state,
    "x",
  );
  assert(!state.acked);
  absorbReplies(errorMsg(SEQ, 0), FAMILY, SEQ, state, "x");
  assert(state.acked);
  assertEquals(indexFromConnectReplies(state.replies), 2);
});

Deno.test("error replies become NetlinkError with errno and extended-ACK text", () => {
  const e = assertThrows(() => absorb(errorMsg(SEQ, -22)), NetlinkError);
  assertEquals(e.errno, 22);
  assertMatch(e.message, /^test request: /);
  const withText = assertThrows(
    () => absorb(errorMsg(SEQ, -1, "need CAP_SYS_ADMIN")),
    NetlinkError,
  );
  assertEquals(withText.errno, 1);
  assertEquals(withText.extack, "need CAP_SYS_ADMIN");
});

Deno.test("uncapped error replies: TLVs found after the echoed request", () => {
  const request = encodeGenlRequest({
    family: FAMILY,
    cmd: 1,
    version: 1,
    seq: SEQ,
    attrs: [attr.u32(1, 1)],
  });
  const code = new Uint8Array([0xea, 0xff, 0xff, 0xff]); // -22
  const body = cat(code, request, attr.string(1, "bad size"));
  const msg = cat(hdr(16 + body.length, NLMSG_ERROR, NLM_F_ACK_TLVS, SEQ), body);
  const e = assertThrows(() => absorb(msg), NetlinkError);
  assertEquals([e.errno, e.extack], [22, "bad size"]);
});

Deno.test("STATUS reply: device list decoded, NLA_F_NESTED tolerated, items sorted", () => {
  const item = (index: number, connected: number) =>
    attr.nested(NBD_DEVICE_ITEM, [
      attr.u32(NBD_DEVICE_INDEX, index),
      attr.u8(NBD_DEVICE_CONNECTED, connected),
    ]);
  const list = attr.nested(NBD_ATTR_DEVICE_LIST | NLA_F_NESTED, [item(3, 1), item(0, 0)]);
  const state = absorb(cat(dataMsg(FAMILY, SEQ, 5, [list]), errorMsg(SEQ, 0)));
  assertEquals(statusFromReplies(state.replies), [
    { index: 0, connected: false },
    { index: 3, connected: true },
  ]);
  assertEquals(statusFromReplies([{ family: FAMILY, cmd: 5, version: 1, attrs: [] }]), []);
});

Deno.test("nlctrl reply: FAMILY_ID read as u16", () => {
  const state = absorb(
    cat(
      dataMsg(GENL_ID_CTRL, SEQ, 1, [attr.string(2, "nbd"), attr.u16(CTRL_ATTR_FAMILY_ID, 32)]),
      errorMsg(SEQ, 0),
    ),
  );
  // FAMILY (33) differs from GENL_ID_CTRL: the data message is ignored by absorb...
  assertEquals(state.replies.length, 0);
  const ctrl: ReplyState = { replies: [], acked: false };
  absorbReplies(
    cat(
      dataMsg(GENL_ID_CTRL, SEQ, 1, [attr.string(2, "nbd"), attr.u16(CTRL_ATTR_FAMILY_ID, 32)]),
      errorMsg(SEQ, 0),
    ),
    GENL_ID_CTRL,
    SEQ,
    ctrl,
    "x",
  );
  assertEquals(familyIdFromReplies(ctrl.replies, "nbd"), 32);
});

Deno.test("parseNetlinkMessages: messages start at 4-aligned offsets", () => {
  const first = cat(hdr(18, FAMILY, 0, 1), new Uint8Array([9, 9]), new Uint8Array(2)); // padded
  const second = hdr(16, NLMSG_ERROR, 0, 2);
  const msgs = parseNetlinkMessages(cat(first, second));
  assertEquals(msgs.map((m) => [m.type, m.seq, m.payload.length]), [[FAMILY, 1, 2], [
    NLMSG_ERROR,
    2,
    0,
  ]]);
});

// Each hostile reply must be refused with a clear error, never read past its bytes or guessed.
const hostile: [string, () => unknown][] = [
  ["header cut short", () => absorb(hdr(16, NLMSG_ERROR, 0, SEQ).subarray(0, 10))],
  ["nlmsg_len < 16", () => absorb(cat(hdr(8, NLMSG_ERROR, 0, SEQ), new Uint8Array(8)))],
  ["nlmsg_len beyond the read", () => absorb(cat(hdr(64, NLMSG_ERROR, 0, SEQ), new Uint8Array(8)))],
  ["truncated NLMSG_ERROR", () => absorb(cat(hdr(18, NLMSG_ERROR, 0, SEQ), new Uint8Array(4)))],
  ["positive error code", () => absorb(errorMsg(SEQ, 5))],
  ["huge negative error code", () => absorb(errorMsg(SEQ, -100000))],
  ["ACK_TLVs without the request header", () => {
    const body = new Uint8Array(8);
    return absorb(cat(hdr(24, NLMSG_ERROR, NLM_F_ACK_TLVS, SEQ), body));
  }],
  ["NLMSG_OVERRUN", () => absorb(cat(hdr(16, NLMSG_OVERRUN, 0, SEQ)))],
  ["genl header missing", () => absorb(cat(hdr(18, FAMILY, 0, SEQ), new Uint8Array(4)))],
  [
    "attribute length < 4",
    () => absorb(cat(hdr(24, FAMILY, 0, SEQ), new Uint8Array([1, 1, 0, 0, 2, 0, 1, 0]))),
  ],
  [
    "attribute length past the message",
    () =>
      absorb(cat(hdr(28, FAMILY, 0, SEQ), new Uint8Array([1, 1, 0, 0, 40, 0, 1, 0, 0, 0, 0, 0]))),
  ],
  [
    "trailing bytes in an attribute list",
    () =>
      absorb(
        cat(
          hdr(26, FAMILY, 0, SEQ),
          new Uint8Array([1, 1, 0, 0, 8, 0, 1, 0, 0, 0]),
          new Uint8Array(2),
        ),
      ),
  ],
  [
    "INDEX of 2 bytes",
    () =>
      indexFromConnectReplies(
        absorb(cat(dataMsg(FAMILY, SEQ, 1, [attr.u16(NBD_ATTR_INDEX, 3)]), errorMsg(SEQ, 0)))
          .replies,
      ),
  ],
  [
    "CONNECT reply without INDEX",
    () =>
      indexFromConnectReplies(absorb(cat(dataMsg(FAMILY, SEQ, 1, []), errorMsg(SEQ, 0))).replies),
  ],
  ["CONNECT reply of another family", () =>
    indexFromConnectReplies(
      absorb(cat(dataMsg(FAMILY + 1, SEQ, 1, [attr.u32(NBD_ATTR_INDEX, 3)]), errorMsg(SEQ, 0)))
        .replies,
    )],
  ["STATUS item without CONNECTED", () =>
    statusFromReplies([{
      family: FAMILY,
      cmd: 5,
      version: 1,
      attrs: parseAttrs(
        attr.nested(NBD_ATTR_DEVICE_LIST, [
          attr.nested(NBD_DEVICE_ITEM, [attr.u32(NBD_DEVICE_INDEX, 1)]),
        ]),
      ),
    }])],
  ["STATUS list with a cut attribute", () =>
    statusFromReplies([{
      family: FAMILY,
      cmd: 5,
      version: 1,
      attrs: [{ type: NBD_ATTR_DEVICE_LIST, payload: new Uint8Array([12, 0, 1, 0, 8, 0]) }],
    }])],
  [
    "family id 0",
    () =>
      familyIdFromReplies(
        [{ family: 16, cmd: 1, version: 2, attrs: parseAttrs(attr.u16(1, 0)) }],
        "x",
      ),
  ],
  ["no FAMILY_ID", () => familyIdFromReplies([{ family: 16, cmd: 1, version: 2, attrs: [] }], "x")],
];

for (const [name, run] of hostile) {
  Deno.test(`hostile reply refused: ${name}`, () => {
    const e = assertThrows(run);
    assertInstanceOf(e, NbdError, `${name}: ${e}`);
    assert(e instanceof NetlinkFormatError, `${name}: expected NetlinkFormatError, got ${e}`);
  });
}

Deno.test("fuzz: any byte buffer either decodes or fails with NetlinkFormatError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), fc.boolean(), (bytes, withHeader) => {
      const buf = withHeader ? cat(hdr(16 + bytes.length, FAMILY, 0, SEQ), bytes) : bytes;
      try {
        const state = absorb(buf);
        statusFromReplies(state.replies);
        for (const r of state.replies) for (const a of r.attrs) readAttr.nested(a);
      } catch (e) {
        if (e instanceof NetlinkFormatError || e instanceof NetlinkError) return;
        throw e;
      }
    }),
    { numRuns: 3000 },
  );
});

Deno.test("fuzz: attribute lists round-trip through encode/parse", () => {
  const attrArb = fc.record({
    type: fc.integer({ min: 0, max: 0x3fff }),
    payload: fc.uint8Array({ maxLength: 40 }),
  });
  fc.assert(
    fc.property(fc.array(attrArb, { maxLength: 10 }), (list) => {
      const encoded = cat(...list.map((a) => attr.nested(a.type, [a.payload])));
      const parsed = parseAttrs(encoded);
      assertEquals(
        parsed.map((a) => [a.type, [...a.payload]]),
        list.map((a) => [a.type, [...a.payload]]),
      );
    }),
  );
});

// ------------------------------------------------------------------ errors explained

Deno.test("explainNbdError: EPERM → run as root; EINVAL → what the kernel checks + dmesg", () => {
  const eperm = explainNbdError(new NetlinkError("NBD CONNECT", 1), "CONNECT") as NbdError;
  assertInstanceOf(eperm, NbdError);
  assertMatch(eperm.hint ?? "", /root/);
  const einval = explainNbdError(new NetlinkError("NBD CONNECT", 22), "CONNECT") as NbdError;
  assertMatch(einval.message, /invalid argument/);
  assertMatch(einval.hint ?? "", /block size.*CAN_MULTI_CONN.*dmesg/s);
  const busy = explainNbdError(new NetlinkError("NBD CONNECT", 16), "CONNECT", 2) as NbdError;
  assertMatch(busy.message, /nbd2 is already in use/);
  const other = new Error("x");
  assertEquals(explainNbdError(other, "CONNECT"), other);
});

// ------------------------------------------------------------------ host kernel

Deno.test("resolveFamily against the host kernel: nlctrl is 16, an unknown family is undefined", () => {
  assertEquals(resolveFamily("nlctrl"), GENL_ID_CTRL);
  assertEquals(resolveFamily("nosuchfamily"), undefined);
  // GENL_NAMSIZ is 16 with the NUL: the kernel would answer EINVAL, we refuse first.
  assertThrows(() => resolveFamily("no-such-family-xyz"), RangeError);
});

Deno.test("GenlSocket: replies stay intact after the ACK is read (no aliasing of the recv buffer)", async () => {
  const sock = GenlSocket.open();
  try {
    const req = { family: GENL_ID_CTRL, cmd: 3, version: 2, attrs: [attr.string(2, "nlctrl")] };
    for (const replies of [sock.requestSync(req, "sync"), await sock.request(req, "async")]) {
      assertEquals(replies.length, 1);
      assertEquals(readAttr.string(findAttr(replies[0].attrs, 2)!), "nlctrl");
      assertEquals(readAttr.u16(findAttr(replies[0].attrs, CTRL_ATTR_FAMILY_ID)!), GENL_ID_CTRL);
    }
  } finally {
    sock.close();
  }
});

Deno.test({
  name:
    "resolveNbdFamily without the nbd module: 'not loaded' with the modprobe / --backend fuse hint",
  ignore: nbdModuleLoaded() || resolveFamily("nbd") !== undefined,
  fn() {
    const e = assertThrows(() => resolveNbdFamily(), NbdFamilyMissingError);
    assertEquals(e.message, "the nbd kernel module is not loaded");
    assertEquals(e.hint, "run `modprobe nbd nbds_max=16`, or use `--backend fuse`");
    assertEquals(listNbdDevices(), []);
  },
});

Deno.test("nbdIndexOfBlockDevice: non-nbd majors are not nbd devices", () => {
  assertEquals(nbdIndexOfBlockDevice(7, 0), undefined);
  assertEquals(nbdIndexOfBlockDevice(43, 1 << 19), undefined);
});

Deno.test("openKernelConnections: raw fds paired with Deno.Conn, socket file removed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { kernelFds, conns } = await openKernelConnections(3, dir);
    try {
      assertEquals(kernelFds.length, 3);
      assertEquals([...Deno.readDirSync(dir)], [], "listening socket unlinked");
      for (let i = 0; i < 3; i++) {
        const msg = new Uint8Array([i, 42]);
        assertEquals(Number(libc().write(kernelFds[i], msg, 2n)), 2);
        const got = new Uint8Array(2);
        assertEquals(await conns[i].read(got), 2);
        assertEquals([...got], [i, 42]);
      }
    } finally {
      closeKernelFds(kernelFds);
      for (const c of conns) {
        assertEquals(await c.read(new Uint8Array(1)), null, "EOF after the kernel end closes");
        c.close();
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
