/**
 * A NETLINK_GENERIC socket that sends one request at a time and collects the replies up to its
 * ACK (sync or without blocking the event loop), and nlctrl family resolution. Encoding and
 * decoding are in ./netlink.ts.
 */
import { NbdError } from "../errors.ts";
import { closeFd, Errno, errno, libc, SysError, unwrap } from "../../ffi/libc.ts";
import { AF_NETLINK, pollFds, POLLIN, SOCK_CLOEXEC, SOCK_RAW } from "../../ffi/io.ts";
import {
  absorbReplies,
  attr,
  CTRL_ATTR_FAMILY_NAME,
  CTRL_CMD_GETFAMILY,
  CTRL_VERSION,
  encodeGenlRequest,
  familyIdFromReplies,
  GENL_ID_CTRL,
  type GenlMessage,
  type GenlRequest,
  NETLINK_GENERIC,
  NetlinkError,
  NetlinkFormatError,
  type ReplyState,
} from "./netlink.ts";
import { sleep } from "../timers.ts";

// linux/netlink.h, linux/socket.h, asm-generic/poll.h
const SOL_NETLINK = 270;
const NETLINK_CAP_ACK = 10;
const NETLINK_EXT_ACK = 11;
const MSG_DONTWAIT = 0x40;
const MSG_TRUNC = 0x20;
const SOCK_NONBLOCK = 0o4000;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

const DEFAULT_TIMEOUT_MS = 30_000;
const RECV_BUFFER_BYTES = 1 << 16;

/** A NETLINK_GENERIC socket issuing one request at a time and waiting for its ACK. */
export class GenlSocket {
  readonly fd: number;
  #seq = Math.floor(Math.random() * 0x7fffffff);
  #recvBuffer = new Uint8Array(RECV_BUFFER_BYTES);

  private constructor(fd: number) {
    this.fd = fd;
  }

  static open(): GenlSocket {
    const fd = unwrap(
      libc().socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_GENERIC),
      "socket",
      "AF_NETLINK",
    );
    const one = new Uint8Array(new Int32Array([1]).buffer);
    // Best effort: shorter ACKs, and the kernel's reason text when it has one.
    libc().setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, one, 4);
    libc().setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, one, 4);
    return new GenlSocket(fd);
  }

  close(): void {
    closeFd(this.fd);
  }

  /** Sends a request and waits (blocking this thread) for its ACK. For instant requests. */
  requestSync(
    req: Omit<GenlRequest, "seq">,
    what: string,
    timeoutMs = DEFAULT_TIMEOUT_MS,
  ): GenlMessage[] {
    const { seq, state, deadline } = this.#send(req, timeoutMs);
    while (!this.#receive(req.family, seq, state, what)) {
      const left = deadline - Date.now();
      if (left <= 0) throw this.#timeout(what, timeoutMs);
      const n = libc().poll(pollFds([this.fd], POLLIN), 1n, Math.min(left, 1000));
      if (n < 0 && errno() !== Errno.EINTR) throw new SysError("poll", errno(), "netlink");
    }
    return state.replies;
  }

  /**
   * Sends a request and waits for its ACK without blocking the event loop, so a server running
   * on this thread keeps answering the kernel meanwhile.
   */
  async request(
    req: Omit<GenlRequest, "seq">,
    what: string,
    timeoutMs = DEFAULT_TIMEOUT_MS,
  ): Promise<GenlMessage[]> {
    const { seq, state, deadline } = this.#send(req, timeoutMs);
    let pauseMs = 1;
    while (!this.#receive(req.family, seq, state, what)) {
      if (Date.now() >= deadline) throw this.#timeout(what, timeoutMs);
      await sleep(pauseMs);
      pauseMs = Math.min(pauseMs * 2, 20);
    }
    return state.replies;
  }

  #send(req: Omit<GenlRequest, "seq">, timeoutMs: number) {
    const seq = this.#seq = (this.#seq + 1) >>> 0;
    const message = encodeGenlRequest({ ...req, seq });
    const kernel = new Uint8Array(12);
    view(kernel).setUint16(0, AF_NETLINK, true); // sockaddr_nl: pid 0 = the kernel
    for (;;) {
      const n = Number(libc().sendto(this.fd, message, BigInt(message.length), 0, kernel, 12));
      if (n >= 0) break;
      const code = errno();
      if (code !== Errno.EINTR) throw new SysError("sendto", code, "netlink");
    }
    const state: ReplyState = { replies: [], acked: false };
    return { seq, state, deadline: Date.now() + timeoutMs };
  }

  /** Reads whatever is queued; true once the request is acknowledged. */
  #receive(family: number, seq: number, state: ReplyState, what: string): boolean {
    for (;;) {
      const buf = this.#recvBuffer;
      const n = Number(
        libc().recv(this.fd, buf, BigInt(buf.length), MSG_DONTWAIT | MSG_TRUNC),
      );
      if (n < 0) {
        const code = errno();
        if (code === Errno.EINTR) continue;
        if (code === Errno.EAGAIN) return state.acked;
        throw new SysError("recv", code, "netlink");
      }
      if (n > buf.length) throw new NetlinkFormatError(`${n} B message exceeds the buffer`);
      // A copy: the parsed replies keep views into it while the buffer takes the next read.
      absorbReplies(buf.slice(0, n), family, seq, state, what);
      if (state.acked) return true;
    }
  }

  #timeout(what: string, timeoutMs: number): NbdError {
    return new NbdError(`${what}: no answer from the kernel within ${timeoutMs / 1000} s`);
  }
}

/**
 * Id of a generic netlink family (CTRL_CMD_GETFAMILY), or undefined when no such family is
 * registered (the kernel answers ENOENT).
 */
export function resolveFamily(name: string, socket?: GenlSocket): number | undefined {
  // GENL_NAMSIZ = 16 including the NUL; longer names fail the kernel's policy (EINVAL).
  if (new TextEncoder().encode(name).length > 15) {
    throw new RangeError(`family name too long: ${name}`);
  }
  const sock = socket ?? GenlSocket.open();
  try {
    const replies = sock.requestSync({
      family: GENL_ID_CTRL,
      cmd: CTRL_CMD_GETFAMILY,
      version: CTRL_VERSION,
      attrs: [attr.string(CTRL_ATTR_FAMILY_NAME, name)],
    }, `resolving generic netlink family "${name}"`);
    return familyIdFromReplies(replies, name);
  } catch (e) {
    if (e instanceof NetlinkError && e.errno === Errno.ENOENT) return undefined;
    throw e;
  } finally {
    if (!socket) sock.close();
  }
}
