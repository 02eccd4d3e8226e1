/**
 * A local OCI image layout (OCI image spec, image-layout.md): `oci-layout`, `index.json` and
 * `blobs/<algorithm>/<hex>`. Resolves images like a registry does and serves blobs from disk,
 * so `inspect`, `pull` and `mount` can take `oci:PATH[:TAG]` as well as a registry reference.
 */
import { OciError } from "../errors.ts";
import { Errno, SysError } from "../../ffi/libc.ts";
import { realPathTrusted } from "../../ffi/path_resolve.ts";
import { digestOf } from "./digest.ts";
import { LayoutFile } from "./layout_file.ts";
import { type DownloadOptions, partialNameFor, removeAbandonedPartials } from "./download.ts";
import { NewFileInDir } from "../../ffi/new_file_in_dir.ts";
import {
  type Descriptor,
  MAX_MANIFEST_BYTES,
  parseConfigPlatform,
  parseManifestDocument,
} from "./manifest.ts";
import { OCI_INDEX } from "./media_types.ts";
import { hostPlatform, parsePlatform } from "./platform.ts";
import { DIGEST_PATTERN } from "./reference.ts";
import { type FetchedManifest, type ResolvedImage, resolveDocument } from "./resolve.ts";

/** `oci:PATH[:TAG][@DIGEST]`: an image in a local OCI layout directory. */
export interface LayoutReference {
  layoutPath: string;
  tag?: string;
  digest?: string;
}

/** Prefix that marks an image argument as an OCI layout path. */
export const LAYOUT_PREFIX = "oci:";
/** Annotation naming an index.json entry (OCI image spec, annotations.md). */
const REF_NAME = "org.opencontainers.image.ref.name";
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/**
 * Parses `oci:PATH[:TAG][@sha256:…]`, or returns undefined when `text` does not start with
 * `oci:`. A `:` after the last `/` separates the tag.
 *
 * @example
 * parseLayoutReference("oci:./out:v1") // {layoutPath: "./out", tag: "v1"}
 */
export function parseLayoutReference(text: string): LayoutReference | undefined {
  if (!text.startsWith(LAYOUT_PREFIX)) return undefined;
  let rest = text.slice(LAYOUT_PREFIX.length);
  const ref: LayoutReference = { layoutPath: "" };
  const at = rest.lastIndexOf("@");
  if (at >= 0 && rest.lastIndexOf("/") < at) {
    const digest = rest.slice(at + 1);
    if (!DIGEST_PATTERN.test(digest)) {
      throw new OciError(`invalid image reference '${text}': bad digest after '@'`, undefined, {
        exitCode: 2,
      });
    }
    ref.digest = digest;
    rest = rest.slice(0, at);
  }
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    const tag = rest.slice(colon + 1);
    if (!TAG.test(tag)) {
      throw new OciError(`invalid image reference '${text}': bad tag '${tag}'`, undefined, {
        exitCode: 2,
      });
    }
    ref.tag = tag;
    rest = rest.slice(0, colon);
  }
  if (rest === "") {
    throw new OciError(
      `invalid image reference '${text}': missing layout path after 'oci:'`,
      undefined,
      {
        exitCode: 2,
      },
    );
  }
  ref.layoutPath = rest;
  return ref;
}

/** Formats a layout reference back to `oci:PATH[:TAG][@DIGEST]`. */
export function formatLayoutReference(ref: LayoutReference): string {
  return `${LAYOUT_PREFIX}${ref.layoutPath}${ref.tag !== undefined ? `:${ref.tag}` : ""}${
    ref.digest !== undefined ? `@${ref.digest}` : ""
  }`;
}

/**
 * An OCI layout directory. Implements the reading half of RegistryClient (`resolveImage`,
 * `readBlobRange`, `downloadBlob`, `close`); the `repository` argument of the blob methods is
 * ignored. For mounts, `blobPath(digest)` is a plain file that a LocalFile source can serve.
 */
export class OciLayout {
  readonly path: string;
  /** Directories of the layout as realPathTrusted gave them, by their path inside it. */
  readonly #trustedDirs = new Map<string, string>();

  constructor(path: string) {
    this.path = path.replace(/\/+$/, "") || "/";
  }

