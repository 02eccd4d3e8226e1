/**
 * An OCI image layout as the destination of a conversion (image-spec image-layout.md): blobs
 * under `blobs/sha256/`, the tag as an `index.json` entry named by
 * `org.opencontainers.image.ref.name`. Every file is written through a temporary name and
 * renamed, and index.json is rewritten last, so readers see the old image or the new one.
 */
import { OciError, UserError } from "../errors.ts";
import {
  hiddenTempName,
  NewFileInDir,
  splitPath,
  unlinkIn,
  writeFileIn,
} from "../../ffi/new_file_in_dir.ts";
import { openDirTrusted, UntrustedSymlinkError } from "../../ffi/path_resolve.ts";
import {
  closeFd,
  cstr,
  Errno,
  errno,
  libc,
  O_RDONLY,
  strerror,
  SysError,
  unwrap,
} from "../../ffi/libc.ts";
import { dirWriteErrno, openFile } from "../../ffi/files.ts";
import { copyRange } from "../erofs/writer/data_copy.ts";
import { type Descriptor, MAX_MANIFEST_BYTES, parseManifestDocument } from "../oci/manifest.ts";
import { OCI_INDEX } from "../oci/media_types.ts";
import { formatLayoutReference, type LayoutReference, OciLayout } from "../oci/oci_layout.ts";
import { LayoutFile } from "../oci/layout_file.ts";
import { digestOf } from "../oci/digest.ts";
import { type ChunkTable, MAX_TABLE_BYTES, parseChunkTable } from "../verify/chunk_table.ts";
import {
  type ImageDestination,
  layersOfManifest,
  MAX_PREVIOUS_MANIFESTS,
  type OutputBlob,
} from "./destination.ts";
import { parseJson } from "../json.ts";

const REF_NAME = "org.opencontainers.image.ref.name";
const LAYOUT_VERSION = '{"imageLayoutVersion":"1.0.0"}';

export class LayoutDestination implements ImageDestination {
  readonly name: string;
  readonly #layout: OciLayout;
  readonly #tag: string;
  /** The layout directory did not exist before this conversion. */
  readonly #createdHere: boolean;

  /**
   * The layout directory and its blobs/sha256, opened once (openDirTrusted): every file is
   * written, named and removed through them, and the layout is removed (when this run made it)
   * only through its parent's descriptor — by path, a user who owns a directory on the way
   * swapped it for a symlink meanwhile and had an interrupted convert delete a tree of root's.
   */
  readonly #dirFd: number;
  /** blobs/, and blobs/sha256 in it: each made and opened in the one above, never by a path. */
  readonly #blobsParentFd: number;
  readonly #blobsFd: number;
  readonly #parent?: { fd: number; name: string };
  /** Blob files this run wrote (removed by abandon in a layout it made). */
  readonly #written = new Set<string>();

