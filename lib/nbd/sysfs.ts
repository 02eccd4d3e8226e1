/**
 * NBD device state and tuning through sysfs. Deno's file APIs refuse /sys without --allow-all,
 * so everything goes through libc (ffi/libc.ts readSmallFile/writeSmallFile/listDirectory).
 *
 * Attributes used (drivers/block/nbd.c, Documentation/ABI/testing/sysfs-block):
 * `/sys/block/nbdN/pid` exists only while a server is connected (removed when the last config
 * reference goes); `backend` only for netlink connects with BACKEND_IDENTIFIER; `size` is in
 * 512-byte sectors; `queue/max_sectors_kb`, `queue/read_ahead_kb` persist across connects.
 */
import { NbdError } from "../errors.ts";
import { SysError } from "../../ffi/libc.ts";
import { listDirectory, pathExists, readSmallFile, writeSmallFileAsync } from "../../ffi/files.ts";
import { Errno } from "../../ffi/libc.ts";

/** Block major of nbd (include/uapi/linux/major.h NBD_MAJOR). */
export const NBD_MAJOR = 43;

const SECTOR_BYTES = 512;

export function nbdSysfsDir(index: number): string {
  return `/sys/block/nbd${index}`;
}

export function nbdDevicePath(index: number): string {
  return `/dev/nbd${index}`;
}

function readTrimmed(path: string): string | undefined {
  const text = readSmallFile(path);
  return text === undefined ? undefined : text.trim();
}

/** True when the nbd module is loaded (or built in). */
export function nbdModuleLoaded(): boolean {
  return pathExists("/sys/module/nbd");
}

/** The module's nbds_max parameter (devices created at load), when readable. */
export function nbdsMax(): number | undefined {
  const text = readTrimmed("/sys/module/nbd/parameters/nbds_max");
  return text ? Number(text) : undefined;
}

/**
 * Id of the task that connected nbdN (task_pid_nr: a *thread* id, e.g. Deno's JS thread or the
 * pool thread running NBD_DO_IT; its Tgid in /proc/ID/status is the process), or undefined when
 * the device is not connected. Kept after RECONFIGURE: not a liveness signal.
 */
export function nbdPid(index: number): number | undefined {
  const text = readTrimmed(`${nbdSysfsDir(index)}/pid`);
  if (!text) return undefined;
  const pid = Number(text);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** BACKEND_IDENTIFIER given at CONNECT (netlink only), or undefined. */
export function nbdBackend(index: number): string | undefined {
  const text = readSmallFile(`${nbdSysfsDir(index)}/backend`);
  if (text === undefined) return undefined;
  const value = text.replace(/\n$/, "");
  return value === "" ? undefined : value;
}

/** Device size in bytes as the block layer sees it (0 when disconnected). */
export function nbdSizeBytes(index: number): number {
  const text = readTrimmed(`${nbdSysfsDir(index)}/size`);
  if (text === undefined) throw new NbdError(`nbd${index} does not exist`);
  return Number(text) * SECTOR_BYTES;
}

export interface NbdDeviceInfo {
  index: number;
  /** Connecting task (undefined = not connected). Not a liveness signal after RECONFIGURE. */
  pid?: number;
  backend?: string;
  sizeBytes: number;
}

/** Every nbdN in /sys/block, sorted by index. */
export function listNbdDevices(): NbdDeviceInfo[] {
  let names: string[];
  try {
    names = listDirectory("/sys/block");
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.ENOENT) return [];
    throw e;
  }
  const out: NbdDeviceInfo[] = [];
  for (const name of names) {
    const m = /^nbd(\d+)$/.exec(name);
    if (!m) continue;
    const index = Number(m[1]);
    try {
      out.push({
        index,
        pid: nbdPid(index),
        backend: nbdBackend(index),
        sizeBytes: nbdSizeBytes(index),
      });
    } catch {
      // The device vanished between readdir and the reads (DESTROY_ON_DISCONNECT): skip it.
    }
  }
  return out.sort((a, b) => a.index - b.index);
}

