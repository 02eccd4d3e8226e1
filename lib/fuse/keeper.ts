/**
 * The keeper of a FUSE mount's /dev/fuse descriptors. A FUSE connection lives as long as some
 * process holds its descriptor: when the mount server dies (SIGKILL, OOM) the keeper still
 * does, so the kernel keeps the mounts and queues requests instead of failing them, and a new
 * server takes a copy of the descriptors with pidfd_getfd (5.6+, root) — no socket protocol
 * to get wrong.
 *
 * The keeper is `sleep` (about 2 MB, against some 60 MB for a Deno process) that gets copies of
 * the descriptors, made in the child by posix_spawn (ffi/spawn.ts). It never reads /dev/fuse.
 * It runs in its own session, so it outlives the server; the server ends it when it stops on
 * purpose, and `umount` ends it when the server is dead. Its environment names the
 * mount it keeps (KEEPER_OWNER_ENV), so one whose pid was never recorded (the server died in
 * between) can still be found and ended.
 */
import { closeFd, libc, unwrap } from "../../ffi/libc.ts";
import { listDirectory, pathExists, readSmallFile } from "../../ffi/files.ts";
import { pidfdGetFd, pidfdOpen } from "../../ffi/process.ts";
import { spawnInNewSession } from "../../ffi/spawn.ts";
import { MountError } from "../errors.ts";
import { processStartTicks } from "../state/server_liveness.ts";

/** The keeper's argument (68 years): it marks a keeper in its command line, too. */
export const KEEPER_SLEEP_SECONDS = "2147483647";
const SLEEP_PATHS = ["/usr/bin/sleep", "/bin/sleep"];
/** Environment entry of a keeper: `EROFS_OCI_FUSE_KEEPER_OF=<owner>` (the mount's runtime dir). */
export const KEEPER_OWNER_ENV = "EROFS_OCI_FUSE_KEEPER_OF";

/** /dev/fuse is the misc character device 10:229 (Documentation/admin-guide/devices.txt). */
const FUSE_DEV_MAJOR = 10, FUSE_DEV_MINOR = 229;
const S_IFMT = 0o170000, S_IFCHR = 0o020000;

/** A running keeper: pid, start time (against pid reuse) and the descriptors it holds. */
export interface KeeperProcess {
  pid: number;
  startTicks: string;
  /** Per layer: the descriptor number inside the keeper. */
  fds: number[];
}

/**
 * Starts a keeper holding copies of `fds` (this process's /dev/fuse descriptors), in its own
 * session, marked as `owner`'s (keepersOwnedBy). The copies are made in the child only
 * (spawnInNewSession), so no other spawn of this process can inherit them.
 */
export async function startKeeper(fds: number[], owner: string): Promise<KeeperProcess> {
  const sleep = SLEEP_PATHS.find((path) => pathExists(path));
  if (!sleep) {
    throw new MountError(`no sleep program (${SLEEP_PATHS.join(", ")}) for the FUSE keeper`);
  }
  const child = await spawnInNewSession(
    sleep,
    [KEEPER_SLEEP_SECONDS],
    { ...Deno.env.toObject(), [KEEPER_OWNER_ENV]: owner },
    fds,
  );
  // Our child (never waited for) until this process exits: the pid cannot be reused before
  // this read.
  const startTicks = processStartTicks(child.pid);
  if (!startTicks) throw new MountError("the FUSE keeper exited right after it started");
  return { pid: child.pid, startTicks, fds: child.fds };
}

/** True when `keeper` still runs (same pid, same start time, keeper command line). */
export function keeperAlive(keeper: Pick<KeeperProcess, "pid" | "startTicks">): boolean {
  if (!Number.isSafeInteger(keeper.pid) || keeper.pid <= 0) return false;
  if (processStartTicks(keeper.pid) !== keeper.startTicks) return false;
  try {
    // Through libc: Deno's file APIs refuse /proc without --allow-all.
    const argv = readSmallFile(`/proc/${keeper.pid}/cmdline`)?.split("\0") ?? [];
    return argv[1] === KEEPER_SLEEP_SECONDS;
  } catch {
    return false;
  }
}

/**
 * Running keepers started for `owner`, found through /proc by their environment: those of a
 * server that died before it recorded its keeper. The caller checks each again through a pidfd
 * (keeperOwnedBy) before it signals it.
 */
export function keepersOwnedBy(owner: string): Pick<KeeperProcess, "pid" | "startTicks">[] {
  const found: Pick<KeeperProcess, "pid" | "startTicks">[] = [];
  for (const name of listDirectory("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    try {
      // The command line first: it rules out nearly every process with one small read.
      const argv = readSmallFile(`/proc/${pid}/cmdline`, 256)?.split("\0") ?? [];
      if (argv[1] !== KEEPER_SLEEP_SECONDS) continue;
      const startTicks = processStartTicks(pid);
      if (startTicks && keeperOwnedBy({ pid, startTicks }, owner)) found.push({ pid, startTicks });
    } catch { /* exited meanwhile */ }
  }
  return found;
}

/** True when `keeper` still runs and its environment names `owner`. */
export function keeperOwnedBy(
  keeper: Pick<KeeperProcess, "pid" | "startTicks">,
  owner: string,
): boolean {
  if (!keeperAlive(keeper)) return false;
  try {
    const environ = readSmallFile(`/proc/${keeper.pid}/environ`, 1 << 20)?.split("\0") ?? [];
    return environ.includes(`${KEEPER_OWNER_ENV}=${owner}`);
  } catch {
    return false; // exited meanwhile
  }
}

/**
 * Copies of the keeper's descriptors for this process, each checked to be /dev/fuse. The
 * keeper is checked through the pidfd after it was opened, so a reused pid yields nothing.
 */
export function takeFromKeeper(keeper: KeeperProcess): number[] {
  const pidfd = pidfdOpen(keeper.pid);
  const taken: number[] = [];
  try {
    if (!keeperAlive(keeper)) {
      throw new MountError(
        `the FUSE keeper (pid ${keeper.pid}) is gone`,
        "unmount and mount again",
      );
    }
    for (const fd of keeper.fds) {
      const copy = pidfdGetFd(pidfd, fd);
      taken.push(copy);
      assertFuseDevice(copy, `keeper fd ${fd}`);
    }
    return taken;
  } catch (error) {
    taken.forEach(closeFd);
    throw error;
  } finally {
    closeFd(pidfd);
  }
}

function assertFuseDevice(fd: number, what: string): void {
  // struct stat: st_mode u32 at 24 and st_rdev u64 at 40 on x86_64; 16 and 32 on arm64.
  const arm = Deno.build.arch === "aarch64";
  const buf = new Uint8Array(144);
  unwrap(libc().fstat(fd, buf), "fstat", what);
  const view = new DataView(buf.buffer);
  const mode = view.getUint32(arm ? 16 : 24, true);
  const rdev = view.getBigUint64(arm ? 32 : 40, true);
  // glibc's dev_t encoding (gnu_dev_major/minor); /dev/fuse fits the low 20 bits.
  const major = Number((rdev >> 8n) & 0xfffn),
    minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  const isFuse = (mode & S_IFMT) === S_IFCHR && major === FUSE_DEV_MAJOR &&
    minor === FUSE_DEV_MINOR;
  if (!isFuse) throw new MountError(`${what} is not /dev/fuse`);
}
