/**
 * The source a mount serves for an ordinary tar layer: [meta][tar] (HybridTarSource) over the
 * layer blob behind the chunk cache (coalesced ranged GETs, single-flight, readahead), tar
 * bytes inflated from the nearest zinfo checkpoint (a plain tar layer: read as it is) and,
 * with an `erofs-oci index` record, every piece checked against its digest.
 */
import { FormatError, MountError } from "../errors.ts";
import { CachedSource, type CacheStats } from "../source/cached.ts";
import { GzipRandomAccess } from "../gzip/gzip_random_access.ts";
import { tarIndexLayout } from "../gzip/hybrid_tar.ts";
import { openTarMetaFile, type TarMeta } from "../gzip/tar_meta_file.ts";
import { VerifiedPlainTar } from "../gzip/verified_tar.ts";
import type { Source } from "../source/source.ts";
import { checkTarIndexFiles, openIndexFile } from "./layer_index_files.ts";
import type { FdFile } from "../source/fd_file.ts";
import type { Zinfo } from "../gzip/zinfo.ts";
import {
  chooseTarDeviceLayout,
  kernelHasSubpageBlocks,
  kernelRelease,
  type TarDevice,
  tarDevice,
  type TarDeviceLayout,
} from "./tar_layout.ts";
import type { TarIndexSpec } from "../state/mount_spec.ts";

/** A layer served through its tar index, with the compressed blob's cache statistics. */
export interface TarIndexedSource extends Source {
  readonly cacheBytes: number;
  /** How the layer sits on the device (./tar_layout.ts). */
  readonly layout: TarDeviceLayout;
  /** sha256 of the meta image and of the zinfo as opened (both served from their files). */
  readonly metaDigest?: string;
  readonly zinfoDigest?: string;
  readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
  stats(): CacheStats;
  close(): Promise<void>;
}

/**
 * Chunks of a compressed blob, without readahead: the inflate cursors size their fetches from
 * the zinfo (to the end of the piece they make, or of the interval when reads are sequential;
 * lib/gzip/inflate_cursor.ts), so the cache only coalesces, single-flights and keeps bytes
 * for a cursor restarted at the same checkpoint. Blind readahead (256 KiB chunks, windows to
 * 1 MiB) fetched 21 % of a 15 MB layer to read a tenth of its files in tar order, 1.8 MB of
 * it past the last file (scripts/bench_gzip_replay.ts, lib/gzip/README.md).
 */
const COMPRESSED_BLOB_CACHE = { chunkBytes: 64 << 10, maxReadaheadBytes: 0 };

/**
 * Tar-index images have 512-byte blocks; EROFS mounts blocks smaller than a page only since
 * Linux 6.4. Only the 512 layout needs that (./tar_layout.ts).
 */
export function checkKernelMountsTarIndex(release = kernelRelease()): void {
  if (kernelHasSubpageBlocks(release)) return;
  throw new MountError(
    `kernel ${release} cannot mount tar layers lazily: EROFS takes 512-byte blocks from Linux 6.4 on`,
    "convert the image to EROFS layers: `erofs-oci convert IMAGE DEST`",
  );
}

/**
 * Opens `blob` (the layer, `layer` its digest and size) through `index`. The files are read
 * once and checked against the record before anything is served; a zinfo that does not fit
 * the blob, or a meta referring past the tar, is a FormatError here. `checkStartOf` (a local
 * blob's path, not hashed whole): the tar's first piece is read and checked now, so an index
 * of another file (or a file changed since) fails the mount, saying so, instead of its reads.
 */
export async function openTarIndexSource(
  blob: Source,
  index: TarIndexSpec,
  layer: { digest: string; size: number },
  cacheBytes: number,
  options: { checkStartOf?: string } = {},
): Promise<TarIndexedSource> {
  // With a record the zinfo comes opened and checked (a Zinfo); without, its file.
  let meta: TarMeta, zinfo: Zinfo | FdFile | undefined, pieces: Uint8Array | undefined;
  if (index.record) {
    ({ meta, zinfo, pieces } = await checkTarIndexFiles(
      { record: index.record, meta: index.meta, zinfo: index.zinfo, pieces: index.pieces },
      layer,
    ));
  } else {
    meta = await openTarMetaFile(openIndexFile(index.meta), index.meta);
    try {
      zinfo = index.zinfo ? openIndexFile(index.zinfo) : undefined;
    } catch (error) {
      meta.close();
      throw error;
    }
  }
  try {
    if (index.metaDigest && !(meta instanceof Uint8Array) && meta.digest !== index.metaDigest) {
      throw new FormatError(
        `tar index ${index.meta} changed since the mount: its sha256 is ${meta.digest}, the ` +
          `mount was made from ${index.metaDigest}`,
        "put the file back as it was, or unmount (`erofs-oci umount DIR`) and mount again",
      );
    }
    return await openIndexed(blob, index, layer, cacheBytes, options, { meta, zinfo, pieces });
  } catch (error) {
    // Once open, the device's close closes them (GzipRandomAccess owns the zinfo).
    zinfo?.close();
    if (!(meta instanceof Uint8Array)) meta.close?.();
    throw error;
  }
}

