/**
 * Processes through libc: pidfds (signals that cannot reach a reused pid, descriptors taken
 * from another process), close-on-exec of inherited descriptors, thread priority, reaping.
 */
import { Errno, libc, SysError, unwrap } from "./libc.ts";
import { readSmallFile } from "./files.ts";

/** System call numbers shared by x86_64 and arm64 (the unified table from 5.1 on). */
const SYS_PIDFD_SEND_SIGNAL = 424,
  SYS_PIDFD_OPEN = 434,
  SYS_CLOSE_RANGE = 436,
  SYS_PIDFD_GETFD = 438;
/** close_range(2) flag (linux/close_range.h); fcntl F_SETFD and its one flag (asm-generic). */
const CLOSE_RANGE_CLOEXEC = 1 << 2, F_SETFD = 2, FD_CLOEXEC = 1;
/** Descriptors the fallback marks when close_range is missing (before 5.11). */
const FALLBACK_MAX_FD = 1024;

/**
 * Marks every descriptor from 3 up close-on-exec: those this process inherited without it (a
 * caller's `flock` lock, a pipe of a script) then do not reach the long-lived processes it
 * starts, which would hold them for as long as a mount lives. Descriptors opened by Deno are
 * close-on-exec already; a child gets its stdio and what is passed on purpose after this.
 */
export function closeInheritedOnExec(): void {
  const all = libc().syscall(
    BigInt(SYS_CLOSE_RANGE),
    3n,
    0xffffffffn,
    BigInt(CLOSE_RANGE_CLOEXEC),
    0n,
  );
  if (all === 0n) return;
  // Kernels before 5.11: one by one (a closed descriptor answers EBADF).
  for (let fd = 3; fd < FALLBACK_MAX_FD; fd++) libc().fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/** RLIMIT_NOFILE (the same number on x86_64 and arm64). */
const RLIMIT_NOFILE = 7;

/**
 * The open-file limits of this process (struct rlimit: two 64-bit rlim_t). Deno raises the soft
 * limit to the hard one as it starts, so the hard limit is what a process of ours gets.
 */
export function openFileLimits(): { soft: number; hard: number } {
  const limits = new BigUint64Array(2);
  unwrap(libc().getrlimit(RLIMIT_NOFILE, new Uint8Array(limits.buffer)), "getrlimit");
  // RLIM_INFINITY (all ones) and anything past 2^53 are as good as no limit.
  const asNumber = (value: bigint) =>
    value > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(value);
  return { soft: asNumber(limits[0]), hard: asNumber(limits[1]) };
}

/** A pidfd for `pid` (pidfd_open, 5.3+): signals sent through it cannot reach a reused pid. */
export function pidfdOpen(pid: number): number {
  return Number(
    unwrap(
      libc().syscall(BigInt(SYS_PIDFD_OPEN), BigInt(pid), 0n, 0n, 0n),
      "pidfd_open",
      `pid ${pid}`,
    ),
  );
}

/**
 * Raises the calling thread's nice value to `nice` unless it is that high already (Linux applies
 * setpriority(PRIO_PROCESS, 0) to the calling thread only; threads it starts later inherit it):
 * never a higher priority than the one it was given. False if refused.
 */
export function lowerThreadPriority(nice: number): boolean {
  if (libc().getpriority(0, 0) >= nice) return true;
  return libc().setpriority(0, 0, nice) === 0;
}

/**
 * `/proc/PID/NAME` of process `pid`, or undefined when there is no such process (ENOENT, or
 * ESRCH: it ended between the open and the read). Through libc: Deno's file APIs refuse /proc
 * without --allow-all.
 */
export function readProcFile(pid: number, name: string): string | undefined {
  try {
    return readSmallFile(`/proc/${pid}/${name}`);
  } catch (error) {
    if (error instanceof SysError && error.errno === Errno.ESRCH) return undefined;
    throw error;
  }
}

/**
 * The fields of `/proc/PID/stat` from the third (state) on, or undefined when there is no such
 * process. The command name (field 2) may hold spaces and parentheses, so fields are counted
 * after its closing parenthesis.
 */
export function procStatFields(pid: number): string[] | undefined {
  const stat = readProcFile(pid, "stat");
  return stat ? stat.slice(stat.lastIndexOf(")") + 2).split(" ") : undefined;
}

/** The parent of process `pid` (`/proc/PID/stat` field 4), or undefined when there is none. */
export function parentPid(pid: number): number | undefined {
  const ppid = Number(procStatFields(pid)?.[1]);
  return Number.isSafeInteger(ppid) ? ppid : undefined;
}

/** The signal number pidfdSendSignal takes for SIGKILL (asm-generic/signal.h). */
export const SIGKILL = 9;

/** pidfd_send_signal: signals exactly the process the pidfd was opened for. */
export function pidfdSendSignal(pidfd: number, signal: number): void {
  unwrap(
    libc().syscall(BigInt(SYS_PIDFD_SEND_SIGNAL), BigInt(pidfd), BigInt(signal), 0n, 0n),
    "pidfd_send_signal",
  );
}

/** pidfd_getfd (5.6+): a copy (close-on-exec) of descriptor `targetFd` of the pidfd's process. */
export function pidfdGetFd(pidfd: number, targetFd: number): number {
  return Number(
    unwrap(
      libc().syscall(BigInt(SYS_PIDFD_GETFD), BigInt(pidfd), BigInt(targetFd), 0n, 0n),
      "pidfd_getfd",
      `fd ${targetFd}`,
    ),
  );
}

/**
 * Reaps every child of this process that has exited (waitpid(-1, WNOHANG)); returns how many.
 * For a long-running parent of detached children (reattach --watch and the servers it starts),
 * which would otherwise keep each one as a zombie until it ends itself.
 */
export function reapExitedChildren(): number {
  const status = new Int32Array(new ArrayBuffer(4));
  let reaped = 0;
  for (;;) {
    const pid = libc().waitpid(-1, status, WNOHANG);
    if (pid <= 0) break;
    reaped++;
    // A child whose status() is awaited (a server that failed to start, its code wanted) finds
    // it here: its own waitpid comes too late and failed ("exited (code -1)").
    reapedElsewhere.set(pid, exitCodeOf(status[0]));
    if (reapedElsewhere.size > REAPED_KEPT) {
      reapedElsewhere.delete(reapedElsewhere.keys().next().value!);
    }
  }
  return reaped;
}

/** Exit codes of children reapExitedChildren reaped, by pid, the latest REAPED_KEPT. */
const reapedElsewhere = new Map<number, number>();
const REAPED_KEPT = 256;

/**
 * The exit code of child `pid` if reapExitedChildren reaped it (and took it from there), else
 * undefined.
 */
export function takeReapedExitCode(pid: number): number | undefined {
  const code = reapedElsewhere.get(pid);
  reapedElsewhere.delete(pid);
  return code;
}

/** A wait status as an exit code: the code, or 128 + the signal that ended it (as shells do). */
export function exitCodeOf(status: number): number {
  return (status & 0x7f) === 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f);
}
const WNOHANG = 1;
