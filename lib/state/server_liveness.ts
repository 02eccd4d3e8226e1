/**
 * Whether a recorded mount server is still the process it was (a pid alone may have been
 * reused since), and stopping it. Apart from the records: the CLI entry (commands.ts) and the
 * server spawned ahead of mount's modules (server_spawn.ts) import SERVER_COMMAND, and every
 * module they load delays each start.
 */
import { closeFd, Errno, SysError } from "../../ffi/libc.ts";
import {
  pidfdOpen,
  pidfdSendSignal,
  procStatFields,
  readProcFile,
  SIGKILL,
} from "../../ffi/process.ts";

/** Argument that marks the detached mount server in its command line. */
export const SERVER_COMMAND = "__mount-server";

/** A server process as recorded: pid, and its start time when known. */
export interface ServerProcess {
  pid: number;
  startTicks?: string;
}

/**
 * Start time of process `pid` in clock ticks after boot (`/proc/PID/stat` field 22), or
 * undefined when there is no such process (or only its zombie).
 */
export function processStartTicks(pid: number): string | undefined {
  const fields = procStatFields(pid);
  // fields[0] is field 3 (state), so field 22 is fields[19].
  if (!fields || fields[0] === "Z") return undefined;
  return fields[19];
}

/**
 * True when `server` is a live erofs-oci mount server: its command line carries
 * SERVER_COMMAND and, when the start time was recorded, the process started at that time, so
 * a pid reused after a crash (even by another erofs-oci server) does not count.
 */
export function serverAlive(server: ServerProcess | number): boolean {
  const { pid, startTicks } = typeof server === "number" ? { pid: server } : server;
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  const cmdline = readProcFile(pid, "cmdline");
  if (!cmdline?.split("\0").includes(SERVER_COMMAND)) return false;
  const ticks = processStartTicks(pid);
  if (ticks === undefined) return false;
  return startTicks === undefined || ticks === startTicks;
}

/**
 * SIGKILL through a pidfd that was checked to be `server` after it was opened: the signal
 * cannot reach a process that reused the pid. False when the server is already gone.
 */
export function killServer(server: ServerProcess): boolean {
  let pidfd: number;
  try {
    pidfd = pidfdOpen(server.pid);
  } catch (error) {
    if (error instanceof SysError && NO_PROCESS_ERRNOS.has(error.errno)) return false;
    throw error;
  }
  try {
    if (!serverAlive(server)) return false;
    pidfdSendSignal(pidfd, SIGKILL);
    return true;
  } catch (error) {
    if (error instanceof SysError && error.errno === Errno.ESRCH) return false;
    throw error;
  } finally {
    closeFd(pidfd);
  }
}

/**
 * pidfd_open's answers for a pid that names no process now (a server is a process, never a
 * thread): ESRCH when nothing has it, ENOENT (Linux 6.18 here) when a thread has it, EINVAL on
 * Linux 6.1 for a thread and for a pid no thread-group leader holds. `umount` in the 6.1 VM met
 * EINVAL for a server it had just stopped, and said the mount stayed mounted.
 */
const NO_PROCESS_ERRNOS = new Set<number>([Errno.ESRCH, Errno.EINVAL, Errno.ENOENT]);
