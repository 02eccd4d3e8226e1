/**
 * A tar layer for kernels without sub-page EROFS blocks (before Linux 6.4: Debian 12, Ubuntu
 * 22.04). Tar-index images have 512-byte blocks because a file's data starts wherever its tar
 * header ends; such kernels refuse them. Here the same layer is served as one device with
 * 4 KiB blocks:
 *
 *   [EROFS metadata, 4 KiB blocks][virtual data area: each file from a 4 KiB boundary]
 *
 * The metadata is made at open from the tar-index meta image (read back by
 * ./tar_index_tree.ts, written by the writer with `virtualData`: files are FLAT_PLAIN block
 * ranges in tar order, nothing of them written). A read in the data area goes through a sorted extent table
 * (device offset → tar offset, length) to the tar (gzip random access or a plain tar,
 * unchanged); the padding after each file reads as zeros.
 *
 * Deterministic: the same meta image gives the same bytes (uuid and build time are the meta's,
 * the layout depends only on the tree), so `reattach` serves again exactly what is mounted.
 * Memory: the image's metadata plus 24 bytes per file.
 */
import { closeFd, Errno, O_CLOEXEC, O_WRONLY, SysError } from "../../ffi/libc.ts";
import { openFile } from "../../ffi/files.ts";
import { FormatError } from "../errors.ts";
import { layoutImage } from "../erofs/writer/layout.ts";
import { writeImage } from "../erofs/writer/write.ts";
import { checkReadRange, readSourceInto, type Source } from "../source/source.ts";
import { openMemoryFile, preadExact } from "../source/disk_cache_io.ts";
import type { TarBytes } from "./hybrid_tar.ts";
import { readTarIndexTree } from "./tar_index_tree.ts";

/** Block size of the re-laid-out image: the page size every kernel with EROFS can mount. */
export const ALIGNED_BLOCK_BYTES = 4096;

/**
 * Files whose tar data are at most this far apart (their headers, pax records, padding) are
 * read as one tar range: a 128 KiB device read over 20 small files cost 20 tar reads (a full
 * read of a 100,000-file layer: 4.4 s against 0.8 s for [meta][tar]).
 */
const COALESCE_GAP_BYTES = 16 << 10;

/**
 * Where each file's bytes are: device offset → tar offset, ascending in both, disjoint in both.
 * Typed arrays: a layer of 100,000 files costs 2.4 MB here, not 100,000 objects.
 */
export class TarExtents {
  readonly deviceStart: Float64Array;
  readonly tarStart: Float64Array;
  readonly length: Float64Array;

  constructor(count: number) {
    this.deviceStart = new Float64Array(count);
    this.tarStart = new Float64Array(count);
    this.length = new Float64Array(count);
  }

  get count(): number {
    return this.length.length;
  }

  /** Index of the last extent starting at or before `offset` (-1: none). */
  indexAt(offset: number): number {
    let lo = 0, hi = this.count - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.deviceStart[mid] <= offset) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }
}

/** The re-laid-out image: its metadata bytes, the device size and the extent table. */
export interface AlignedTarIndex {
  /** Metadata of the 4 KiB image (the device's first bytes). */
  image: Uint8Array;
  /** Bytes of the whole device (metadata + data area). */
  sizeBytes: number;
  extents: TarExtents;
  /** Bytes of the tar the meta image refers to. */
  tarBytes: number;
}

/**
 * Builds the 4 KiB image of tar-index image `meta`. FormatError when the meta is malformed,
 * when two files' data overlap in the tar or a file's data ends past `tarLimitBytes` (default:
 * the tar size the meta itself records).
 */
export function alignTarIndex(
  meta: Uint8Array,
  options: { tarLimitBytes?: number; what?: string } = {},
): AlignedTarIndex {
  const what = options.what ?? "tar index";
  const tree = readTarIndexTree(meta, what);
  // Files in tar order, no inline tails: a sequential read of the device is one of the tar.
  const layout = layoutImage(tree.root, {
    blockSizeBits: Math.log2(ALIGNED_BLOCK_BYTES),
    buildTimeSec: tree.buildTimeSec,
    buildTimeNsec: tree.buildTimeNsec,
    virtualData: true,
  });
  const order = layout.dataOrder;
  const extents = new TarExtents(order.length);
  for (let k = 0; k < order.length; k++) {
    const i = order[k];
    const data = layout.dataOf(i);
    if (data?.kind !== "tar") throw new FormatError(`${what}: a file without a tar offset`);
    extents.deviceStart[k] = layout.blockAddress[i] * ALIGNED_BLOCK_BYTES;
    extents.tarStart[k] = data.offset;
    extents.length[k] = layout.sizeOf(i);
  }
  checkTarRanges(extents, Math.min(tree.tarBytes, options.tarLimitBytes ?? Infinity), what);
  const image = writeMetadata(
    (fd) => writeImage(layout, fd, { uuid: tree.uuid, volumeName: tree.volumeName }),
    layout.metadataBytes,
  );
  return {
    image,
    sizeBytes: layout.totalBlocks * ALIGNED_BLOCK_BYTES,
    extents,
    tarBytes: tree.tarBytes,
  };
}

