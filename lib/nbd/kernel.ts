/**
 * Attaching and detaching kernel NBD devices through the generic netlink family "nbd"
 * (linux/nbd-netlink.h; ../shared/docs/formats.md §1 and kernel-notes.md). The ioctl fallback
 * for kernels without the family is in ./ioctl.ts; sysfs state and tuning in ./sysfs.ts.
 *
 * Flag choices (why):
 * - SERVER_FLAGS = READ_ONLY, plus CAN_MULTI_CONN with more than one socket (the kernel refuses
 *   several sockets without it; our server answers every connection from the same immutable
 *   source, so it is true). HAS_FLAGS is not needed by the kernel.
 * - CLIENT_FLAGS = 0. DISCONNECT_ON_CLOSE disconnects when the *last opener of /dev/nbdN*
 *   closes it (nbd_release), not when our netlink socket or process goes away. It would let
 *   any short-lived opener before the mount (udev/blkid probing the new disk, our own checks)
 *   tear the device down, and it buys nothing for crash recovery: the device must outlive a
 *   crashed server anyway (DEAD_CONN_TIMEOUT + RECONFIGURE). DESTROY_ON_DISCONNECT would delete
 *   the nbdN node after use, racing with reuse. So detaching is always an explicit DISCONNECT.
 * - The size is rounded UP to the block size: the kernel silently rounds it down, which would
 *   hide the image's tail (the server answers reads past the source with zeros).
 */
import { NbdError } from "../errors.ts";
import { closeFd, Errno } from "../../ffi/libc.ts";
import { connectUnix } from "../../ffi/io.ts";
import {
  attr,
  findAttr,
  type GenlMessage,
  NetlinkError,
  NetlinkFormatError,
  readAttr,
} from "./netlink.ts";
import { GenlSocket, resolveFamily } from "./genl_socket.ts";
import { nbdBackend, nbdModuleLoaded } from "./sysfs.ts";
import { NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_READ_ONLY } from "./protocol.ts";

// linux/nbd-netlink.h
export const NBD_GENL_FAMILY_NAME = "nbd";
export const NBD_GENL_VERSION = 1;
export const NBD_CMD_CONNECT = 1;
export const NBD_CMD_DISCONNECT = 2;
export const NBD_CMD_RECONFIGURE = 3;
export const NBD_CMD_LINK_DEAD = 4;
export const NBD_CMD_STATUS = 5;
export const NBD_ATTR_INDEX = 1;
export const NBD_ATTR_SIZE_BYTES = 2;
export const NBD_ATTR_BLOCK_SIZE_BYTES = 3;
export const NBD_ATTR_TIMEOUT = 4;
export const NBD_ATTR_SERVER_FLAGS = 5;
export const NBD_ATTR_CLIENT_FLAGS = 6;
export const NBD_ATTR_SOCKETS = 7;
export const NBD_ATTR_DEAD_CONN_TIMEOUT = 8;
export const NBD_ATTR_DEVICE_LIST = 9;
export const NBD_ATTR_BACKEND_IDENTIFIER = 10;
export const NBD_SOCK_ITEM = 1;
export const NBD_SOCK_FD = 1;
export const NBD_DEVICE_ITEM = 1;
export const NBD_DEVICE_INDEX = 1;
export const NBD_DEVICE_CONNECTED = 2;
// linux/nbd.h (the transmission flags, NBD_FLAG_*, are the protocol's: ./protocol.ts)
export const NBD_CFLAG_DESTROY_ON_DISCONNECT = 1 << 0;
export const NBD_CFLAG_DISCONNECT_ON_CLOSE = 1 << 1;

export const DEFAULT_BLOCK_SIZE_BYTES = 4096;

export const MODULE_MISSING_HINT = "run `modprobe nbd nbds_max=16`, or use `--backend fuse`";
const ROOT_HINT = "run as root: NBD CONNECT/RECONFIGURE/DISCONNECT need CAP_SYS_ADMIN";