  constructor(ref: LayoutReference) {
    if (ref.digest) {
      throw new OciError(
        `cannot convert to a digest (${formatLayoutReference(ref)})`,
        "name a tag",
        {
          exitCode: 2,
        },
      );
    }
    this.#tag = ref.tag ?? "latest";
    this.#layout = new OciLayout(ref.layoutPath);
    this.name = formatLayoutReference({ layoutPath: ref.layoutPath, tag: this.#tag });
    this.#createdHere = !pathThere(this.#layout.path);
    const fds: number[] = [];
    try {
      const { dir, base } = splitPath(this.#layout.path.replace(/\/+$/, ""));
      if (this.#createdHere) {
        const parentFd = openDirTrusted(dir);
        fds.push(parentFd);
        this.#parent = { fd: parentFd, name: base };
        unwrap(libc().mkdirat(parentFd, cstr(base), 0o755), "mkdir", this.#layout.path);
      }
      this.#dirFd = openDirTrusted(this.#layout.path);
      fds.push(this.#dirFd);
      // One level at a time: mkdirat of "blobs/sha256" follows a `blobs` symlink (a user's, in
      // a layout they own) and makes root's directory wherever it points, before any check.
      const subdir = (parentFd: number, name: string, path: string): number => {
        const made = libc().mkdirat(parentFd, cstr(name), 0o755);
        if (made < 0 && errno() !== Errno.EEXIST) throw new SysError("mkdir", errno(), path);
        const fd = openDirTrusted(name, parentFd);
        fds.push(fd);
        return fd;
      };
      this.#blobsParentFd = subdir(this.#dirFd, "blobs", `${this.#layout.path}/blobs`);
      this.#blobsFd = subdir(this.#blobsParentFd, "sha256", `${this.#layout.path}/blobs/sha256`);
      // Said before the conversion, not after it (a read-only layout failed at its first blob).
      for (const dir of [this.#layout.path, `${this.#layout.path}/blobs/sha256`]) {
        const refused = dirWriteErrno(dir);
        if (refused) {
          throw new UserError(
            `cannot write OCI layout ${this.#layout.path}: ${strerror(refused)}` +
              (dir === this.#layout.path ? "" : ` (${dir})`),
            "make it writable, or convert to another destination",
          );
        }
      }
      if (!pathThere(`${this.#layout.path}/oci-layout`)) {
        this.#writeAtomically("oci-layout", new TextEncoder().encode(LAYOUT_VERSION));
      }
    } catch (error) {
      for (const fd of fds) closeFd(fd);
      if (error instanceof UntrustedSymlinkError) throw error;
      if (error instanceof UserError && !(error instanceof SysError)) throw error;
      throw new UserError(
        `cannot write OCI layout ${this.#layout.path}: ${(error as Error).message}`,
      );
    }
  }

  abandon(): void {
    // Only a layout this run made, and only while no tag (index.json) names anything in it.
    if (!this.#parent || pathThere(`${this.#layout.path}/index.json`)) return;
    for (const name of this.#written) unlinkIn(this.#blobsFd, name);
    unlinkIn(this.#dirFd, "oci-layout");
    unlinkIn(this.#blobsParentFd, "sha256", true);
    unlinkIn(this.#dirFd, "blobs", true);
    // Empty now unless something else wrote there: then it stays.
    unlinkIn(this.#parent.fd, this.#parent.name, true);
  }

  async previousLayers(): Promise<Descriptor[]> {
    const entries = (await this.#index()).filter((d) => d.annotations?.[REF_NAME] === this.#tag);
    const layers: Descriptor[] = [];
    let seen = 0;
    const visit = async (digest: string, depth: number) => {
      if (seen++ >= MAX_PREVIOUS_MANIFESTS) return;
      const bytes = await this.#readBlob(digest).catch(() => undefined);
      if (!bytes) return;
      try {
        const doc = parseManifestDocument(bytes, undefined);
        if (doc.kind === "index" && depth === 0) {
          for (const child of doc.manifests) await visit(child.digest, 1);
        } else layers.push(...layersOfManifest(bytes));
      } catch { /* not ours to judge: nothing reusable there */ }
    };
    for (const entry of entries) await visit(entry.digest, 0);
    return layers;
  }

  hasBlob(digest: string): Promise<boolean> {
    try {
      const file = this.#layout.openBlob(digest);
      file.close();
      return Promise.resolve(true);
    } catch {
      return Promise.resolve(false);
    }
  }

  async readTable(
    digest: string,
    layer: { digest: string; sizeBytes: number },
  ): Promise<{ table: ChunkTable; sizeBytes: number }> {
    if (!(await this.hasBlob(digest))) {
      const missing = new OciError(`blob ${digest} not found in ${this.#layout.path}`);
      missing.status = 404;
      throw missing;
    }
    const bytes = await this.#readBlob(digest, MAX_TABLE_BYTES);
    return { table: parseChunkTable(bytes, layer), sizeBytes: bytes.byteLength };
  }

  async putBlob(blob: OutputBlob, onProgress?: (doneBytes: number) => void): Promise<void> {
    const target = this.#layout.blobPath(blob.digest);
    // A blob already there is trusted only if it hashes right (index.json names are claims).
    try {
      const existing = this.#layout.openBlob(blob.digest);
      try {
        await existing.verify(blob.digest);
        return;
      } catch {
        /* rewrite it */
      } finally {
        existing.close();
      }
    } catch { /* absent */ }
    const name = blob.digest.slice("sha256:".length);
    const out = NewFileInDir.create(target, { tempName: hiddenTempName, dirFd: this.#blobsFd });
    try {
      if (blob.bytes) out.write(blob.bytes);
      else copySparse(blob.path!, out.fd, blob.sizeBytes, target);
      out.commit();
      this.#written.add(name);
      onProgress?.(blob.sizeBytes);
    } catch (error) {
      if (error instanceof UserError) throw error;
      throw new UserError(`cannot write ${target}: ${(error as Error).message}`);
    } finally {
      out.discard();
    }
  }

  async putManifest(bytes: Uint8Array<ArrayBuffer>, mediaType: string): Promise<string> {
    const digest = digestOf(bytes);
    await this.putBlob({ digest, sizeBytes: bytes.byteLength, mediaType, bytes });
    return digest;
  }

  async tag(bytes: Uint8Array<ArrayBuffer>, mediaType: string): Promise<string> {
    const digest = await this.putManifest(bytes, mediaType);
    // Other entries are kept as they were written, with fields this tool does not model.
    const { raw } = await this.#readIndex();
    const kept: unknown[] = raw.filter((entry) => {
      const annotations = (entry as { annotations?: Record<string, unknown> }).annotations;
      return annotations?.[REF_NAME] !== this.#tag;
    });
    kept.push({
      mediaType,
      digest,
      size: bytes.byteLength,
      annotations: { [REF_NAME]: this.#tag },
    });
    const index = { schemaVersion: 2, mediaType: OCI_INDEX, manifests: kept };
    this.#writeAtomically("index.json", new TextEncoder().encode(JSON.stringify(index)));
    return `${this.name}@${digest}`;
  }

  async #index(): Promise<Descriptor[]> {
    return (await this.#readIndex()).manifests;
  }

  /** index.json's entries, parsed (checked) and as raw JSON objects in the same order. */
  async #readIndex(): Promise<{ manifests: Descriptor[]; raw: unknown[] }> {
    let file: LayoutFile;
    try {
      file = LayoutFile.open(`${this.#layout.path}/index.json`, "index.json");
    } catch (error) {
      if (error instanceof OciError && error.status === 404) return { manifests: [], raw: [] };
      throw error;
    }
    try {
      const bytes = await file.readAll(MAX_MANIFEST_BYTES, `${this.#layout.path}/index.json`);
      const doc = parseManifestDocument(bytes, OCI_INDEX, `${this.#layout.path}/index.json`);
      if (doc.kind !== "index") {
        throw new OciError(`${this.#layout.path}/index.json is not an index`);
      }
      return {
        manifests: doc.manifests,
        raw: parseJson(new TextDecoder().decode(bytes)).manifests,
      };
    } finally {
      file.close();
    }
  }

  async #readBlob(digest: string, maxBytes = MAX_MANIFEST_BYTES): Promise<Uint8Array> {
    const file = this.#layout.openBlob(digest);
    try {
      const bytes = await file.readAll(maxBytes, `blob ${digest}`);
      if (digestOf(bytes, digest) !== digest) throw new OciError(`blob ${digest} is corrupt`);
      return bytes;
    } finally {
      file.close();
    }
  }

  /** Writes `name` in the layout directory, named once complete. */
  #writeAtomically(name: string, bytes: Uint8Array): void {
    writeFileIn(this.#dirFd, `${this.#layout.path}/${name}`, bytes);
  }
}

function pathThere(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Copies the converted image at `path` (`sizeBytes` long) into `fd` with its holes left holes:
 * a layer of a few KiB whose tar has a sparse member of terabytes converts to an image of the
 * same few KiB on disk, which a byte-by-byte copy wrote out whole until the layout's disk was
 * full.
 */
function copySparse(path: string, fd: number, sizeBytes: number, target: string): void {
  const source = openFile(path, O_RDONLY);
  try {
    copyRange(source, 0, fd, 0, sizeBytes, target);
    unwrap(libc().ftruncate(fd, BigInt(sizeBytes)), "ftruncate", target);
  } finally {
    closeFd(source);
  }
}
