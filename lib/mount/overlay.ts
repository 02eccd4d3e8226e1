/**
 * overlayfs composition of layer mounts. `lowerDirsTopFirst` is in overlayfs order (leftmost
 * = top layer), the reverse of an OCI manifest's layer list.
 */
import { MountError } from "../errors.ts";
import { SysError } from "../../ffi/libc.ts";
import { MS_NODEV, MS_NOSUID, MS_RDONLY } from "../../ffi/mount.ts";
import { mountOffThread } from "../sys/mount_task.ts";

export interface OverlayOptions {
  /** Writable overlay: upper and work dir (same file system). Read-only without them. */
  upper?: string;
  work?: string;
  /** mount(2) flags besides read-only (MS_NOSUID, MS_NODEV; see mount_options.ts). */
  flags?: number;
  /** What mount(2) is given instead of `target` (a pinned /proc/self/fd path). */
  mountAt?: string;
}

export async function mountOverlay(
  target: string,
  lowerDirsTopFirst: string[],
  options: OverlayOptions = {},
): Promise<void> {
  for (const dir of [...lowerDirsTopFirst, options.upper ?? "", options.work ?? ""]) {
    // overlayfs options are separated by "," and lowerdir entries by ":"; no escaping exists.
    if (/[,:]/.test(dir)) throw new MountError(`cannot use a path containing ',' or ':': ${dir}`);
  }
  const writable = options.upper !== undefined && options.work !== undefined;
  if (lowerDirsTopFirst.length < (writable ? 1 : 2)) {
    throw new MountError("a read-only overlay needs at least two layers");
  }
  let data = `lowerdir=${lowerDirsTopFirst.join(":")}`;
  if (writable) data += `,upperdir=${options.upper},workdir=${options.work}`;
  const result = await mountOffThread({
    source: "erofs-oci",
    target: options.mountAt ?? target,
    fsType: "overlay",
    flags: (options.flags ?? MS_NOSUID | MS_NODEV) | (writable ? 0 : MS_RDONLY),
    data,
  });
  if (result.errno !== 0) {
    const cause = new SysError("mount", result.errno, `overlay on ${target}`);
    throw new MountError(`cannot mount the overlay on ${target}: ${cause.message}`, undefined, {
      cause,
    });
  }
}