/** Files' tar ranges must be disjoint and end within `limit` bytes of tar. */
function checkTarRanges(extents: TarExtents, limit: number, what: string): void {
  const byTar = Array.from({ length: extents.count }, (_, k) => k)
    .sort((a, b) => extents.tarStart[a] - extents.tarStart[b]);
  let tarEnd = 0;
  for (const k of byTar) {
    const start = extents.tarStart[k];
    if (start < tarEnd) {
      throw new FormatError(
        `${what}: two files' data overlap in the tar (at tar offset ${start})`,
        "the index does not belong to this layer or was damaged",
      );
    }
    tarEnd = start + extents.length[k];
    if (tarEnd > limit) {
      throw new FormatError(
        `${what}: a file's data ends at tar offset ${tarEnd}, past the tar's ${limit} bytes`,
        "the index does not belong to this layer",
      );
    }
  }
}

/**
 * Runs the fd-based writer into an anonymous file and returns its `metadataBytes`: in memory
 * (/dev/shm, no name), read back through the same descriptor, so nobody can swap it between
 * (a named one in a TMPDIR others can write could be). A temporary file where that fails.
 */
function writeMetadata(write: (fd: number) => void, metadataBytes: number): Uint8Array {
  const anonymous = openMemoryFile();
  if (anonymous !== undefined) {
    try {
      write(anonymous);
      const image = new Uint8Array(metadataBytes);
      preadExact(anonymous, image, 0);
      return image;
    } catch (error) {
      // A small /dev/shm (a container's 64 MiB, shared): the temporary file below.
      const full = error instanceof SysError &&
        (error.errno === Errno.ENOSPC || error.errno === Errno.EDQUOT);
      if (!full) throw error;
    } finally {
      closeFd(anonymous);
    }
  }
  const path = Deno.makeTempFileSync({ prefix: "erofs-oci-aligned-" });
  try {
    const fd = openFile(path, O_WRONLY | O_CLOEXEC);
    try {
      write(fd);
    } finally {
      closeFd(fd);
    }
    const image = new Uint8Array(metadataBytes);
    const file = Deno.openSync(path);
    try {
      let done = 0;
      while (done < metadataBytes) {
        const n = file.readSync(image.subarray(done));
        if (n === null || n === 0) throw new Error(`aligned image shorter than ${metadataBytes}`);
        done += n;
      }
    } finally {
      file.close();
    }
    return image;
  } finally {
    Deno.removeSync(path);
  }
}

/** The device of a tar layer with 4 KiB blocks: [metadata][files, each 4 KiB aligned]. */
export class AlignedTarSource implements Source {
  readonly size: number;
  readonly index: AlignedTarIndex;
  readonly #tar: TarBytes;

  /** `tar` serves tar offsets 0..index.tarBytes (a gzip layer's GzipRandomAccess, a tar). */
  constructor(index: AlignedTarIndex, tar: TarBytes) {
    this.index = index;
    this.size = index.sizeBytes;
    this.#tar = tar;
  }

  /** `meta` re-laid out over `tar`; a plain tar must hold every byte the meta refers to. */
  static open(meta: Uint8Array, tar: TarBytes & { size?: number }): AlignedTarSource {
    const index = alignTarIndex(meta, { tarLimitBytes: tar.size });
    return new AlignedTarSource(index, tar);
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    checkReadRange(offset, length, this.size);
    const out = new Uint8Array(length);
    await this.readInto(offset, out, signal);
    return out;
  }

  /** As read(), into `dest` (the padding after each file written as zeros too). */
  async readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    const length = dest.length;
    checkReadRange(offset, length, this.size);
    const image = this.index.image;
    const end = offset + length;
    if (end <= image.length) {
      dest.set(image.subarray(offset, end));
      return;
    }
    const out = dest;
    if (offset < image.length) out.set(image.subarray(offset), 0);
    // A reused buffer: what no file covers (padding, holes) reads as zeros.
    out.fill(0, Math.max(0, image.length - offset));
    const ext = this.index.extents;
    // Pieces of files in this read, in tar order; neighbours a few tar headers apart are read
    // as one range (small files: one tar read per device read, not one per file).
    const reads: Promise<void>[] = [];
    let group: { from: number; to: number; tarAt: number }[] = [];
    const flush = () => {
      if (group.length === 0) return;
      const pieces = group;
      group = [];
      const tarStart = pieces[0].tarAt;
      const last = pieces[pieces.length - 1];
      const tarLength = last.tarAt + (last.to - last.from) - tarStart;
      if (pieces.length === 1) {
        const only = pieces[0];
        reads.push(
          readSourceInto(
            this.#tar,
            tarStart,
            out.subarray(only.from - offset, only.to - offset),
            signal,
          ),
        );
        return;
      }
      reads.push(
        this.#tar.read(tarStart, tarLength, signal).then((bytes) => {
          if (bytes.length !== tarLength) {
            throw new FormatError(
              `tar read at ${tarStart} returned ${bytes.length} of ${tarLength}`,
            );
          }
          for (const p of pieces) {
            const at = p.tarAt - tarStart;
            out.set(bytes.subarray(at, at + p.to - p.from), p.from - offset);
          }
        }),
      );
    };
    for (let i = Math.max(0, ext.indexAt(offset)); i < ext.count; i++) {
      const start = ext.deviceStart[i];
      if (start >= end) break;
      const from = Math.max(offset, start);
      const to = Math.min(end, start + ext.length[i]);
      if (from >= to) continue;
      const tarAt = ext.tarStart[i] + (from - start);
      const prev = group[group.length - 1];
      const prevEnd = prev ? prev.tarAt + (prev.to - prev.from) : 0;
      if (prev && (tarAt < prevEnd || tarAt - prevEnd > COALESCE_GAP_BYTES)) flush();
      group.push({ from, to, tarAt });
    }
    flush();
    await Promise.all(reads);
  }

  async close(): Promise<void> {
    await this.#tar.close?.();
  }
}