  /**
   * Path of a blob file inside the layout, by directories resolved without others' symlinks: a
   * layout (or its `blobs/sha256`) that is another user's link to a directory of root's would
   * have root read, serve or copy out files only root may read.
   */
  blobPath(digest: string): string {
    if (!DIGEST_PATTERN.test(digest)) throw new OciError(`invalid digest '${digest}'`);
    const colon = digest.indexOf(":");
    const dir = this.#trustedDir(
      `blobs/${digest.slice(0, colon)}`,
      `blob not found: ${digest} in OCI layout ${this.path}`,
    );
    return `${dir}/${digest.slice(colon + 1)}`;
  }

  /** Path of index.json, by the layout's directory resolved as blobPath's are. */
  #indexPath(): string {
    return `${this.#trustedDir("", `${this.path}: no such directory`)}/index.json`;
  }

  /**
   * `sub` ("" for the layout itself) resolved by realPathTrusted once; when it does not exist,
   * an OciError with status 404 and `missing` as its message.
   */
  #trustedDir(sub: string, missing: string): string {
    let real = this.#trustedDirs.get(sub);
    if (real === undefined) {
      try {
        real = realPathTrusted(sub ? `${this.path}/${sub}` : this.path);
      } catch (error) {
        if (!(error instanceof SysError) || error.errno !== Errno.ENOENT) throw error;
        const notFound = new OciError(missing);
        notFound.status = 404;
        throw notFound;
      }
      this.#trustedDirs.set(sub, real);
    }
    return real;
  }

  /** Resolves a tag, digest or (neither) the whole index.json to one platform's manifest. */
  async resolveImage(ref: LayoutReference, platform?: string): Promise<ResolvedImage> {
    const wanted = parsePlatform(platform ?? hostPlatform());
    const name = formatLayoutReference(ref);
    const index = await this.readIndex();
    // The tags index.json names, each once, in its order.
    const tags = [
      ...new Set(index.manifests.map((d) => d.annotations?.[REF_NAME]).filter(Boolean)),
    ];
    let top: FetchedManifest;
    let topIsBlob = true;
    if (ref.digest) {
      top = await this.document(ref.digest);
    } else if (ref.tag !== undefined) {
      const entries = index.manifests.filter((d) => d.annotations?.[REF_NAME] === ref.tag);
      if (entries.length === 0) {
        throw new OciError(
          `tag '${ref.tag}' not found in ${this.path}/index.json${
            tags.length ? ` (tags: ${tags.join(", ")})` : ""
          }`,
        );
      }
      topIsBlob = entries.length === 1;
      top = topIsBlob ? await this.document(entries[0].digest) : syntheticIndex(entries);
    } else {
      // Several tagged images: which one is meant only a tag says (by platform, the choice
      // would fail on their lack of one as "no manifest for platform …", or pick at random).
      if (tags.length > 1) {
        throw new OciError(
          `${name} holds ${tags.length} tagged images (tags: ${tags.join(", ")}); name one`,
          `e.g. ${formatLayoutReference({ ...ref, tag: tags[0] })}`,
          { exitCode: 2 },
        );
      }
      top = index.fetched;
      topIsBlob = false;
    }
    const resolved = await resolveDocument(
      top,
      {
        manifest: (digest) => this.document(digest),
        configPlatform: async (config) => {
          // Checked as a registry's is: a config that is not the one the manifest names must
          // not choose the platform.
          const bytes = await this.#readSmallBlob(config.digest);
          if (digestOf(bytes, config.digest) !== config.digest) {
            throw new OciError(`config ${config.digest} in ${this.path} does not match its digest`);
          }
          return parseConfigPlatform(bytes);
        },
      },
      wanted,
      platform !== undefined,
      name,
    );
    // index.json and a tag's entries grouped by us are not blobs: no digest to pin them by.
    if (!topIsBlob) delete resolved.indexDigest;
    return resolved;
  }

  /** Reads exactly `length` bytes at `offset` of a blob file. */
  async readBlobRange(
    _repository: string,
    digest: string,
    offset: number,
    length: number,
  ): Promise<Uint8Array> {
    const file = this.openBlob(digest);
    try {
      if (offset + length > file.size) {
        throw new OciError(`blob ${digest} in ${this.path} ends before byte ${offset + length}`);
      }
      return await file.read(offset, length);
    } finally {
      file.close();
    }
  }

  /**
   * Copies a blob to `path` (via a new file in its directory, see downloadBlob), verified against its digest: the bytes
   * written are the bytes hashed, all read from the one descriptor that was checked.
   */
  async downloadBlob(
    _repository: string,
    digest: string,
    path: string,
    options: DownloadOptions = {},
  ): Promise<{ sizeBytes: number }> {
    const source = this.openBlob(digest);
    try {
      if (options.expectedSizeBytes !== undefined && source.size !== options.expectedSizeBytes) {
        throw new OciError(
          `blob ${digest} is ${source.size} bytes but the manifest says ${options.expectedSizeBytes}`,
        );
      }
      const out = NewFileInDir.create(path, { tempName: partialNameFor });
      try {
        removeAbandonedPartials(path, out.dirFd);
        await source.verify(digest, (chunk, done) => {
          options.signal?.throwIfAborted();
          out.write(chunk);
          options.onProgress?.(done, source.size);
        });
        out.commit();
      } finally {
        out.discard();
      }
      return { sizeBytes: source.size };
    } finally {
      source.close();
    }
  }

  /** Nothing to release; files are opened per call. */
  close(): void {}

  /**
   * Opens a blob file once (no symlink, regular file, see layout_file.ts); the caller reads,
   * verifies or serves that descriptor and closes it.
   */
  openBlob(digest: string): LayoutFile {
    try {
      // blobPath is symlink-free (realPathTrusted): a directory swapped for a link since (the
      // layout is another user's) is refused, not followed to a blob of root's.
      return LayoutFile.open(this.blobPath(digest), `blob ${digest}`, undefined, {
        noSymlinks: true,
      });
    } catch (error) {
      if (error instanceof OciError && error.status === 404) {
        throw new OciError(`blob not found: ${digest} in OCI layout ${this.path}`);
      }
      throw error;
    }
  }

  async #readSmallBlob(digest: string): Promise<Uint8Array> {
    const file = this.openBlob(digest);
    try {
      return await file.readAll(MAX_MANIFEST_BYTES, `blob ${digest}`);
    } finally {
      file.close();
    }
  }

  /** The manifest or index blob `digest`, parsed once it matches its digest. */
  async document(digest: string): Promise<FetchedManifest> {
    const bytes = await this.#readSmallBlob(digest);
    if (digestOf(bytes, digest) !== digest) {
      throw new OciError(`manifest ${digest} in ${this.path} does not match its digest`);
    }
    return {
      digest,
      bytes,
      document: parseManifestDocument(bytes, undefined, `manifest ${digest}`),
    };
  }

  /** The layout's index.json (an image index, within MAX_MANIFEST_BYTES). */
  async readIndex(): Promise<{ fetched: FetchedManifest; manifests: Descriptor[] }> {
    let file: LayoutFile;
    try {
      file = LayoutFile.open(this.#indexPath(), "index.json");
    } catch (error) {
      if (error instanceof OciError && error.status === 404) {
        throw new OciError(
          `${this.path} is not an OCI image layout (no index.json)`,
          "oci:PATH takes a directory written by e.g. `skopeo copy ... oci:PATH:TAG`",
        );
      }
      throw error;
    }
    let bytes: Uint8Array;
    try {
      bytes = await file.readAll(MAX_MANIFEST_BYTES, `${this.path}/index.json`);
    } finally {
      file.close();
    }
    const document = parseManifestDocument(bytes, OCI_INDEX, `${this.path}/index.json`);
    if (document.kind !== "index") {
      throw new OciError(`${this.path}/index.json is not an image index`);
    }
    return { fetched: { digest: digestOf(bytes), bytes, document }, manifests: document.manifests };
  }
}

/** Several index.json entries share a tag (one per platform): treat them as one index. */
function syntheticIndex(entries: Descriptor[]): FetchedManifest {
  const bytes = new TextEncoder().encode(
    JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: entries }),
  );
  return {
    digest: digestOf(bytes),
    bytes,
    document: { kind: "index", mediaType: OCI_INDEX, manifests: entries },
  };
}
