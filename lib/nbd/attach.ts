/**
 * One call for mount orchestration: connect a device through netlink, or through ioctls (with a
 * warning) when the module has no netlink family, then tune its queue.
 */
import { warn } from "../log.ts";
import { attachNbdIoctl } from "./ioctl.ts";
import { connectNbd, type ConnectOptions, disconnectNbd, NbdFamilyMissingError } from "./kernel.ts";
import { DEFAULT_QUEUE_TUNING, nbdDevicePath, type QueueTuning, tuneNbdQueue } from "./sysfs.ts";
import { pathExists } from "../../ffi/libc.ts";

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
}

export async function attachNbd(opts: AttachOptions): Promise<NbdAttachment> {
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
  try {
    await tuneNbdQueue(attachment.index, opts.tuning ?? DEFAULT_QUEUE_TUNING);
  } catch (e) {
    warn(
      `nbd${attachment.index}: queue tuning failed, reads use the kernel defaults: ${
        (e as Error).message
      }`,
    );
  }
  return attachment;
}
