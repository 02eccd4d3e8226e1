/**
 * The old ioctl interface of /dev/nbdN (linux/nbd.h, ../shared/docs/formats.md §1), for kernels
 * whose nbd module has no generic netlink family. Its limits: NBD_DO_IT blocks for the device's whole life
 * on one of Deno's pool threads, so the device dies with this process; a crashed server cannot
 * be replaced (no RECONFIGURE); no backend identifier in sysfs. Prefer ./kernel.ts.
 */
import { NbdError } from "../errors.ts";
import { closeFd, Errno, libc, O_RDWR, SysError, unwrap } from "../../ffi/libc.ts";
import { openFile } from "../../ffi/files.ts";
import {
  DEFAULT_BLOCK_SIZE_BYTES,
  MODULE_MISSING_HINT,
  roundUpToBlock,
  serverFlags,
} from "./kernel.ts";
import { findFreeNbdDevice, nbdDevicePath, nbdModuleLoaded, nbdPid, nbdsMax } from "./sysfs.ts";
import { after, sleep } from "../timers.ts";

// linux/nbd.h: _IO(0xab, n)
export const NBD_SET_SOCK = 0xab00;
export const NBD_SET_BLKSIZE = 0xab01;
export const NBD_DO_IT = 0xab03;
export const NBD_CLEAR_SOCK = 0xab04;
export const NBD_SET_SIZE_BLOCKS = 0xab07;
export const NBD_DISCONNECT = 0xab08;
export const NBD_SET_TIMEOUT = 0xab09;
export const NBD_SET_FLAGS = 0xab0a;

export interface IoctlAttachOptions {
  sizeBytes: number;
  blockSizeBytes?: number;
  /** Kernel ends of the connections; the caller may close them once this resolves. */
  socketFds: number[];
  timeoutS: number;
  readOnly: true;
  /** A specific device; default: the first free one (no pid, size 0). */
  index?: number;
}

export interface IoctlAttachment {
  index: number;
  /** Settles when NBD_DO_IT returns (device disconnected); resolves to its return value. */
  readonly running: Promise<number>;
  /** NBD_DISCONNECT, wait for NBD_DO_IT (forcing with CLEAR_SOCK after `graceMs`), close. */
  detach(graceMs?: number): Promise<void>;
}

const ioctlNames: Record<number, string> = {
  [NBD_SET_SOCK]: "NBD_SET_SOCK",
  [NBD_SET_BLKSIZE]: "NBD_SET_BLKSIZE",
  [NBD_CLEAR_SOCK]: "NBD_CLEAR_SOCK",
  [NBD_SET_SIZE_BLOCKS]: "NBD_SET_SIZE_BLOCKS",
  [NBD_DISCONNECT]: "NBD_DISCONNECT",
  [NBD_SET_TIMEOUT]: "NBD_SET_TIMEOUT",
  [NBD_SET_FLAGS]: "NBD_SET_FLAGS",
};

function nbdIoctl(fd: number, request: number, arg: number, index: number): void {
  unwrap(
    libc().ioctl(fd, BigInt(request), BigInt(arg)),
    ioctlNames[request] ?? "ioctl",
    `nbd${index}`,
  );
}

function openDevice(index: number): number {
  try {
    return openFile(nbdDevicePath(index), O_RDWR);
  } catch (e) {
    if (e instanceof SysError && (e.errno === Errno.EACCES || e.errno === Errno.EPERM)) {
      throw new NbdError(`cannot open ${nbdDevicePath(index)}: permission denied`, "run as root");
    }
    if (e instanceof SysError && (e.errno === Errno.ENOENT || e.errno === Errno.ENXIO)) {
      throw new NbdError(
        `${nbdDevicePath(index)} does not exist`,
        nbdModuleLoaded() ? undefined : MODULE_MISSING_HINT,
      );
    }
    throw e;
  }
}

/**
 * Attaches a device with ioctls: SET_BLKSIZE, SET_SIZE_BLOCKS, SET_TIMEOUT, SET_FLAGS, SET_SOCK
 * per connection, then NBD_DO_IT on a pool thread. Resolves once the kernel shows the device
 * connected (its pid in sysfs).
 */
export async function attachNbdIoctl(opts: IoctlAttachOptions): Promise<IoctlAttachment> {
  const block = opts.blockSizeBytes ?? DEFAULT_BLOCK_SIZE_BYTES;
  if (opts.socketFds.length === 0) throw new NbdError("NBD needs at least one socket");
  if (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes <= 0) {
    throw new NbdError(`invalid NBD device size ${opts.sizeBytes}: must be a positive integer`);
  }
  const index = opts.index ?? findFreeNbdDevice();
  if (index === undefined) {
    if (!nbdModuleLoaded()) {
      throw new NbdError("the nbd kernel module is not loaded", MODULE_MISSING_HINT);
    }
    const max = nbdsMax();
    throw new NbdError(
      "no free NBD device",
      `detach one, or reload the module with more devices: \`modprobe -r nbd && modprobe nbd nbds_max=${
        Math.max(16, (max ?? 16) * 2)
      }\``,
    );
  }
  const fd = openDevice(index);
  try {
    nbdIoctl(fd, NBD_SET_BLKSIZE, block, index);
    nbdIoctl(fd, NBD_SET_SIZE_BLOCKS, roundUpToBlock(opts.sizeBytes, block) / block, index);
    nbdIoctl(fd, NBD_SET_TIMEOUT, opts.timeoutS, index);
    nbdIoctl(fd, NBD_SET_FLAGS, serverFlags(opts.socketFds.length), index);
    for (const sock of opts.socketFds) nbdIoctl(fd, NBD_SET_SOCK, sock, index);
  } catch (e) {
    libc().ioctl(fd, BigInt(NBD_CLEAR_SOCK), 0n);
    closeFd(fd);
    if (e instanceof SysError && e.errno === Errno.EBUSY) {
      throw new NbdError(
        `nbd${index} is already in use`,
        "pick another device, or detach it first",
      );
    }
    if (e instanceof SysError && e.errno === Errno.EINVAL) {
      throw new NbdError(`nbd${index} refused the configuration: ${e.message}`, "see `dmesg`");
    }
    throw e;
  }

  let settled = false;
  // errno of a nonblocking call is not readable (other thread): the kernel log has the reason.
  const running = libc().ioctl_nonblocking(fd, BigInt(NBD_DO_IT), 0n).finally(() => {
    settled = true;
    libc().ioctl(fd, BigInt(NBD_CLEAR_SOCK), 0n);
    closeFd(fd);
  });

  for (let waitedMs = 0; nbdPid(index) === undefined; waitedMs += 10) {
    if (settled) {
      throw new NbdError(
        `NBD_DO_IT on nbd${index} failed (returned ${await running})`,
        "see `dmesg`",
      );
    }
    if (waitedMs > 10_000) {
      libc().ioctl(fd, BigInt(NBD_CLEAR_SOCK), 0n);
      await running;
      throw new NbdError(`nbd${index} did not come up within 10 s`, "see `dmesg`");
    }
    await sleep(10);
  }

  return {
    index,
    running,
    async detach(graceMs = 5000) {
      if (settled) return;
      libc().ioctl(fd, BigInt(NBD_DISCONNECT), 0n);
      // The kernel waits for the server to close after NBD_CMD_DISC; force it if it does not.
      const timer = after(graceMs, () => {
        if (!settled) libc().ioctl(fd, BigInt(NBD_CLEAR_SOCK), 0n);
      });
      try {
        await running;
      } finally {
        timer.cancel();
      }
    },
  };
}
