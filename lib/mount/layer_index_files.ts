/**
 * One layer's index files in a directory (NAME.meta.erofs, NAME.zinfo, NAME.pieces and the
 * NAME.index.json binding them to the layer), made in one pass over the compressed layer.
 * Shared by `index FILE` and `index IMAGE`; `mount --index DIR` finds them by layer digest.
 */
import { indexGzipLayer, type LayerIndex } from "../gzip/index_layer.ts";
import type { ImpliedMtime } from "../erofs/writer/from_tar.ts";
import { writeFileIn } from "../../ffi/new_file_in_dir.ts";
import { indexPlainTarLayer } from "../gzip/index_plain_tar.ts";
import {
  checkIndexRecord,
  type IndexRecord,
  MAX_INDEX_FILE_BYTES,
  MAX_INDEX_RECORD_BYTES,
  parseIndexRecord,
} from "../gzip/index_record.ts";
import { FormatError, UserError } from "../errors.ts";
import { closeFd } from "../../ffi/libc.ts";
import { FileRefusedError, openRegularFileFd, readRegularFile } from "../../ffi/files.ts";
import { openDirTrusted, UntrustedSymlinkError } from "../../ffi/path_resolve.ts";
import { FdFile } from "../source/fd_file.ts";
import { Zinfo } from "../gzip/zinfo.ts";
import { openTarMetaFile, type TarMetaFile } from "../gzip/tar_meta_file.ts";
import { digestOfPieces } from "../source/disk_cache_digest.ts";
import { readSourceInto, type Source } from "../source/source.ts";
import type { BuildNode } from "../erofs/writer/tree.ts";

export interface LayerIndexOptions {
  spanBytes: number;
  /** The compressed layer's size, when known (IndexLayerOptions.layerBytes). */
  layerBytes?: number;
  buildTimeSec: number;
  onEntries?: (count: number) => void;
  impliedMtimeSec?: ImpliedMtime;
  prepareTree?: (root: BuildNode) => void | Promise<void>;
  /** The layer is an uncompressed tar: meta + pieces, no zinfo (the blob is the tar). */
  plainTar?: boolean;
}

/** Paths of one layer's index files (zinfo and pieces absent for a plain tar). */
export interface TarIndexFiles {
  record: IndexRecord;
  meta: string;
  zinfo?: string;
  pieces?: string;
}

/** The file name stem `index IMAGE` uses for a layer: its digest with `:` → `-`. */
export function layerFileStem(digest: string): string {
  return digest.replace(":", "-");
}

/**
 * Indexes the tar+gzip (or, with `plainTar`, the tar) `compressed` into `dir` under `name`;
 * the record is written last, so a directory holding NAME.index.json holds a complete index.
 * `dir` must exist: it is not made here, so a work directory removed at an interrupt is not
 * made again by a call already on its way (the callers make theirs synchronously).
 */
