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
import type { Source } from "../source/source.ts";

/** Size of one device-table slot (struct erofs_deviceslot). */
const DEVICE_SLOT_BYTES = 128;

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
export function tarIndexLayout(meta: Uint8Array, what = "tar index"): TarIndexLayout {
  const sb = checkErofsSuperblock(meta, what);
  if (sb.extraDevices !== 1) {
    throw new FormatError(
      `${what} is not a tar-index image: it has ${sb.extraDevices} extra devices, not 1`,
      "make it with `mkfs.erofs --tar=i` or `erofs-oci index`",
    );
  }
  const view = new DataView(meta.buffer, meta.byteOffset, meta.byteLength);
  const slotOffset = view.getUint16(EROFS_SUPER_OFFSET + 88, true) * DEVICE_SLOT_BYTES;
  if (slotOffset < EROFS_SUPER_OFFSET + 128 || slotOffset + DEVICE_SLOT_BYTES > meta.length) {
    throw new FormatError(`${what}: device table at byte ${slotOffset} is outside the image`);
  }
  const blocks = view.getUint32(slotOffset + 64, true);
  const mappedBlock = view.getUint32(slotOffset + 68, true);
  const metaBytes = meta.length;
  if (mappedBlock * sb.blockSizeBytes !== metaBytes) {
    throw new FormatError(
      `${what}: the tar device is mapped at block ${mappedBlock} but the image is ` +
        `${metaBytes} bytes (${metaBytes / sb.blockSizeBytes} blocks)`,
      "the meta image must be used exactly as written by mkfs",
    );
  }
  return { blockSizeBytes: sb.blockSizeBytes, metaBytes, tarBytes: blocks * sb.blockSizeBytes };
}

/** Random access to an uncompressed tar: a gzip layer through its zinfo, or a plain tar. */
export interface TarBytes {
  read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array>;
  close?(): void | Promise<void>;
}

export class HybridTarSource implements Source {
  readonly size: number;
  readonly layout: TarIndexLayout;
  readonly #meta: Uint8Array;
  readonly #tar: TarBytes;

  /** `meta` is the whole meta image; `tar` serves tar offsets 0..layout.tarBytes. */
  constructor(meta: Uint8Array, tar: TarBytes) {
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
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
      offset + length > this.size
    ) {
      throw new RangeError(`read of ${length} bytes at ${offset} outside 0..${this.size}`);
    }
    const metaBytes = this.layout.metaBytes;
    if (offset >= metaBytes) return await this.#tar.read(offset - metaBytes, length, signal);
    if (offset + length <= metaBytes) return this.#meta.slice(offset, offset + length);
    const out = new Uint8Array(length);
    out.set(this.#meta.subarray(offset));
    out.set(await this.#tar.read(0, offset + length - metaBytes, signal), metaBytes - offset);
    return out;
  }

  async close(): Promise<void> {
    await this.#tar.close?.();
  }
}