async function openIndexed(
  blob: Source,
  index: TarIndexSpec,
  layer: { digest: string; size: number },
  cacheBytes: number,
  options: { checkStartOf?: string },
  files: { meta: TarMeta; zinfo?: Zinfo | FdFile; pieces?: Uint8Array },
): Promise<TarIndexedSource> {
  const { meta, zinfo, pieces } = files;
  // A reattach gets the layout the device was served in; a new mount, this kernel's.
  const deviceLayout = index.layout ?? chooseTarDeviceLayout();
  // A meta that is no tar-index image is named before the zinfo is looked at.
  const metaLayout = tarIndexLayout(meta);
  const blobCacheBytes = Math.max(4 << 20, Math.floor(cacheBytes / 2));
  const cached = new CachedSource(blob, {
    cacheBytes: blobCacheBytes,
    ...(zinfo ? COMPRESSED_BLOB_CACHE : {}),
  });
  const tarCacheBytes = Math.max(4 << 20, cacheBytes - blobCacheBytes);
  const record = index.record;
  let device: TarDevice;
  /** The tar as read through the piece digests, when there are some. */
  let verifiedTar: Pick<Source, "read"> | undefined;
  let zinfoDigest: string | undefined;
  if (zinfo) {
    const gzip = await GzipRandomAccess.open(cached, zinfo, {
      // Half the tar's share (8 MiB of the default 32 MiB a layer gets): with snapshots at
      // every piece a miss inflates one piece, and a lazy tar.gz mount under four random
      // readers peaked at 127 MB with 16 MiB of pieces, 123 MB with 8 (session 64).
      cacheBytes: Math.max(4 << 20, Math.floor(tarCacheBytes / 2)),
      // Reads reach at most the tar the meta refers to; the record has the whole tar's size.
      streamBytes: record?.tarBytes ?? metaLayout.tarBytes,
      zinfoName: `${index.zinfo} of layer ${layer.digest}`,
      pieceDigests: pieces && record?.pieces
        ? { bytes: pieces, pieceBytes: record.pieces.pieceBytes, totalBytes: record.tarBytes }
        : undefined,
    });
    zinfoDigest = gzip.zinfo.digest;
    try {
      if (index.zinfoDigest && zinfoDigest !== index.zinfoDigest) {
        throw new FormatError(
          `zinfo ${index.zinfo} changed since the mount: its sha256 is ${zinfoDigest}, the ` +
            `mount was made from ${index.zinfoDigest}`,
          "put the file back as it was, or unmount (`erofs-oci umount DIR`) and mount again",
        );
      }
      device = await tarDevice(deviceLayout, meta, gzip, record?.tarBytes);
    } catch (error) {
      gzip.close();
      throw error;
    }
    if (pieces && record?.pieces) verifiedTar = gzip;
  } else {
    const tar = pieces && record?.pieces
      ? new VerifiedPlainTar(cached, pieces, record.pieces.pieceBytes, {
        cacheBytes: tarCacheBytes,
      })
      : cached;
    device = await tarDevice(deviceLayout, meta, tar, tar.size);
    if (tar !== cached) verifiedTar = tar;
  }
  if (options.checkStartOf !== undefined && verifiedTar && record?.pieces && record.tarBytes > 0) {
    const startBytes = Math.min(record.pieces.pieceBytes, record.tarBytes);
    try {
      await verifiedTar.read(0, startBytes);
    } catch (error) {
      await device.close();
      await cached.close?.();
      throw new FormatError(
        `${options.checkStartOf} does not match its index (made for ${layer.digest}): the ` +
          `first ${startBytes} bytes of its tar are not the ones the index was made from`,
        "the file changed since it was indexed, or the index belongs to another file: mount " +
          "it with --index-missing (indexes it here), or pass --index DIR holding its own index",
        { cause: error },
      );
    }
  }
  return {
    size: device.size,
    cacheBytes: blobCacheBytes,
    layout: deviceLayout,
    ...(meta instanceof Uint8Array ? {} : { metaDigest: meta.digest }),
    ...(zinfoDigest ? { zinfoDigest } : {}),
    read: (offset, length, signal) => device.read(offset, length, signal),
    readInto: (offset, dest, signal) => device.readInto(offset, dest, signal),
    stats: () => cached.stats(),
    close: async () => {
      await device.close();
      await cached.close?.();
    },
  };
}
