/**
 * One device = [tar-index meta image][uncompressed tar], as `mount.erofs` serves a layer indexed
 * with `mkfs.erofs --tar=i`: offsets below the meta size read the (small, fully held) meta
 * image, the rest read the tar, which for a gzip layer comes from GzipRandomAccess (compressed
 * ranges fetched from the nearest zinfo checkpoint and inflated).
 *
 * Layout facts (../shared/fixtures/README.md): the meta image has one extra device whose slot
 * maps it at block `mapped_blkaddr` = meta size / block size, and whose `blocks` cover the tar
 * up to the end of the last entry's data; that is all the kernel ever reads of the tar.
 */
import { FormatError } from "../errors.ts";
import { checkErofsSuperblock, EROFS_SUPER_OFFSET } from "../erofs/superblock.ts";
import { GzipRandomAccess, type GzipRandomAccessOptions } from "./gzip_random_access.ts";
import { checkReadRange, readSourceInto, type Source } from "../source/source.ts";
import { DEVICE_SLOT_BYTES, type TarMeta } from "./tar_meta_file.ts";

/** Where the tar sits in a tar-index meta image's address space. */
export interface TarIndexLayout {
  blockSizeBytes: number;
  /** Bytes of the meta image = byte offset of the tar on the combined device. */
  metaBytes: number;
  /** Bytes of the tar the image refers to (device blocks × block size). */
  tarBytes: number;
}

/**
 * Checks that `meta` is a tar-index image whose one extra device (the tar) is mapped right
 * after it, and returns the layout. FormatError otherwise.
 */
export function tarIndexLayout(metaImage: TarMeta, what = "tar index"): TarIndexLayout {
  const meta = metaImage instanceof Uint8Array ? metaImage : metaImage.head;
  const metaBytes = metaImage instanceof Uint8Array ? metaImage.length : metaImage.size;
  const sb = checkErofsSuperblock(meta, what);
  if (sb.extraDevices !== 1) {
    throw new FormatError(
      `${what} is not a tar-index image: it has ${sb.extraDevices} extra devices, not 1`,
      "make it with `mkfs.erofs --tar=i` or `erofs-oci index`",
    );
  }
  const view = new DataView(meta.buffer, meta.byteOffset, meta.byteLength);
  const slotOffset = view.getUint16(EROFS_SUPER_OFFSET + 88, true) * DEVICE_SLOT_BYTES;
  if (
    slotOffset < EROFS_SUPER_OFFSET + 128 || slotOffset + DEVICE_SLOT_BYTES > metaBytes ||
    slotOffset + DEVICE_SLOT_BYTES > meta.length
  ) {
    throw new FormatError(`${what}: device table at byte ${slotOffset} is outside the image`);
  }
  const blocks = view.getUint32(slotOffset + 64, true);
  const mappedBlock = view.getUint32(slotOffset + 68, true);
  if (mappedBlock * sb.blockSizeBytes !== metaBytes) {
    throw new FormatError(
      `${what}: the tar device is mapped at block ${mappedBlock} but the image is ` +
        `${metaBytes} bytes (${metaBytes / sb.blockSizeBytes} blocks)`,
      "the meta image must be used exactly as written by mkfs",
    );
  }
  return { blockSizeBytes: sb.blockSizeBytes, metaBytes, tarBytes: blocks * sb.blockSizeBytes };
}

/**
 * Random access to an uncompressed tar: a gzip layer through its zinfo, or a plain tar.
 * `readInto` (when there is one) fills the caller's buffer, so the reply buffers of the FUSE
 * and NBD servers are reused instead of a fresh buffer per read.
 */
export interface TarBytes {
  read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array>;
  readInto?(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
  close?(): void | Promise<void>;
}

export class HybridTarSource implements Source {
  readonly size: number;
  readonly layout: TarIndexLayout;
  readonly #meta: TarMeta;
  readonly #tar: TarBytes;

  /**
   * `meta` is the meta image (whole, or in its file; closed with this source); `tar` serves
   * tar offsets 0..layout.tarBytes.
   */
  constructor(meta: TarMeta, tar: TarBytes) {
    this.layout = tarIndexLayout(meta);
    this.#meta = meta;
    this.#tar = tar;
    this.size = this.layout.metaBytes + this.layout.tarBytes;
  }

  /**
   * A gzip layer: `blob` is the compressed layer (e.g. a cached registry blob), `zinfo` its
   * checkpoint file. The zinfo is checked against the blob here (FormatError on a mismatch).
   */
  static async openGzip(
    meta: Uint8Array,
    blob: Source,
    zinfo: Source,
    options?: GzipRandomAccessOptions,
    signal?: AbortSignal,
  ): Promise<HybridTarSource> {
    tarIndexLayout(meta);
    const gzip = await GzipRandomAccess.open(blob, zinfo, options, signal);
    try {
      return new HybridTarSource(meta, gzip);
    } catch (error) {
      gzip.close();
      throw error;
    }
  }

  /** An uncompressed tar layer (no zinfo needed); it must hold every byte the meta refers to. */
  static plainTar(meta: Uint8Array, tar: Source): HybridTarSource {
    const source = new HybridTarSource(meta, tar);
    if (tar.size < source.layout.tarBytes) {
      throw new FormatError(
        `tar index refers to ${source.layout.tarBytes} bytes of tar, the tar has ${tar.size}`,
        "the tar index does not belong to this layer",
      );
    }
    return source;
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    checkReadRange(offset, length, this.size);
    const out = new Uint8Array(length);
    await this.readInto(offset, out, signal);
    return out;
  }

  async readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    checkReadRange(offset, dest.length, this.size);
    const metaBytes = this.layout.metaBytes;
    const end = offset + dest.length;
    if (offset < metaBytes) {
      const meta = this.#meta;
      const metaEnd = Math.min(end, metaBytes);
      if (meta instanceof Uint8Array) dest.set(meta.subarray(offset, metaEnd));
      else await meta.readInto(offset, dest.subarray(0, metaEnd - offset), signal);
    }
    if (end > metaBytes) {
      const from = Math.max(offset, metaBytes);
      await readSourceInto(this.#tar, from - metaBytes, dest.subarray(from - offset), signal);
    }
  }

  async close(): Promise<void> {
    if (!(this.#meta instanceof Uint8Array)) this.#meta.close?.();
    await this.#tar.close?.();
  }
}
