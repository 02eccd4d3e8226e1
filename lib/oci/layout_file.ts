/**
 * Files of an OCI image layout opened the one safe way: by libc open with O_NOFOLLOW (a symlink
 * as the last component is refused) and O_NONBLOCK (a FIFO does not hang the open), then fstat
 * on the descriptor, which must be a regular file. Everything after that reads the same
 * descriptor, so a file swapped for a device, FIFO or symlink after the check is never read, and
 * reads are bounded by the size fstat reported, so `index.json` pointing at an endless file
 * cannot exhaust memory.
 */
import { OciError } from "../errors.ts";
import { closeFd, Errno, SysError } from "../../ffi/libc.ts";
import { fstatFd, openNoFollow, PooledReadFd, S_IFMT, S_IFREG } from "../../ffi/files.ts";
import type { Source } from "../source/source.ts";
import { openFileNoSymlinks } from "../../ffi/path_resolve.ts";
import { digestHasher } from "./digest.ts";

/** errno of open(O_NOFOLLOW) on a symlink (asm-generic/errno.h ELOOP). */
const ELOOP = 40;
/** Bytes hashed per read when verifying a whole blob. */
const HASH_CHUNK_BYTES = 1 << 20;

export class LayoutFile implements Source {
  readonly path: string;
  /** Size from fstat at open; reads never go past it. */
  readonly size: number;
  /** `dev:ino` from fstat at open: the file this is, whatever its path leads to later. */
  readonly fileId: string;
  readonly #fd: PooledReadFd;

  private constructor(path: string, fd: number, size: number, fileId: string) {
    this.path = path;
    this.#fd = new PooledReadFd(fd);
    this.size = size;
    this.fileId = fileId;
  }

  /**
   * Opens `path`; `what` names it in errors ("blob sha256:…", "index.json"), `where` says
   * what refuses other than regular files. Missing files give an OciError with `notFound`
   * set, so callers can phrase their own message.
   */
  static open(
    path: string,
    what: string,
    where = "in an OCI layout",
    options: { noSymlinks?: boolean } = {},
  ): LayoutFile {
    let fd: number;
    try {
      // noSymlinks: no component of the path a symlink either (a directory of another user's
      // on the way could be swapped for one after the path was resolved).
      fd = options.noSymlinks ? openFileNoSymlinks(path) : openNoFollow(path);
    } catch (error) {
      if (error instanceof SysError && error.errno === Errno.ENOENT) {
        const missing = new OciError(`${what} not found: ${path}`);
        missing.status = 404;
        throw missing;
      }
      if (error instanceof SysError && error.errno === ELOOP) {
        throw new OciError(
          !options.noSymlinks || isSymlink(path)
            ? `${what} is a symbolic link (${path}): refused ${where}`
            : `${what} (${path}) is reached through a symbolic link now: refused ${where}`,
        );
      }
      throw error;
    }
    try {
      const stat = fstatFd(fd, path);
      if ((stat.mode & S_IFMT) !== S_IFREG) {
        throw new OciError(`${what} is not a regular file (${path}): refused ${where}`);
      }
      return new LayoutFile(path, fd, stat.sizeBytes, `${stat.dev}:${stat.ino}`);
    } catch (error) {
      closeFd(fd);
      throw error;
    }
  }

  /** The whole file, refused when fstat says it is larger than `maxBytes`. */
  async readAll(maxBytes: number, what: string): Promise<Uint8Array> {
    if (this.size > maxBytes) {
      throw new OciError(`${what} is ${this.size} bytes, more than the ${maxBytes} allowed`);
    }
    return await this.read(0, this.size);
  }

  /** Exactly `length` bytes at `offset`, within the size fstat reported. */
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 ||
      length < 0 || offset + length > this.size
    ) {
      throw new OciError(`read of ${length} bytes at ${offset} outside ${this.path}`);
    }
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      if (this.#fd.closed) throw new OciError(`${this.path}: read after close`);
      const n = await this.#fd.pread(out.subarray(done), offset + done, this.path);
      if (n === 0) {
        throw new OciError(`${this.path} shrank: it ends at byte ${offset + done}`);
      }
      done += n;
    }
    return out;
  }

  /**
   * Hashes the whole file with the algorithm of `digest` and refuses a mismatch (a layout
   * is data from elsewhere; its file names are only claims). Calls `onChunk` with each piece
   * read, so a copy can be written from the very bytes that were hashed.
   */
  async verify(
    digest: string,
    onChunk?: (chunk: Uint8Array, doneBytes: number) => Promise<void> | void,
  ): Promise<void> {
    const actual = await this.contentDigest(digest, onChunk);
    if (actual !== digest) {
      throw new OciError(`blob ${digest} failed verification: its content hashes to ${actual}`);
    }
  }

  /** The file's digest in the algorithm of `like` (`sha256:…`), read in 1 MiB pieces. */
  async contentDigest(
    like = "sha256:",
    onChunk?: (chunk: Uint8Array, doneBytes: number) => Promise<void> | void,
  ): Promise<string> {
    const hasher = digestHasher(like);
    for (let offset = 0; offset < this.size; offset += HASH_CHUNK_BYTES) {
      const chunk = await this.read(offset, Math.min(HASH_CHUNK_BYTES, this.size - offset));
      hasher.update(chunk);
      await onChunk?.(chunk, offset + chunk.byteLength);
    }
    return `${like.slice(0, like.indexOf(":"))}:${hasher.digest("hex")}`;
  }

  /** The descriptor closes once the reads in flight have ended (PooledReadFd). */
  close(): void {
    this.#fd.close();
  }
}

/**
 * The source of a mounted OCI layout layer, for the server that serves it: the blob is opened
 * here once, must still have the size the manifest gave, and is hashed whole before the first
 * byte is served, all through the descriptor then served. What a writer changes in the file
 * later is not re-checked (the same holds for any local image). `hashWhole: false`: the caller
 * checks every byte it serves otherwise (a tar index's piece digests).
 */
export async function openLayoutBlob(
  layer: { path: string; sizeBytes: number; digest?: string; digestFromIndex?: boolean },
  options: { hashWhole?: boolean } = {},
): Promise<LayoutFile> {
  const hashWhole = options.hashWhole ?? true;
  // The path was resolved symlink-free when the mount checked it: a directory on it swapped
  // for a link since (another user's layout copy) would lead to a blob of root's.
  const file = LayoutFile.open(layer.path, `blob ${layer.digest ?? ""}`.trim(), undefined, {
    noSymlinks: true,
  });
  try {
    if (file.size !== layer.sizeBytes) {
      throw new OciError(
        `blob ${layer.path} is ${file.size} bytes but the manifest says ${layer.sizeBytes}`,
      );
    }
    if (!hashWhole) return file;
    if (layer.digest && layer.digestFromIndex) {
      const actual = await file.contentDigest(layer.digest);
      if (actual !== layer.digest) {
        throw new OciError(
          `${layer.path} is not the file its index was made for: the index names ` +
            `${layer.digest} of the same size, the file hashes to ${actual}`,
          "mount it with --index-missing (indexes it here), or pass --index DIR holding " +
            "its own index (`erofs-oci index FILE -o DIR`)",
        );
      }
    } else if (layer.digest) await file.verify(layer.digest);
    return file;
  } catch (error) {
    file.close();
    throw error;
  }
}

function isSymlink(path: string): boolean {
  try {
    return Deno.lstatSync(path).isSymlink;
  } catch {
    return false;
  }
}