/** The "nbd" generic netlink family is not registered (module missing or kernel too old). */
export class NbdFamilyMissingError extends NbdError {
  /** True when the module is loaded but has no netlink interface: the ioctl path may work. */
  readonly moduleLoaded: boolean;
  constructor(moduleLoaded: boolean) {
    super(
      moduleLoaded
        ? 'the nbd kernel module has no netlink interface (family "nbd" missing)'
        : "the nbd kernel module is not loaded",
      moduleLoaded ? "use a kernel ≥ 4.12, or use `--backend fuse`" : MODULE_MISSING_HINT,
    );
    this.moduleLoaded = moduleLoaded;
  }
}

/** Id of the "nbd" generic netlink family (nlctrl CTRL_CMD_GETFAMILY); it changes per boot. */
export function resolveNbdFamily(): number {
  const id = resolveFamily(NBD_GENL_FAMILY_NAME);
  if (id === undefined) throw new NbdFamilyMissingError(nbdModuleLoaded());
  return id;
}

export interface ConnectOptions {
  /** Export size; rounded up to the block size. */
  sizeBytes: number;
  /** Power of two, 512..4096 (kernel: ≤ page size). Default 4096. */
  blockSizeBytes?: number;
  /** Kernel ends of the connections (AF_UNIX stream sockets); the caller may close them after. */
  socketFds: number[];
  /** Request timeout (s); with several sockets a reply later than this kills that socket.
   * 0 = no timeout (the kernel still re-checks every 30 s). */
  timeoutS: number;
  /** How long I/O waits for a RECONFIGURE once every connection died, instead of failing. */
  deadConnTimeoutS: number;
  /** Shown at /sys/block/nbdN/backend; RECONFIGURE must repeat it exactly. */
  backendId: string;
  readOnly: true;
  /** A specific device; default: the kernel picks (or creates) a free one. */
  index?: number;
}

/** Size in bytes rounded up to a whole number of blocks. */
export function roundUpToBlock(sizeBytes: number, blockSizeBytes: number): number {
  return Math.ceil(sizeBytes / blockSizeBytes) * blockSizeBytes;
}

function validateConnect(opts: ConnectOptions): number {
  const block = opts.blockSizeBytes ?? DEFAULT_BLOCK_SIZE_BYTES;
  if (!Number.isInteger(block) || block < 512 || block > 4096 || (block & (block - 1)) !== 0) {
    throw new NbdError(`invalid NBD block size ${block}: must be a power of two from 512 to 4096`);
  }
  if (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes <= 0) {
    throw new NbdError(`invalid NBD device size ${opts.sizeBytes}: must be a positive integer`);
  }
  if (opts.socketFds.length === 0) throw new NbdError("NBD CONNECT needs at least one socket");
  for (const fd of opts.socketFds) {
    if (!Number.isInteger(fd) || fd < 0) throw new NbdError(`invalid socket fd ${fd}`);
  }
  for (
    const [name, value] of [["timeout", opts.timeoutS], [
      "dead-conn timeout",
      opts.deadConnTimeoutS,
    ]] as const
  ) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new NbdError(`invalid NBD ${name} ${value}`);
    }
  }
  if (opts.backendId.includes("\0")) throw new NbdError("backend identifier contains NUL");
  return block;
}

function socketsAttr(fds: readonly number[]): Uint8Array {
  return attr.nested(
    NBD_ATTR_SOCKETS,
    fds.map((fd) => attr.nested(NBD_SOCK_ITEM, [attr.u32(NBD_SOCK_FD, fd)])),
  );
}

/** SERVER_FLAGS for a read-only export on `connections` sockets. */
export function serverFlags(connections: number): number {
  return NBD_FLAG_READ_ONLY | (connections > 1 ? NBD_FLAG_CAN_MULTI_CONN : 0);
}

/** Attributes of NBD_CMD_CONNECT (validated; size rounded up). Exported for tests. */
export function connectAttrs(opts: ConnectOptions): Uint8Array[] {
  const block = validateConnect(opts);
  const attrs = [
    attr.u64(NBD_ATTR_SIZE_BYTES, roundUpToBlock(opts.sizeBytes, block)),
    attr.u64(NBD_ATTR_BLOCK_SIZE_BYTES, block),
    attr.u64(NBD_ATTR_SERVER_FLAGS, serverFlags(opts.socketFds.length)),
    attr.u64(NBD_ATTR_CLIENT_FLAGS, 0),
    attr.u64(NBD_ATTR_TIMEOUT, opts.timeoutS),
    attr.u64(NBD_ATTR_DEAD_CONN_TIMEOUT, opts.deadConnTimeoutS),
    attr.string(NBD_ATTR_BACKEND_IDENTIFIER, opts.backendId),
    socketsAttr(opts.socketFds),
  ];
  if (opts.index !== undefined) attrs.unshift(attr.u32(NBD_ATTR_INDEX, opts.index));
  return attrs;
}