/** True when nbdN looks unused: no connected task and size 0. */
export function nbdDeviceFree(index: number): boolean {
  if (!pathExists(nbdSysfsDir(index))) return false;
  return nbdPid(index) === undefined && nbdSizeBytes(index) === 0;
}

/** The lowest-numbered free device that also has a /dev node, or undefined. */
export function findFreeNbdDevice(): number | undefined {
  return listNbdDevices().find((d) =>
    d.pid === undefined && d.sizeBytes === 0 && pathExists(nbdDevicePath(d.index))
  )?.index;
}

/**
 * nbd index of a block device number (e.g. `st_rdev` of a mount source, or mountinfo's
 * "43:32"), or undefined when it is not an nbd whole disk. Reads DEVNAME from
 * /sys/dev/block/MAJ:MIN/uevent rather than computing minor >> part_shift (module dependent).
 */
export function nbdIndexOfBlockDevice(major: number, minor: number): number | undefined {
  if (major !== NBD_MAJOR) return undefined;
  const uevent = readSmallFile(`/sys/dev/block/${major}:${minor}/uevent`);
  if (uevent === undefined) return undefined;
  const m = /^DEVNAME=nbd(\d+)$/m.exec(uevent);
  return m ? Number(m[1]) : undefined;
}

export interface QueueTuning {
  /** Largest request the block layer builds (capped at max_hw_sectors_kb). */
  maxSectorsKb: number;
  /** Readahead window; readahead requests grow up to it. */
  readAheadKb: number;
}

/**
 * Our defaults: 8 MiB requests, 4 MiB readahead (kernel default 128 KiB each). The I/O scheduler
 * stays the kernel's (mq-deadline on a new nbd device, whose requests kblockd then issues): set
 * to none after CONNECT it made no difference to a cold tar's per-request time in the TCG guest
 * (2.68 against 2.72 ms). Neither it nor rq_affinity 0 was behind the 10 s stalls seen then: those
 * were the receive workqueue's rescuer with several connections (lib/mount/exports.ts
 * NBD_CONNECTIONS).
 */
export const DEFAULT_QUEUE_TUNING: QueueTuning = { maxSectorsKb: 8192, readAheadKb: 4096 };

/**
 * Sets max_sectors_kb (clamped to max_hw_sectors_kb) and read_ahead_kb of nbdN. These persist
 * across DISCONNECT/CONNECT of a device, so call it on every attach. Returns what was applied.
 */
export async function tuneNbdQueue(
  index: number,
  tuning: QueueTuning = DEFAULT_QUEUE_TUNING,
): Promise<QueueTuning> {
  const queue = `${nbdSysfsDir(index)}/queue`;
  const hw = Number(readTrimmed(`${queue}/max_hw_sectors_kb`) ?? NaN);
  if (!Number.isFinite(hw)) throw new NbdError(`nbd${index} has no queue in sysfs`);
  const applied = {
    maxSectorsKb: Math.max(4, Math.min(Math.floor(tuning.maxSectorsKb), hw)),
    readAheadKb: Math.max(0, Math.floor(tuning.readAheadKb)),
  };
  try {
    // On a pool thread: the write may wait for requests that this process answers.
    await writeSmallFileAsync(`${queue}/max_sectors_kb`, `${applied.maxSectorsKb}\n`);
    await writeSmallFileAsync(`${queue}/read_ahead_kb`, `${applied.readAheadKb}\n`);
  } catch (e) {
    if (e instanceof SysError && (e.errno === Errno.EACCES || e.errno === Errno.EPERM)) {
      throw new NbdError(`cannot tune nbd${index}: ${e.message}`, "run as root");
    }
    throw e;
  }
  return applied;
}

/** Current queue settings of nbdN. */
export function nbdQueueTuning(index: number): QueueTuning {
  const queue = `${nbdSysfsDir(index)}/queue`;
  return {
    maxSectorsKb: Number(readTrimmed(`${queue}/max_sectors_kb`)),
    readAheadKb: Number(readTrimmed(`${queue}/read_ahead_kb`)),
  };
}
