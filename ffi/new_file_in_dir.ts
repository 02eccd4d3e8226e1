/**
 * A file root writes at a path a user may control (`build -o`, `pull -o`, `trace -o`, and
 * downloads into root's own directories): made new in the path's directory, written through its
 * own descriptor, and named only once complete — every step relative to one descriptor of that
 * directory. By path, a user who owns a parent directory could swap it for a symlink between the
 * steps and have root link and rename the file into another directory (a helper did with
 * `build -o`, replacing a file outside the tree); a failure or an interrupt leaves what was there.
 */
import {
  AT_FDCWD,
  AT_REMOVEDIR,
  AT_SYMLINK_FOLLOW,
  closeFd,
  cstr,
  Errno,
  errno,
  libc,
  O_CLOEXEC,
  O_CREAT,
  O_EXCL,
  O_RDWR,
  O_TMPFILE,
  strerror,
  SysError,
  unwrap,
} from "./libc.ts";
import { openDirTrusted } from "./path_resolve.ts";
import { writeAll } from "./io.ts";
import { UserError } from "../lib/errors.ts";

const EISDIR = 21, EOPNOTSUPP = 95;

/** The directory `path` names its file in ("." for a bare name) and that name. */
export function splitPath(path: string): { dir: string; base: string } {
  const slash = path.lastIndexOf("/");
  return { dir: slash < 0 ? "." : path.slice(0, slash) || "/", base: path.slice(slash + 1) };
}

export interface NewFileOptions {
  /** The name it has while written where the file system has no unnamed files (O_TMPFILE). */
  tempName: (base: string) => string;
  /**
   * The directory, already open (several files written in one directory through one
   * descriptor); the caller closes it. Else `path`'s directory is opened here.
   */
  dirFd?: number;
}

/** `.NAME.RANDOM.tmp`: hidden beside the file it becomes. */
export function hiddenTempName(base: string): string {
  return `.${base}.${crypto.randomUUID().slice(0, 8)}.tmp`;
}

/** A temporary file untouched this long was left by a writer that ended without its clean-up. */
const ABANDONED_TEMP_MS = 60 * 60 * 1000;

/**
 * Removes the files in `dir` (open as `dirFd`) named `prefix` + 8 hex digits + `suffix` that no
 * one wrote to within `maxAgeMs` (an hour): what a crash (SIGKILL, power loss) left where the
 * file system has no unnamed files, or a file handed to a process that never started. Each has
 * a name of its own, so nothing else would ever replace them; one written to lately may belong
 * to a writer still running. Removed through `dirFd`.
 */
export function removeAbandonedTemps(
  dir: string,
  dirFd: number,
  prefix: string,
  suffix: string,
  maxAgeMs = ABANDONED_TEMP_MS,
): void {
  const quote = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const ours = new RegExp(`^${quote(prefix)}[0-9a-f]{8}${quote(suffix)}$`);
  let names: string[];
  try {
    names = [...Deno.readDirSync(dir)].filter((e) => e.isFile && ours.test(e.name)).map((e) =>
      e.name
    );
  } catch {
    return; // the writer's own open says what is wrong with the directory
  }
  const now = Date.now();
  for (const name of names) {
    try {
      const stat = Deno.lstatSync(`${dir}/${name}`);
      if (stat.isFile && now - (stat.mtime?.getTime() ?? now) > maxAgeMs) {
        libc().unlinkat(dirFd, cstr(name), 0);
      }
    } catch { /* gone meanwhile */ }
  }
}

export class NewFileInDir {
  /** The descriptor to write the file's bytes to. */
  readonly fd: number;
  readonly path: string;
  readonly dirFd: number;
  readonly #base: string;
  readonly #tempName: string;
  #anonymous: boolean;
  #fdOpen = true;
  /** Whether #tempName is in the directory (to remove on discard). */
  #tempNamed: boolean;
  #done = false;
  readonly #ownsDirFd: boolean;

  private constructor(
    path: string,
    dir: { fd: number; owned: boolean },
    fd: number,
    tempName: string,
    anonymous: boolean,
  ) {
    this.path = path;
    this.dirFd = dir.fd;
    this.#ownsDirFd = dir.owned;
    this.fd = fd;
    this.#base = splitPath(path).base;
    this.#tempName = tempName;
    this.#anonymous = anonymous;
    this.#tempNamed = !anonymous;
  }

  /** Opens the directory of `path` and a new file in it; UserError naming `path` on refusal. */
  static create(path: string, options: NewFileOptions): NewFileInDir {
    const { dir, base } = splitPath(path);
    let dirFd = options.dirFd;
    if (dirFd === undefined) {
      try {
        dirFd = openDirTrusted(dir);
      } catch (error) {
        throw asUserError(path, error, dir);
      }
    }
    const owned = { fd: dirFd, owned: options.dirFd === undefined };
    const tempName = options.tempName(base);
    try {
      const anonymous = openUnnamed(dirFd, path);
      if (anonymous !== undefined) return new NewFileInDir(path, owned, anonymous, tempName, true);
      const flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC;
      const fd = unwrap(libc().openat(dirFd, cstr(tempName), flags, 0o644), "open", path);
      // Named: those of earlier writers killed here go (a build's image, a layout's blob).
      if (options.tempName === hiddenTempName) {
        removeAbandonedTemps(dir, dirFd, `.${base}.`, ".tmp");
      }
      return new NewFileInDir(path, owned, fd, tempName, false);
    } catch (error) {
      if (owned.owned) closeFd(dirFd);
      throw asUserError(path, error);
    }
  }

