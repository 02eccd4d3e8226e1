/**
 * The keeper of a FUSE mount's /dev/fuse descriptors. A FUSE connection lives as long as some
 * process holds its descriptor: when the mount server dies (SIGKILL, OOM) the keeper still
 * does, so the kernel keeps the mounts and queues requests instead of failing them, and a new
 * server takes a copy of the descriptors with pidfd_getfd (5.6+, root) — no socket protocol
 * to get wrong. The keeper copies them from the server the same way when it starts.
 *
 * It never reads /dev/fuse: it only waits (poll with no events) until every connection is
 * aborted, which the kernel does when the FUSE mount goes away, and then exits.
 */
import {
  closeFd,
  Errno,
  errno,
  libc,
  pidfdGetFd,
  pidfdOpen,
  readSmallFile,
  SysError,
  unwrap,
} from "../../ffi/libc.ts";
import { MountError } from "../errors.ts";
import { selfCommand } from "../daemon/self_exec.ts";
import { processStartTicks } from "../mount/runtime.ts";

/** Argument that marks a keeper in its command line. */
export const KEEPER_COMMAND = "__fuse-keeper";

/** /dev/fuse is the misc character device 10:229 (Documentation/admin-guide/devices.txt). */
const FUSE_DEV_MAJOR = 10, FUSE_DEV_MINOR = 229;
const S_IFMT = 0o170000, S_IFCHR = 0o020000;
const KEEPER_READY_TIMEOUT_MS = 30_000;

/** A running keeper: pid, start time (against pid reuse) and the descriptors it holds. */
export interface KeeperProcess {
  pid: number;
  startTicks: string;
  /** Per layer: the descriptor number inside the keeper. */
  fds: number[];
}

/**
 * Starts a keeper holding copies of `fds` (this process's /dev/fuse descriptors). It runs in
 * its own session, so it survives this process and signals to its process group.
 */
export async function startKeeper(fds: number[]): Promise<KeeperProcess> {
  const [program, ...args] = selfCommand([KEEPER_COMMAND, String(Deno.pid), ...fds.map(String)]);
  const child = new Deno.Command(program, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
    detached: true,
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new MountError("the FUSE keeper did not start")),
        KEEPER_READY_TIMEOUT_MS,
      );
    });
    while (!text.includes("\n")) {
      const { value, done } = await Promise.race([reader.read(), timeout]);
      if (done) break;
      text += value;
    }
  } catch (error) {
    child.kill("SIGKILL");
    throw error;
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
    child.stdout.cancel().catch(() => {});
  }
  child.unref();
  let held: number[];
  try {
    held = JSON.parse(text.split("\n")[0]).fds;
  } catch {
    throw new MountError(`the FUSE keeper failed: ${text.trim() || "no answer"}`);
  }
  const startTicks = processStartTicks(child.pid);
  if (!startTicks) throw new MountError("the FUSE keeper exited right after it started");
  return { pid: child.pid, startTicks, fds: held };
}

/** True when `keeper` still runs (same pid, same start time, keeper command line). */
export function keeperAlive(keeper: Pick<KeeperProcess, "pid" | "startTicks">): boolean {
  if (!Number.isSafeInteger(keeper.pid) || keeper.pid <= 0) return false;
  if (processStartTicks(keeper.pid) !== keeper.startTicks) return false;
  try {
    // Through libc: Deno's file APIs refuse /proc without --allow-all.
    const cmdline = readSmallFile(`/proc/${keeper.pid}/cmdline`);
    return cmdline?.split("\0").includes(KEEPER_COMMAND) ?? false;
  } catch {
    return false;
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

/**
 * Body of the hidden `__fuse-keeper SERVER_PID FD…` command: copies the server's descriptors,
 * reports the numbers it holds them under, then waits until every connection is aborted.
 */
export function runKeeper(args: string[]): number {
  const [serverPid, ...fds] = args.map(Number);
  if (!Number.isSafeInteger(serverPid) || fds.length === 0 || fds.some((fd) => !(fd >= 0))) {
    console.error("usage: __fuse-keeper SERVER_PID FD…");
    return 2;
  }
  const held: number[] = [];
  try {
    const pidfd = pidfdOpen(serverPid);
    try {
      for (const fd of fds) {
        const copy = pidfdGetFd(pidfd, fd);
        held.push(copy);
        assertFuseDevice(copy, `server fd ${fd}`);
      }
    } finally {
      closeFd(pidfd);
    }
  } catch (error) {
    console.log(JSON.stringify({ error: (error as Error).message }));
    return 1;
  }
  console.log(JSON.stringify({ fds: held }));
  waitUntilAborted(held);
  return 0;
}

/** Blocks until poll reports an error or hang-up on every descriptor (events 0: never input). */
function waitUntilAborted(fds: number[]): void {
  const POLLERR = 8, POLLHUP = 16, POLLNVAL = 32;
  let open = [...fds];
  while (open.length > 0) {
    const pollfds = new Uint8Array(8 * open.length);
    const view = new DataView(pollfds.buffer);
    open.forEach((fd, i) => view.setInt32(8 * i, fd, true));
    const ready = libc().poll(pollfds, BigInt(open.length), -1);
    if (ready < 0) {
      const code = errno();
      if (code === Errno.EINTR) continue;
      throw new SysError("poll", code);
    }
    open = open.filter((fd, i) => {
      const gone = (view.getInt16(8 * i + 6, true) & (POLLERR | POLLHUP | POLLNVAL)) !== 0;
      if (gone) closeFd(fd);
      return !gone;
    });
  }
}
