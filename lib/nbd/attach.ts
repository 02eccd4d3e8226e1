/**
 * One call for mount orchestration: connect a device through netlink, or through ioctls (with a
 * warning) when the module has no netlink family, then tune its queue.
 */
import { warn } from "../log.ts";
import { waitAtMost } from "../timers.ts";
import { attachNbdIoctl } from "./ioctl.ts";
import { connectNbd, type ConnectOptions, disconnectNbd, NbdFamilyMissingError } from "./kernel.ts";
import { DEFAULT_QUEUE_TUNING, nbdDevicePath, type QueueTuning, tuneNbdQueue } from "./sysfs.ts";
import { closeFd } from "../../ffi/libc.ts";
import { openReadOnlyAsync, pathExists } from "../../ffi/files.ts";

export interface NbdAttachment {
  index: number;
  /** "ioctl" devices die with this process and cannot be reconfigured. */
  mode: "netlink" | "ioctl";
  /** DISCONNECT (netlink) or NBD_DISCONNECT + wait for NBD_DO_IT (ioctl). */
  detach(): Promise<void>;
}

export interface AttachOptions extends ConnectOptions {
  /** Queue settings applied after connecting (they persist across connects: always set). */
  tuning?: QueueTuning;
  /**
   * Settles when the pages the partition scan reads are pinned: the scan waits for it (at most
   * SCAN_WAIT_MS) so that the reader thread answers it, with no fetch of the layer's head.
   */
  headPinned?: Promise<unknown>;
  /** Told each step's name when it ends (CONNECT, queue tuning, head wait, partition scan). */
  onStep?: (step: string) => void;
}

/** How long the partition scan waits for `headPinned` (a mount's ready waits as long). */
const SCAN_WAIT_MS = 10_000;

export async function attachNbd(opts: AttachOptions): Promise<NbdAttachment> {
  const step = opts.onStep ?? (() => {});
  let attachment: NbdAttachment;
  try {
    const index = await connectNbd(opts);
    attachment = { index, mode: "netlink", detach: () => disconnectNbd(index) };
  } catch (e) {
    if (
      !(e instanceof NbdFamilyMissingError) || !e.moduleLoaded ||
      !pathExists(nbdDevicePath(opts.index ?? 0))
    ) {
      throw e;
    }
    warn(
      "the nbd module has no netlink interface: using ioctls (no crash recovery for this mount)",
    );
    const ioctl = await attachNbdIoctl(opts);
    attachment = { index: ioctl.index, mode: "ioctl", detach: () => ioctl.detach() };
  }
  step("CONNECT");
  try {
    await tuneNbdQueue(attachment.index, opts.tuning ?? DEFAULT_QUEUE_TUNING);
  } catch (e) {
    warn(
      `nbd${attachment.index}: queue tuning failed, reads use the kernel defaults: ${
        (e as Error).message
      }`,
    );
  }
  step("queue tuning");
  if (opts.headPinned) {
    await waitAtMost(opts.headPinned, SCAN_WAIT_MS);
    step("head pinned");
  }
  await scanPartitionsNow(attachment.index);
  step("partition scan");
  return attachment;
}

/**
 * Opens and closes the new device once, on a pool thread: its first open after CONNECT reads the
 * partition table through this process (/work/shared/docs/kernel-notes.md; 4 KiB pages 0, 1 and
 * 3), so it happens here, while the mount's metadata still loads, and not in the mount(2) that
 * follows ready: that mount(2) then reads pinned pages only (VM bench: 0.05-0.08 s, was
 * 0.15-0.35 s). The scan there twice waited the 10 s NBD timeout on the VM's first mount (dmesg
 * "Connection timed out, retrying"): the receive workqueue's rescuer with several connections
 * (lib/mount/exports.ts NBD_CONNECTIONS), not the scan. Never throws: a failed open leaves the
 * scan to the next opener, as before.
 */
export async function scanPartitionsNow(index: number): Promise<void> {
  try {
    const fd = await openReadOnlyAsync(nbdDevicePath(index));
    if (fd >= 0) closeFd(fd);
  } catch { /* the next opener scans */ }
}
