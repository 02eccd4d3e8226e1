/**
 * overlayfs composition of layer mounts. `lowerDirsTopFirst` is in overlayfs order (leftmost
 * = top layer), the reverse of an OCI manifest's layer list.
 */
import { MountError } from "../errors.ts";
import { MS_RDONLY, SysError } from "../../ffi/libc.ts";
import { mountOffThread } from "./mount_task.ts";

export interface OverlayOptions {
  /** Writable overlay: upper and work dir (same file system). Read-only without them. */
  upper?: string;
  work?: string;
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
    target,
    fsType: "overlay",
    flags: writable ? 0 : MS_RDONLY,
    data,
  });
  if (result.errno !== 0) {
    const cause = new SysError("mount", result.errno, `overlay on ${target}`);
    throw new MountError(`cannot mount the overlay on ${target}: ${cause.message}`, undefined, {
      cause,
    });
  }
}
