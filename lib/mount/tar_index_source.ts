/**
 * The source a mount serves for an ordinary tar layer: [meta][tar] (HybridTarSource) over the
 * layer blob behind the chunk cache (coalesced ranged GETs, single-flight, readahead), tar
 * bytes inflated from the nearest zinfo checkpoint (a plain tar layer: read as it is) and,
 * with an `erofs-oci index` record, every piece checked against its digest.
 */
import { FormatError, MountError } from "../errors.ts";
import { CachedSource, type CacheStats } from "../source/cached.ts";
import { HybridTarSource } from "../gzip/hybrid_tar.ts";
import { VerifiedPlainTar } from "../gzip/verified_tar.ts";
import type { Source } from "../source/source.ts";
import { checkTarIndexFiles } from "./layer_index_files.ts";
import type { TarIndexSpec } from "../state/runtime.ts";

/** A layer served through its tar index, with the compressed blob's cache statistics. */
export interface TarIndexedSource extends Source {
  readonly cacheBytes: number;
  stats(): CacheStats;
  close(): Promise<void>;
}

/**
 * Chunks of a compressed blob: a read inflates from its checkpoint to the piece it needs (about
 * half a span of compressed bytes). The default 2 MiB chunks with readahead growing to 8 MiB
 * fetched 14 % of a 15 MB layer for one file and all of it for a tenth of the files read in tar
 * order (scripts/bench-gzip-mount.sh). Readahead trades the two: windows up to 512 KiB fetched
 * 14 % for that tenth but made a cold full read 3.4 s (curl | gunzip | tar x: 0.5 s), 1 MiB
 * 21 % and 0.8-1.2 s, 2 MiB 27 % and 1.4 s.
 */
const COMPRESSED_BLOB_CACHE = { chunkBytes: 256 << 10, maxReadaheadBytes: 1 << 20 };

/**
 * Tar-index images have 512-byte blocks; EROFS mounts blocks smaller than a page only since
 * Linux 6.4 ("erofs: set block size to the on-disk block size"); older kernels answer EINVAL.
 */
export function checkKernelMountsTarIndex(release = kernelRelease()): void {
  const match = /^(\d+)\.(\d+)/.exec(release);
  if (!match) return;
  const [major, minor] = [Number(match[1]), Number(match[2])];
  if (major > 6 || (major === 6 && minor >= 4)) return;
  throw new MountError(
    `kernel ${release} cannot mount tar layers lazily: EROFS takes 512-byte blocks from Linux 6.4 on`,
    "convert the image to EROFS layers: `erofs-oci convert IMAGE DEST`",
  );
}

function kernelRelease(): string {
  // Not /proc/sys/kernel/osrelease: Deno refuses /proc paths without --allow-all.
  try {
    return Deno.osRelease();
  } catch {
    return "";
  }
}

function bytesSource(bytes: Uint8Array): Source {
  return {
    size: bytes.length,
    read: (offset, length) => Promise.resolve(bytes.slice(offset, offset + length)),
  };
}

async function readIndexFile(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (error) {
    throw new FormatError(`cannot read index file ${path}: ${(error as Error).message}`);
  }
}

/**
 * Opens `blob` (the layer, `layer` its digest and size) through `index`. The files are read
 * once and checked against the record before anything is served; a zinfo that does not fit
 * the blob, or a meta referring past the tar, is a FormatError here.
 */
export async function openTarIndexSource(
  blob: Source,
  index: TarIndexSpec,
  layer: { digest: string; size: number },
  cacheBytes: number,
): Promise<TarIndexedSource> {
  checkKernelMountsTarIndex();
  let meta: Uint8Array, zinfo: Uint8Array | undefined, pieces: Uint8Array | undefined;
  if (index.record) {
    ({ meta, zinfo, pieces } = await checkTarIndexFiles(
      { record: index.record, meta: index.meta, zinfo: index.zinfo, pieces: index.pieces },
      layer,
    ));
  } else {
    meta = await readIndexFile(index.meta);
    zinfo = index.zinfo ? await readIndexFile(index.zinfo) : undefined;
  }
  const blobCacheBytes = Math.max(4 << 20, Math.floor(cacheBytes / 2));
  const cached = new CachedSource(blob, {
    cacheBytes: blobCacheBytes,
    ...(zinfo ? COMPRESSED_BLOB_CACHE : {}),
  });
  let hybrid: HybridTarSource;
  if (zinfo) {
    const record = index.record;
    hybrid = await HybridTarSource.openGzip(meta, cached, bytesSource(zinfo), {
      cacheBytes: Math.max(4 << 20, cacheBytes - blobCacheBytes),
      pieceDigests: pieces && record?.pieces
        ? { bytes: pieces, pieceBytes: record.pieces.pieceBytes, totalBytes: record.tarBytes }
        : undefined,
    });
  } else if (pieces && index.record?.pieces) {
    hybrid = HybridTarSource.plainTar(
      meta,
      new VerifiedPlainTar(cached, pieces, index.record.pieces.pieceBytes, {
        cacheBytes: Math.max(4 << 20, cacheBytes - blobCacheBytes),
      }),
    );
  } else {
    hybrid = HybridTarSource.plainTar(meta, cached);
  }
  return {
    size: hybrid.size,
    cacheBytes: blobCacheBytes,
    read: (offset, length, signal) => hybrid.read(offset, length, signal),
    stats: () => cached.stats(),
    close: async () => {
      await hybrid.close();
      await cached.close?.();
    },
  };
}