export async function writeLayerIndex(
  compressed: ReadableStream<Uint8Array>,
  dir: string,
  name: string,
  options: LayerIndexOptions,
): Promise<{ files: TarIndexFiles; result: LayerIndex }> {
  const meta = `${dir}/${name}.meta.erofs`, zinfo = `${dir}/${name}.zinfo`;
  const pieces = `${dir}/${name}.pieces`;
  // Every file is made, named and removed through one descriptor of `dir` (`index -o DIR`
  // writes as root into a directory a user may own: by path, a planted symlink or a swapped
  // directory would have root write elsewhere).
  let dirFd: number;
  try {
    dirFd = openDirTrusted(dir);
  } catch (error) {
    if (error instanceof UntrustedSymlinkError) throw error;
    throw new UserError(`cannot write the index in ${dir}: ${(error as Error).message}`);
  }
  try {
    const indexOptions = {
      spanBytes: options.spanBytes,
      layerBytes: options.layerBytes,
      buildTimeSec: options.buildTimeSec,
      onEntries: options.onEntries,
      impliedMtimeSec: options.impliedMtimeSec,
      prepareTree: options.prepareTree,
    };
    const result = options.plainTar
      ? await indexPlainTarLayer(compressed, { meta, pieces, dirFd }, indexOptions)
      : await indexGzipLayer(compressed, { meta, zinfo, pieces, dirFd }, indexOptions);
    const record: IndexRecord = {
      layer: { digest: result.layerDigest, size: result.layerBytes },
      diffId: result.diffId,
      tarBytes: result.tarBytes,
      meta: { file: `${name}.meta.erofs`, digest: await sha256OfFile(meta) },
      zinfo: options.plainTar ? undefined : {
        file: `${name}.zinfo`,
        digest: await sha256OfFile(zinfo),
        spanBytes: result.spanBytes,
        checkpoints: result.checkpoints,
      },
      pieces: {
        file: `${name}.pieces`,
        digest: await sha256OfFile(pieces),
        pieceBytes: result.pieceBytes,
      },
    };
    const recordBytes = new TextEncoder().encode(JSON.stringify(record, null, 2) + "\n");
    writeFileIn(dirFd, `${dir}/${name}.index.json`, recordBytes);
    if (options.plainTar) delete record.zinfo;
    return {
      files: { record, meta, zinfo: options.plainTar ? undefined : zinfo, pieces },
      result,
    };
  } finally {
    closeFd(dirFd);
  }
}

/** Each NAME.index.json record in `dir` (FormatError when the directory cannot be read). */
async function* indexRecordsIn(dir: string): AsyncGenerator<IndexRecord> {
  let names: string[];
  try {
    names = [...Deno.readDirSync(dir)].filter((e) => e.isFile && e.name.endsWith(".index.json"))
      .map((e) => e.name).sort();
  } catch (error) {
    throw new FormatError(`cannot read index directory ${dir}: ${(error as Error).message}`);
  }
  for (const name of names) {
    const path = `${dir}/${name}`;
    yield parseIndexRecord(await readIndexFile(path, MAX_INDEX_RECORD_BYTES), path);
  }
}

/**
 * The index in `dir` made for `layer` (any NAME.index.json whose record names that digest),
 * its files checked against the record; undefined when none names it.
 */
export async function findLocalLayerIndex(
  dir: string,
  layer: { digest: string; size: number },
): Promise<TarIndexFiles | undefined> {
  for await (const record of indexRecordsIn(dir)) {
    if (record.layer.digest !== layer.digest) continue;
    const files: TarIndexFiles = {
      record,
      meta: `${dir}/${record.meta.file}`,
      zinfo: record.zinfo ? `${dir}/${record.zinfo.file}` : undefined,
      pieces: record.pieces ? `${dir}/${record.pieces.file}` : undefined,
    };
    await verifyTarIndexFiles(files, layer);
    return files;
  }
  return undefined;
}

/**
 * Where the index of the layer `digest` made on this host over the layers below it (`below`,
 * their belowDigest) lives: an index depends on them (the directories a layer only implies
 * take theirs, a whiteout with nothing below is dropped), so the same layer over another base
 * has an index of its own. A bottom layer's keeps the plain name.
 */
export function indexedHereDir(hereDir: string, digest: string, below?: string): string {
  const stem = layerFileStem(digest);
  return below === undefined ? `${hereDir}/${stem}` : `${hereDir}/${stem}.over-${below.slice(7)}`;
}

/** The index an earlier `--index-missing` made here for `layer` over `below`, if any (checked). */
export async function findIndexedHere(
  hereDir: string,
  layer: { digest: string; size: number },
  below: string | undefined,
): Promise<TarIndexFiles | undefined> {
  const dir = indexedHereDir(hereDir, layer.digest, below);
  try {
    Deno.statSync(dir);
  } catch {
    return undefined;
  }
  return await findLocalLayerIndex(dir, layer);
}

/** The layer digests the records in `dir` name for a layer of `sizeBytes` (their claims only). */
export async function indexedDigestsOfSize(dir: string, sizeBytes: number): Promise<Set<string>> {
  const digests = new Set<string>();
  for await (const record of indexRecordsIn(dir)) {
    if (record.layer.size === sizeBytes) digests.add(record.layer.digest);
  }
  return digests;
}

