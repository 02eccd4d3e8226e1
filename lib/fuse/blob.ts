/**
 * A `Source` shown as one read-only file on a private FUSE mount, spoken over /dev/fuse by
 * this process (no libfuse). EROFS is then mounted on that file (lib/mount/erofs_file.ts).
 *
 * Threads: the process's reader thread (reader_worker.ts, one for every connection) polls
 * /dev/fuse and posts each request here; this thread answers metadata at once and READs when
 * `source.read` resolves, with one write() per reply.
 * So this thread must never make a blocking call that needs a FUSE reply (mount(2) of EROFS on
 * the file, stat of the mount): those go to worker threads too (lib/sys/mount_task.ts).
 */
import { closeFd, O_RDWR } from "../../ffi/libc.ts";
import { openFile } from "../../ffi/files.ts";
import { mount, MS_NODEV, MS_NOSUID, MS_RDONLY } from "../../ffi/mount.ts";
import { MountError } from "../errors.ts";
import { findMount } from "../sys/mountinfo.ts";
import type { Source } from "../source/source.ts";
import { FuseConnection } from "./connection.ts";

export { discardSpareFuseReaders, prestartFuseReaders } from "./connection.ts";

/** The file system type in mountinfo: `fuse.erofs-oci` marks our mounts. */
export const FUSE_FS_TYPE = "fuse.erofs-oci";

export interface FuseBlob {
  /** The file to open or mount: `<mountDir>/<name>`. */
  readonly filePath: string;
  /** Where the FUSE file system is mounted. */
  readonly mountDir: string;
  /** Linux thread id of the /dev/fuse reader (a worker thread), for diagnostics and tests. */
  readonly readerThreadId: number;
  /**
   * READ requests answered and bytes served so far; `directReads`: READs the reader thread
   * answered from the disk cache file by itself (reader_worker.ts).
   */
  stats(): { reads: number; bytes: number; directReads: number };
  /** The /dev/fuse descriptor: a keeper holds a copy so the mount outlives this process. */
  readonly fd: number;
  /** The file's mtime as told to the kernel (a server taking over tells the same). */
  readonly fileMtimeSec: number;
  /** N of /sys/fs/fuse/connections/N (undefined when its mount was not found). */
  readonly connectionNumber?: number;
  /**
   * Unmounts the FUSE file system and takes it off the reader thread (which ends with its last
   * connection). Rejects with MountError (and keeps serving) while something — the EROFS
   * mount — still uses the file: unmount that first.
   */
  close(): Promise<void>;
}

export interface FuseBlobOptions {
  /** Name of the file inside the mount (default `blob`; a layer digest works too). */
  name?: string;
  /**
   * Serve a mount that exists already, whose server died: `fd` is a copy of its /dev/fuse
   * descriptor (from the keeper); requests the dead server left unanswered are resent.
   */
  takeover?: { fd: number; mtimeSec: number };
  /**
   * Let the kernel cache the file's pages and read ahead (see FuseServerLimits.pageCache):
   * few, large READs instead of one per EROFS read. Readahead 256 KiB, or 1 MiB when the reader
   * thread answers READs from a disk cache itself (connection.ts).
   */
  pageCache?: boolean;
}

/**
 * Mounts a FUSE file system at `mountDir` (created if missing; keep it private, e.g. in the
 * runtime dir) showing `source` as the file `<mountDir>/<name>`; resolves once the kernel's
 * INIT is answered.
 *
 * @example
 * const blob = await startFuseBlob(source, `${runDir}/fuse/${layer}`);
 * await mountErofsFile(blob.filePath, layerDir);
 * // … later: await unmountErofs(layerDir); await blob.close();
 */
export async function startFuseBlob(
  source: Source,
  mountDir: string,
  opts: FuseBlobOptions = {},
): Promise<FuseBlob> {
  const name = opts.name ?? "blob";
  if (!name || name === "." || name === ".." || name.includes("/") || name.length > 255) {
    throw new MountError(`bad FUSE file name "${name}"`);
  }
  const dir = absolute(mountDir);
  if (opts.takeover) {
    return await resumeFuseBlob(source, dir, name, opts.takeover, opts.pageCache);
  }
  // mountinfo first: stat() of a mount point whose server is wedged would never return.
  if (findMount(dir)) throw new MountError(`${dir} is already a mount point`);
  let created = false;
  try {
    Deno.mkdirSync(dir, { mode: 0o700 });
    created = true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
      created = true;
    } else if (!(error instanceof Deno.errors.AlreadyExists)) {
      throw error;
    }
  }

  let fd: number;
  try {
    fd = openFile("/dev/fuse", O_RDWR);
  } catch (error) {
    if (created) Deno.removeSync(dir);
    throw new MountError(
      `cannot open /dev/fuse: ${(error as Error).message}`,
      "load the fuse module (`modprobe fuse`) and run as root",
      { cause: error },
    );
  }
  try {
    mount(
      "erofs-oci",
      dir,
      FUSE_FS_TYPE,
      MS_RDONLY | MS_NOSUID | MS_NODEV,
      `fd=${fd},rootmode=40000,user_id=${Deno.uid() ?? 0},group_id=${Deno.gid() ?? 0},` +
        "allow_other,default_permissions",
    );
  } catch (error) {
    closeFd(fd);
    if (created) Deno.removeSync(dir);
    throw new MountError(`cannot mount FUSE on ${dir}: ${(error as Error).message}`, undefined, {
      cause: error,
    });
  }
  const connection = new FuseConnection(fd, dir, name, source, created, {
    pageCache: opts.pageCache,
  });
  try {
    await connection.ready();
  } catch (error) {
    await connection.abandon();
    throw error;
  }
  return blobOf(connection, dir, name);
}

function blobOf(connection: FuseConnection, dir: string, name: string): FuseBlob {
  return {
    filePath: `${dir}/${name}`,
    mountDir: dir,
    readerThreadId: connection.readerThreadId,
    fd: connection.fd,
    fileMtimeSec: connection.server.fileMtimeSec,
    connectionNumber: connection.connectionNumber,
    stats: () => connection.server.stats(),
    close: () => connection.close(),
  };
}

/** Takes over the FUSE mount at `dir` through `takeover.fd`, then asks for the lost requests. */
async function resumeFuseBlob(
  source: Source,
  dir: string,
  name: string,
  takeover: { fd: number; mtimeSec: number },
  pageCache?: boolean,
): Promise<FuseBlob> {
  if (findMount(dir)?.fsType !== FUSE_FS_TYPE) {
    closeFd(takeover.fd);
    throw new MountError(`${dir} is no longer an erofs-oci FUSE mount: nothing to take over`);
  }
  const connection = new FuseConnection(takeover.fd, dir, name, source, true, {
    resume: { mtimeSec: takeover.mtimeSec },
    pageCache,
  });
  await connection.ready();
  connection.requestResend();
  return blobOf(connection, dir, name);
}

function absolute(path: string): string {
  const full = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  return full.replace(/\/+$/, "") || "/";
}
