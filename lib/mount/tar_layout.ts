/**
 * How a tar layer sits on its device. "512": [tar-index meta][tar] exactly as `mount.erofs`
 * serves it (512-byte EROFS blocks, Linux 6.4 and later only). "4k": the same meta re-laid out
 * with 4 KiB blocks, each file's data from a 4 KiB boundary of a virtual data area
 * (lib/gzip/aligned_tar.ts), for the kernels before 6.4 (Debian 12, Ubuntu 22.04: 6.1, 5.15).
 * `auto` (the default) takes 512 where the kernel can mount it, so such a device stays one
 * `mount.erofs --reattach` can take over; EROFS_OCI_TAR_LAYOUT=4k forces the other (tests).
 */
import { FormatError, MountError, UsageError } from "../errors.ts";
import { HybridTarSource, type TarBytes, tarIndexLayout } from "../gzip/hybrid_tar.ts";
import { type TarMeta, tarMetaBytes } from "../gzip/tar_meta_file.ts";
import { AlignedTarSource, alignTarIndex } from "../gzip/aligned_tar.ts";
import type { Source } from "../source/source.ts";

export type TarDeviceLayout = "512" | "4k";

/** Environment variable choosing the layout: auto (default), 512 or 4k. */
export const TAR_LAYOUT_ENV = "EROFS_OCI_TAR_LAYOUT";

/**
 * True when the kernel mounts EROFS blocks smaller than a page: Linux 6.4 ("erofs: set block
 * size to the on-disk block size"); older kernels answer EINVAL. An unreadable release counts
 * as new (the mount then says what the kernel thinks).
 */
export function kernelHasSubpageBlocks(release = kernelRelease()): boolean {
  const match = /^(\d+)\.(\d+)/.exec(release);
  if (!match) return true;
  const [major, minor] = [Number(match[1]), Number(match[2])];
  return major > 6 || (major === 6 && minor >= 4);
}

export function kernelRelease(): string {
  // Not /proc/sys/kernel/osrelease: Deno refuses /proc paths without --allow-all.
  try {
    return Deno.osRelease();
  } catch {
    return "";
  }
}

/** The layout a new mount of a tar layer gets on this kernel. */
export function chooseTarDeviceLayout(
  release = kernelRelease(),
  wanted = Deno.env.get(TAR_LAYOUT_ENV) ?? "auto",
): TarDeviceLayout {
  if (wanted === "4k") return "4k";
  if (wanted === "512") {
    if (!kernelHasSubpageBlocks(release)) {
      throw new MountError(
        `kernel ${release} cannot mount tar layers with ${TAR_LAYOUT_ENV}=512: EROFS takes ` +
          "512-byte blocks from Linux 6.4 on",
        `unset ${TAR_LAYOUT_ENV} (the 4 KiB layout works on any kernel)`,
      );
    }
    return "512";
  }
  if (wanted !== "auto" && wanted !== "") {
    throw new UsageError(`${TAR_LAYOUT_ENV}=${wanted}: use auto, 512 or 4k`);
  }
  return kernelHasSubpageBlocks(release) ? "512" : "4k";
}

/** A tar layer's device, closing `tar` with it. */
export type TarDevice = Source & {
  readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
  close(): Promise<void>;
};

/**
 * The device of tar-index image `meta` over `tar` in `layout`. FormatError when the meta is
 * malformed or refers past `tarLimitBytes` (a plain tar's size, an index record's tar size).
 */
export async function tarDevice(
  layout: TarDeviceLayout,
  meta: TarMeta,
  tar: TarBytes,
  tarLimitBytes?: number,
): Promise<TarDevice> {
  if (layout === "4k") {
    // Laid out again whole; the file is not needed after that.
    const bytes = await tarMetaBytes(meta);
    if (!(meta instanceof Uint8Array)) meta.close?.();
    return new AlignedTarSource(alignTarIndex(bytes, { tarLimitBytes }), tar);
  }
  // Not closed on a refusal: the caller closes `meta` then (it is not the device's yet).
  const hybrid = new HybridTarSource(meta, tar);
  if (tarLimitBytes !== undefined && tarLimitBytes < hybrid.layout.tarBytes) {
    throw new FormatError(
      `tar index refers to ${hybrid.layout.tarBytes} bytes of tar, the tar has ${tarLimitBytes}`,
      "the tar index does not belong to this layer",
    );
  }
  return hybrid;
}

/** Bytes of the device `meta` makes in `layout` (what a recorded device's size must fit). */
export function tarDeviceBytes(layout: TarDeviceLayout, meta: Uint8Array): number {
  if (layout === "4k") return alignTarIndex(meta).sizeBytes;
  const l = tarIndexLayout(meta);
  return l.metaBytes + l.tarBytes;
}