/**
 * Reads the files and checks them against their record and the layer (FormatError). The meta
 * image and the zinfo (32 KiB per checkpoint: a layer of many gzip members makes a large one)
 * are not read into memory: they are hashed as they stream by and handed back open (the zinfo
 * opened as a Zinfo, checked against the layer), read when used. The caller closes them
 * (closeTarIndexFiles).
 */
export async function checkTarIndexFiles(
  files: TarIndexFiles,
  layer: { digest: string; size: number },
): Promise<{ meta: TarMetaFile; zinfo?: Zinfo; pieces?: Uint8Array }> {
  const pieces = files.pieces === undefined
    ? undefined
    : await readIndexFile(files.pieces, MAX_INDEX_FILE_BYTES);
  const meta = await openTarMetaFile(openIndexFile(files.meta), files.record.meta.file);
  let zinfoFile: FdFile | undefined;
  try {
    zinfoFile = files.zinfo === undefined ? undefined : openIndexFile(files.zinfo);
    const zinfoDigest = zinfoFile ? { digest: await sha256OfSource(zinfoFile) } : undefined;
    checkIndexRecord(files.record, layer, meta, zinfoDigest, pieces);
    // Refused here, before a mount, rather than by each read: checkpoints too far apart. The
    // server serves through this Zinfo, not another reading of the file.
    const zinfo = zinfoFile && await Zinfo.open(zinfoFile, layer.size, undefined, {
      name: `${files.record.zinfo?.file ?? files.zinfo} of layer ${layer.digest}`,
      streamBytes: files.record.tarBytes,
    });
    return { meta, zinfo, pieces };
  } catch (error) {
    closeTarIndexFiles({ meta, zinfo: zinfoFile });
    throw error;
  }
}

/** Closes what checkTarIndexFiles left open. */
export function closeTarIndexFiles(files: { meta: TarMetaFile; zinfo?: { close(): void } }): void {
  files.meta.close?.();
  files.zinfo?.close();
}

/** checkTarIndexFiles, closing the files again: the index is as recorded (FormatError). */
export async function verifyTarIndexFiles(
  files: TarIndexFiles,
  layer: { digest: string; size: number },
): Promise<void> {
  closeTarIndexFiles(await checkTarIndexFiles(files, layer));
}

/** An index file opened as readIndexFile would read it (same refusals), left to be read. */
export function openIndexFile(path: string): FdFile {
  try {
    const { fd, sizeBytes } = openRegularFileFd(path, MAX_INDEX_FILE_BYTES, "index file");
    return new FdFile(fd, sizeBytes, path);
  } catch (error) {
    if (error instanceof FileRefusedError) throw new FormatError(error.message, error.hint);
    throw new FormatError(`cannot open index file ${path}: ${(error as Error).message}`);
  }
}

/** `sha256:…` of a source, read in 1 MiB pieces (never whole) through one buffer. */
async function sha256OfSource(source: Source): Promise<string> {
  const readPiece = async (into: Uint8Array, offset: number) => {
    await readSourceInto(source, offset, into);
    return true;
  };
  return (await digestOfPieces(readPiece, source.size, "sha256:"))!;
}

/** sha256OfSource of the file at `path`. */
export async function sha256OfFile(path: string): Promise<string> {
  const file = openIndexFile(path);
  try {
    return await sha256OfSource(file);
  } finally {
    file.close();
  }
}

/**
 * An index file read whole, if it is a regular file of at most `maxBytes` (a FIFO, a device or
 * a larger file is refused before any read): a FormatError naming it otherwise.
 */
export async function readIndexFile(path: string, maxBytes: number): Promise<Uint8Array> {
  try {
    return await readRegularFile(path, maxBytes, "index file");
  } catch (error) {
    if (error instanceof FileRefusedError) throw new FormatError(error.message, error.hint);
    throw new FormatError(`cannot read index file ${path}: ${(error as Error).message}`);
  }
}