  /** Appends `bytes` at the descriptor's offset. */
  write(bytes: Uint8Array): void {
    try {
      writeAll(this.fd, bytes as Uint8Array<ArrayBuffer>);
    } catch (error) {
      throw asUserError(this.path, error);
    }
  }

  /** Writes `bytes` at `offset` (the descriptor's own offset stays). */
  writeAt(bytes: Uint8Array, offset: number): void {
    for (let done = 0; done < bytes.length;) {
      const n = Number(
        libc().pwrite(
          this.fd,
          bytes.subarray(done),
          BigInt(bytes.length - done),
          BigInt(offset + done),
        ),
      );
      if (n < 0) {
        const code = errno();
        if (code === Errno.EINTR) continue;
        throw asUserError(this.path, new SysError("write", code, this.path));
      }
      done += n;
    }
  }

  /** fdatasync(2): the bytes are on disk before the file gets its name. */
  sync(): void {
    try {
      unwrap(libc().fdatasync(this.fd), "fdatasync", this.path);
    } catch (error) {
      throw asUserError(this.path, error);
    }
  }

  /** Gives the complete file its name (replacing what had it), and closes it. */
  commit(): void {
    try {
      if (this.#anonymous) {
        // Only now does the file get a name (then the final one, atomically).
        unwrap(
          libc().linkat(
            AT_FDCWD,
            cstr(`/proc/self/fd/${this.fd}`),
            this.dirFd,
            cstr(this.#tempName),
            AT_SYMLINK_FOLLOW,
          ),
          "link",
          this.path,
        );
        this.#anonymous = false;
        this.#tempNamed = true;
      }
      this.#closeFile();
      unwrap(
        libc().renameat(this.dirFd, cstr(this.#tempName), this.dirFd, cstr(this.#base)),
        "rename",
        this.path,
      );
      this.#tempNamed = false;
    } catch (error) {
      this.discard();
      throw asUserError(this.path, error);
    }
    this.discard();
  }

  /**
   * A failure of a write its caller made through `fd` (which knows a descriptor only): a full
   * disk as one line naming the file; anything else (a source's read error) unchanged.
   */
  failure(error: unknown): unknown {
    const full = error instanceof SysError &&
      (error.errno === Errno.ENOSPC || error.errno === Errno.EDQUOT);
    return full ? asUserError(this.path, error) : error;
  }

  /** Closes everything and removes the file unless it was committed; safe to call again. */
  discard(): void {
    if (this.#done) return;
    this.#done = true;
    this.#closeFile();
    if (this.#tempNamed) unlinkIn(this.dirFd, this.#tempName);
    if (this.#ownsDirFd) closeFd(this.dirFd);
  }

  #closeFile(): void {
    if (!this.#fdOpen) return;
    this.#fdOpen = false;
    closeFd(this.fd);
  }
}

/**
 * Removes `name` (relative to `dirFd`; with `directory`, an empty directory) if it is there:
 * clean-up that goes through the directory written to, never by path.
 */
export function unlinkIn(dirFd: number, name: string, directory = false): void {
  libc().unlinkat(dirFd, cstr(name), directory ? AT_REMOVEDIR : 0);
}

/** Removes the file `path` names in `dirFd` (a written index file a failure leaves). */
export function removeIn(dirFd: number, path: string): void {
  unlinkIn(dirFd, splitPath(path).base);
}

/** Writes `bytes` as the file `path` in `dirFd`, named once complete. */
export function writeFileIn(dirFd: number, path: string, bytes: Uint8Array): void {
  const out = NewFileInDir.create(path, { tempName: hiddenTempName, dirFd });
  try {
    out.write(bytes);
    out.commit();
  } finally {
    out.discard();
  }
}

/**
 * A scratch file in the directory `dir` (resolved as openDirTrusted does: never through another
 * user's symlink), mode 0600 and unnamed from the start where the file system allows, else made
 * and unlinked at once through the directory's descriptor: for data spooled next to an output.
 */
export function scratchFileIn(dir: string): number {
  const dirFd = openDirTrusted(dir);
  try {
    const unnamed = openUnnamed(dirFd, dir, 0o600);
    if (unnamed !== undefined) return unnamed;
    const name = hiddenTempName("erofs-oci-spool");
    const fd = unwrap(
      libc().openat(dirFd, cstr(name), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600),
      "open",
      `${dir}/${name}`,
    );
    unlinkIn(dirFd, name);
    return fd;
  } finally {
    closeFd(dirFd);
  }
}

/** An unnamed file (O_TMPFILE) in `dirFd`, or undefined where the file system has none. */
function openUnnamed(dirFd: number, path: string, mode = 0o644): number | undefined {
  try {
    return unwrap(
      libc().openat(dirFd, cstr("."), O_TMPFILE | O_RDWR | O_CLOEXEC, mode),
      "open",
      path,
    );
  } catch (error) {
    const code = error instanceof SysError ? error.errno : 0;
    if (code === EOPNOTSUPP || code === EISDIR || code === Errno.EINVAL) return undefined;
    throw error;
  }
}

/** The system's refusal as one line naming the file (and what helps when the disk is full). */
function asUserError(path: string, error: unknown, dir?: string): unknown {
  if (!(error instanceof SysError)) return error;
  const full = error.errno === Errno.ENOSPC || error.errno === Errno.EDQUOT;
  return new UserError(
    `cannot write ${path}: ${strerror(error.errno)}${dir ? ` (${dir})` : ""}`,
    full ? "free space on that file system, or write the file elsewhere" : undefined,
    { cause: error },
  );
}
