/**
 * The record binding a tar index (meta image + zinfo) to the layer it was made from, written
 * by `erofs-oci index` as NAME.index.json. A mount checks it before serving: a layer with
 * another digest or size, a meta or zinfo that is not the one recorded, or a meta referring
 * to more tar than the layer has, is refused (FormatError) rather than served as wrong bytes.
 */
import { createHash } from "../node_builtins.ts";
import { FormatError } from "../errors.ts";
import { tarIndexLayout } from "./hybrid_tar.ts";
import type { TarMetaFile } from "./tar_meta_file.ts";
import { checkZinfoBytes } from "./zinfo.ts";
import { parseJson } from "../json.ts";

/** Larger than any honest record; a bigger file is refused before parsing. */
export const MAX_INDEX_RECORD_BYTES = 64 * 1024;
/** Largest meta image, zinfo or pieces file a mount reads (they index the layer, not hold it). */
export const MAX_INDEX_FILE_BYTES = 1 << 30;

export interface IndexRecord {
  layer: { digest: string; size: number };
  /** sha256 of the uncompressed tar (OCI diff_id). */
  diffId: string;
  tarBytes: number;
  meta: { file: string; digest: string };
  zinfo?: { file: string; digest: string; spanBytes: number; checkpoints: number };
  /** sha256 per piece of the tar (piece_digests.ts), checked on every read when present. */
  pieces?: { file: string; digest: string; pieceBytes: number };
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;
/**
 * A file the record names: one component of the record's own directory (no `/`, no control
 * character, not hidden: never `.` or `..`), as indexNameFor makes them.
 */
// deno-lint-ignore no-control-regex -- control characters are what it refuses
const FILE_NAME = /^[^/\x00-\x1f\x7f]{1,200}$/;
/** The longest NAME of NAME.index.json and its companions (`.meta.erofs`: 11 more). */
const NAME_MAX = 180;

/**
 * NAME for the index files of a tar file called `fileName` (`layer zero.tar.gz` → `layer
 * zero`): what parseIndexRecord accepts back, control characters and leading dots replaced.
 */
export function indexNameFor(fileName: string): string {
  const name = fileName.replace(/^.*\//, "").replace(/(\.tar\.gz|\.tgz|\.gz|\.tar)$/, "")
    // deno-lint-ignore no-control-regex -- control characters are what it replaces
    .replace(/[\x00-\x1f\x7f]/g, "_").replace(/^\./, "_").slice(0, NAME_MAX);
  return name || "layer";
}

/** Parses and type-checks a record (FormatError naming the first bad field). */
export function parseIndexRecord(bytes: Uint8Array, what = "index record"): IndexRecord {
  if (bytes.length > MAX_INDEX_RECORD_BYTES) {
    throw new FormatError(`${what} is ${bytes.length} bytes, more than an index record can be`);
  }
  let value: unknown;
  try {
    value = parseJson(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new FormatError(`${what} is not JSON`);
  }
  const bad = (field: string) => new FormatError(`${what}: bad or missing ${field}`);
  const obj = (v: unknown, field: string) => {
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad(field);
    return v as Record<string, unknown>;
  };
  const digest = (v: unknown, field: string) => {
    if (typeof v !== "string" || !DIGEST.test(v)) throw bad(field);
    return v;
  };
  const size = (v: unknown, field: string) => {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw bad(field);
    return v;
  };
  const file = (v: unknown, field: string) => {
    if (typeof v !== "string" || !FILE_NAME.test(v) || v.startsWith(".")) throw bad(field);
    return v;
  };
  const root = obj(value, "record");
  const layer = obj(root.layer, "layer");
  const meta = obj(root.meta, "meta");
  const record: IndexRecord = {
    layer: { digest: digest(layer.digest, "layer.digest"), size: size(layer.size, "layer.size") },
    diffId: digest(root.diffId, "diffId"),
    tarBytes: size(root.tarBytes, "tarBytes"),
    meta: { file: file(meta.file, "meta.file"), digest: digest(meta.digest, "meta.digest") },
  };
  if (root.zinfo !== undefined) {
    const zinfo = obj(root.zinfo, "zinfo");
    record.zinfo = {
      file: file(zinfo.file, "zinfo.file"),
      digest: digest(zinfo.digest, "zinfo.digest"),
      spanBytes: size(zinfo.spanBytes, "zinfo.spanBytes"),
      checkpoints: size(zinfo.checkpoints, "zinfo.checkpoints"),
    };
  }
  if (root.pieces !== undefined) {
    const pieces = obj(root.pieces, "pieces");
    record.pieces = {
      file: file(pieces.file, "pieces.file"),
      digest: digest(pieces.digest, "pieces.digest"),
      pieceBytes: size(pieces.pieceBytes, "pieces.pieceBytes"),
    };
  }
  return record;
}

export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/**
 * Checks that `record` belongs to the layer (digest, size) and to these meta/zinfo bytes, and
 * that the meta refers to no more tar than the layer holds. Throws FormatError with a hint.
 */
export function checkIndexRecord(
  record: IndexRecord,
  layer: { digest: string; size: number },
  /** The meta's bytes, or its file (hashed when opened). */
  meta: Uint8Array | TarMetaFile,
  /** The zinfo's bytes, or its digest (the caller then checks its structure: Zinfo.open). */
  zinfo?: Uint8Array | { digest: string },
  pieces?: Uint8Array,
): void {
  const hint = "make the index again with `erofs-oci index` for this layer";
  if (record.layer.digest !== layer.digest || record.layer.size !== layer.size) {
    throw new FormatError(
      `the index was made for layer ${record.layer.digest} (${record.layer.size} bytes), ` +
        `not ${layer.digest} (${layer.size} bytes)`,
      hint,
    );
  }
  const metaDigest = meta instanceof Uint8Array ? sha256Digest(meta) : meta.digest;
  if (metaDigest !== record.meta.digest) {
    throw new FormatError(`${record.meta.file} is not the meta image its index recorded`, hint);
  }
  const zinfoDigest = zinfo instanceof Uint8Array ? sha256Digest(zinfo) : zinfo?.digest;
  if (record.zinfo && zinfoDigest !== record.zinfo.digest) {
    throw new FormatError(`${record.zinfo.file} is not the zinfo its index recorded`, hint);
  }
  if (record.zinfo && zinfo instanceof Uint8Array) {
    // Refused here, before a mount, rather than by each read: checkpoints too far apart.
    checkZinfoBytes(zinfo, layer.size, {
      name: `${record.zinfo.file} of layer ${layer.digest}`,
      streamBytes: record.tarBytes,
    });
  }
  if (record.pieces && (!pieces || sha256Digest(pieces) !== record.pieces.digest)) {
    throw new FormatError(
      `${record.pieces.file} is not the piece digest file its index recorded`,
      hint,
    );
  }
  const { tarBytes } = tarIndexLayout(meta, record.meta.file);
  if (tarBytes > record.tarBytes) {
    throw new FormatError(
      `${record.meta.file} refers to ${tarBytes} bytes of tar, the layer has ${record.tarBytes}`,
      hint,
    );
  }
}