/** Attributes of NBD_CMD_RECONFIGURE. Exported for tests. */
export function reconfigureAttrs(
  index: number,
  socketFds: readonly number[],
  backendId: string,
  timeoutS?: number,
): Uint8Array[] {
  if (socketFds.length === 0) throw new NbdError("NBD RECONFIGURE needs at least one socket");
  const attrs = [
    attr.u32(NBD_ATTR_INDEX, index),
    attr.string(NBD_ATTR_BACKEND_IDENTIFIER, backendId),
    socketsAttr(socketFds),
  ];
  if (timeoutS !== undefined) attrs.push(attr.u64(NBD_ATTR_TIMEOUT, timeoutS));
  return attrs;
}

/** INDEX from a CONNECT reply. */
export function indexFromConnectReplies(replies: readonly GenlMessage[]): number {
  for (const reply of replies) {
    const index = findAttr(reply.attrs, NBD_ATTR_INDEX);
    if (index) return readAttr.u32(index);
  }
  throw new NetlinkFormatError("NBD CONNECT reply without INDEX");
}

export interface NbdDeviceStatus {
  index: number;
  connected: boolean;
}

/** DEVICE_LIST of a STATUS reply. */
export function statusFromReplies(replies: readonly GenlMessage[]): NbdDeviceStatus[] {
  const out: NbdDeviceStatus[] = [];
  for (const reply of replies) {
    const list = findAttr(reply.attrs, NBD_ATTR_DEVICE_LIST);
    if (!list) continue;
    for (const item of readAttr.nested(list)) {
      if (item.type !== NBD_DEVICE_ITEM) continue;
      const fields = readAttr.nested(item);
      const index = findAttr(fields, NBD_DEVICE_INDEX);
      const connected = findAttr(fields, NBD_DEVICE_CONNECTED);
      if (!index || !connected) throw new NetlinkFormatError("NBD STATUS item without fields");
      out.push({ index: readAttr.u32(index), connected: readAttr.u8(connected) !== 0 });
    }
  }
  return out.sort((a, b) => a.index - b.index);
}

/** Turns a kernel error code into a message a user can act on. */
export function explainNbdError(
  e: unknown,
  command: "CONNECT" | "RECONFIGURE" | "DISCONNECT" | "STATUS",
  index?: number,
): unknown {
  if (!(e instanceof NetlinkError)) return e;
  const dev = index === undefined ? "an NBD device" : `nbd${index}`;
  switch (e.errno) {
    case Errno.EPERM:
    case Errno.EACCES:
      return new NbdError(`NBD ${command} of ${dev}: permission denied`, ROOT_HINT, { cause: e });
    case Errno.EBUSY:
      return new NbdError(
        `nbd${index ?? "?"} is already in use`,
        "pick another device, or detach it first",
        { cause: e },
      );
    case Errno.EBADF:
    case 88 /* ENOTSOCK */:
      return new NbdError(`NBD ${command}: a socket fd is not a valid socket`, undefined, {
        cause: e,
      });
    case Errno.EINVAL: {
      const reasons: Record<string, string> = {
        CONNECT:
          "the kernel refused the device configuration (size, block size not a power of two ≤ page size, " +
          "several sockets without CAN_MULTI_CONN, or a bad index)",
        RECONFIGURE:
          `${dev} is not connected, or the backend identifier differs from the one it was ` +
          `connected with (${index === undefined ? "?" : JSON.stringify(nbdBackend(index) ?? "")})`,
        DISCONNECT: `${dev} does not exist`,
        STATUS: "the kernel refused the request",
      };
      return new NbdError(
        `NBD ${command} of ${dev} failed: invalid argument`,
        `${reasons[command]}; see \`dmesg\``,
        {
          cause: e,
        },
      );
    }
  }
  return new NbdError(`NBD ${command} of ${dev}: ${e.message}`, undefined, { cause: e });
}

