/**
 * A tar-index meta image served from its file: held whole it was ~170 bytes per file of the
 * layer in the mount server's memory (7.9 MB for 47,000 files), for bytes the kernel mostly
 * reads once and keeps in its page cache. The file is read once when opened — its sha256 for
 * the index record, and the CRC-32 of every 4 KiB block — and afterwards every block read is
 * checked against its CRC: a file changed in place after the mount checked it (a `cp` over a
 * `--tarindex` file, a damaged disk) fails those reads instead of serving other bytes than were
 * mounted. A CRC, not a cryptographic digest: whoever can write the file could as well have
 * given any meta at mount, which the kernel must take as hostile anyway; sha256 per block made
 * a cold `find` over 54,000 entries ~25 % slower, the CRC costs a few ms.
 */
import { FormatError } from "../errors.ts";
import { checkErofsSuperblock, EROFS_SUPER_OFFSET } from "../erofs/superblock.ts";
import { createHash } from "../node_builtins.ts";
import { crc32 } from "../../ffi/zlib.ts";
import { checkReadRange, type Source } from "../source/source.ts";

/** Size of one device-table slot (struct erofs_deviceslot). */
export const DEVICE_SLOT_BYTES = 128;
/** Bytes in the head of a meta image to cover its superblock and a device table right after. */
const META_HEAD_BYTES = 4096;
/** Blocks checked on read (a CRC-32 kept for each: 4 B per 4 KiB, 0.1 %). */
const BLOCK_BYTES = 4096;
/** Read in pieces of this much when opened, through one buffer. */
const OPEN_PIECE_BYTES = 1 << 20;

export interface TarMetaFile {
  readonly size: number;
  /** sha256 of the whole image as it was when opened (`sha256:…`). */
  readonly digest: string;
  /** The image's first bytes, through its device table at least. */
  readonly head: Uint8Array;
  /** Bytes as they were when opened, or a FormatError for a block that changed since. */
  readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
  close(): void;
}

/** The whole meta image, or its head in memory and the rest in its file. */
export type TarMeta = Uint8Array | TarMetaFile;

type MetaSource = Source & {
  readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
  close?(): void;
  path?: string;
};

/**
 * A TarMetaFile over `file` (FormatError when it is no EROFS image or its device table lies
 * outside it); `file` is closed with it, or here when this throws.
 */
export async function openTarMetaFile(file: MetaSource, what = "tar index"): Promise<TarMetaFile> {
  try {
    const { digest, blocks, head } = await readOnce(file);
    checkErofsSuperblock(head, what);
    return new CheckedMetaFile(file, what, digest, blocks, head);
  } catch (error) {
    file.close?.();
    throw error;
  }
}

/** The whole of `meta` in memory (the 4 KiB layout re-lays it out whole). */
export async function tarMetaBytes(meta: TarMeta): Promise<Uint8Array> {
  if (meta instanceof Uint8Array) return meta;
  const bytes = new Uint8Array(meta.size);
  await meta.readInto(0, bytes);
  return bytes;
}

/** The file's sha256, its block digests and its head, from one pass through one buffer. */
async function readOnce(
  file: MetaSource,
): Promise<{ digest: string; blocks: Uint32Array; head: Uint8Array }> {
  const whole = createHash("sha256");
  const blocks = new Uint32Array(Math.ceil(file.size / BLOCK_BYTES));
  const piece = new Uint8Array(Math.min(OPEN_PIECE_BYTES, Math.max(file.size, 1)));
  let head = new Uint8Array(0);
  for (let offset = 0; offset < file.size; offset += piece.length) {
    const view = piece.subarray(0, Math.min(piece.length, file.size - offset));
    await file.readInto(offset, view);
    whole.update(view);
    for (let at = 0; at < view.length; at += BLOCK_BYTES) {
      const block = (offset + at) / BLOCK_BYTES;
      blocks[block] = blockCrc(view.subarray(at, at + BLOCK_BYTES));
    }
    if (offset === 0) head = view.slice(0, Math.min(view.length, META_HEAD_BYTES));
  }
  // A device table past the usual head (the slot offset is the superblock's u16 at 88).
  if (head.length >= EROFS_SUPER_OFFSET + 90) {
    const slotEnd = new DataView(head.buffer).getUint16(EROFS_SUPER_OFFSET + 88, true) *
        DEVICE_SLOT_BYTES + DEVICE_SLOT_BYTES;
    if (slotEnd > head.length && slotEnd <= file.size) {
      const longer = new Uint8Array(slotEnd);
      await file.readInto(0, longer);
      head = longer;
    }
  }
  return { digest: `sha256:${whole.digest("hex")}`, blocks, head };
}

function blockCrc(block: Uint8Array): number {
  return crc32(0, block as Uint8Array<ArrayBuffer>);
}

class CheckedMetaFile implements TarMetaFile {
  readonly size: number;

  constructor(
    readonly file: MetaSource,
    readonly what: string,
    readonly digest: string,
    readonly blocks: Uint32Array,
    readonly head: Uint8Array,
  ) {
    this.size = file.size;
  }

  async readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    checkReadRange(offset, dest.length, this.size);
    if (dest.length === 0) return;
    const first = Math.floor(offset / BLOCK_BYTES);
    const start = first * BLOCK_BYTES;
    const end = Math.min(this.size, Math.ceil((offset + dest.length) / BLOCK_BYTES) * BLOCK_BYTES);
    // Whole blocks are read (and checked) straight into `dest` when it holds whole blocks.
    const aligned = start === offset && end === offset + dest.length;
    const blocks = aligned ? dest : new Uint8Array(end - start);
    await this.file.readInto(start, blocks, signal);
    for (let at = 0; at < blocks.length; at += BLOCK_BYTES) {
      const block = first + at / BLOCK_BYTES;
      if (blockCrc(blocks.subarray(at, at + BLOCK_BYTES)) !== this.blocks[block]) {
        throw new FormatError(
          `${this.what}: bytes ${start + at}..${Math.min(this.size, start + at + BLOCK_BYTES)} ` +
            `of the meta image${this.file.path ? ` ${this.file.path}` : ""} changed since ` +
            "the mount checked it",
          "a mounted index's files must not be changed: unmount it and mount again",
        );
      }
    }
    if (!aligned) dest.set(blocks.subarray(offset - start, offset - start + dest.length));
  }

  close(): void {
    this.file.close?.();
  }
}