async function nbdRequest(
  cmd: number,
  attrs: Uint8Array[],
  command: "CONNECT" | "RECONFIGURE" | "DISCONNECT",
  index?: number,
): Promise<GenlMessage[]> {
  const family = resolveNbdFamily();
  const sock = GenlSocket.open();
  try {
    return await sock.request(
      { family, cmd, version: NBD_GENL_VERSION, attrs },
      `NBD ${command}${index === undefined ? "" : ` of nbd${index}`}`,
    );
  } catch (e) {
    throw explainNbdError(e, command, index);
  } finally {
    sock.close();
  }
}

/**
 * Connects a device to the given sockets (NBD_CMD_CONNECT) and returns its index. Be ready to
 * serve before calling: the kernel may read the partition table right after. Waiting for the
 * kernel does not block the event loop, so the server may run on this thread.
 */
export async function connectNbd(opts: ConnectOptions): Promise<number> {
  const attrs = connectAttrs(opts);
  const replies = await nbdRequest(NBD_CMD_CONNECT, attrs, "CONNECT", opts.index);
  return indexFromConnectReplies(replies);
}

/**
 * Replaces dead connections of a connected device with fresh sockets (crash recovery). The
 * backend identifier must be the one given at CONNECT. Sockets beyond the number of dead
 * connections are ignored by the kernel (it answers success either way).
 */
export async function reconfigureNbd(
  index: number,
  socketFds: number[],
  backendId: string,
  timeoutS?: number,
): Promise<void> {
  await nbdRequest(
    NBD_CMD_RECONFIGURE,
    reconfigureAttrs(index, socketFds, backendId, timeoutS),
    "RECONFIGURE",
    index,
  );
}

/**
 * Disconnects nbdN: the kernel sends NBD_CMD_DISC to the server and shuts the sockets. A device
 * that is still mounted stays busy (pid/backend remain) until the last opener closes it.
 */
export async function disconnectNbd(index: number): Promise<void> {
  await nbdRequest(NBD_CMD_DISCONNECT, [attr.u32(NBD_ATTR_INDEX, index)], "DISCONNECT", index);
}

/** Connected state of one device, or of all devices (NBD_CMD_STATUS). */
export function nbdStatus(index?: number): NbdDeviceStatus[] {
  const family = resolveNbdFamily();
  const sock = GenlSocket.open();
  try {
    const attrs = index === undefined ? [] : [attr.u32(NBD_ATTR_INDEX, index)];
    const replies = sock.requestSync(
      { family, cmd: NBD_CMD_STATUS, version: NBD_GENL_VERSION, attrs },
      "NBD STATUS",
    );
    return statusFromReplies(replies);
  } catch (e) {
    throw explainNbdError(e, "STATUS", index);
  } finally {
    sock.close();
  }
}

/**
 * `count` connected AF_UNIX stream socket pairs: `kernelFds[i]` (raw fds for CONNECT /
 * RECONFIGURE; close them once the kernel has them) and `conns[i]` (our server ends as normal
 * Deno.Conn). Uses a listening socket with a unique name in `dir`, removed before returning.
 */
export async function openKernelConnections(
  count: number,
  dir: string,
): Promise<{ kernelFds: number[]; conns: Deno.Conn[] }> {
  const path = `${dir}/nbd-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  const kernelFds: number[] = [];
  const conns: Deno.Conn[] = [];
  try {
    for (let i = 0; i < count; i++) {
      kernelFds.push(connectUnix(path));
      conns.push(await listener.accept());
    }
    return { kernelFds, conns };
  } catch (e) {
    kernelFds.forEach(closeFd);
    conns.forEach((c) => c.close());
    throw e;
  } finally {
    listener.close();
    try {
      Deno.removeSync(path);
    } catch { /* already gone */ }
  }
}

/** Closes the kernel ends after CONNECT/RECONFIGURE (the kernel holds its own references). */
export function closeKernelFds(fds: readonly number[]): void {
  for (const fd of fds) closeFd(fd);
}
