/**
 * What a mount server started by the launcher (scripts/launcher.sh, lib/daemon/launcher_server.ts)
 * needs below Deno: one connection on a private unix socket taken as its stdin and stdout, the
 * descriptors its shell parent left open closed, and its parent's wait for it.
 */
import { closeFd, cstr, Errno, errno, libc, pollAsync, SysError, unwrap } from "./libc.ts";

const ARM64 = Deno.build.arch === "aarch64";
const SYS_LISTEN = ARM64 ? 201 : 50,
  SYS_ACCEPT4 = ARM64 ? 242 : 288,
  SYS_DUP3 = ARM64 ? 24 : 292,
  SYS_WAIT4 = ARM64 ? 260 : 61;
const AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0o2000000;
const F_GETFD = 1, FD_CLOEXEC = 1, POLLIN = 1, WNOHANG = 1;
/** sizeof(sockaddr_un.sun_path). */
const SUN_PATH_BYTES = 108;
/** Descriptors looked at for ones left open by a parent (as closeInheritedOnExec's fallback). */
const MAX_INHERITED_FD = 1024;

function syscall(number: number, a = 0n, b = 0n, c = 0n, d = 0n): bigint {
  return libc().syscall(BigInt(number), a, b, c, d);
}

/** A listening unix stream socket at `path` (an old file there is replaced). */
export function listenUnix(path: string): number {
  const name = cstr(path);
  if (name.length > SUN_PATH_BYTES) throw new SysError("bind", Errno.ENAMETOOLONG, path);
  const fd = unwrap(libc().socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  try {
    const address = new Uint8Array(2 + SUN_PATH_BYTES);
    new DataView(address.buffer).setUint16(0, AF_UNIX, true);
    address.set(name, 2);
    try {
      Deno.removeSync(path);
    } catch { /* not there */ }
    unwrap(libc().bind(fd, address, address.length), "bind", path);
    unwrap(syscall(SYS_LISTEN, BigInt(fd), 1n), "listen", path);
    return fd;
  } catch (error) {
    closeFd(fd);
    throw error;
  }
}

/** Waits up to `timeoutMs` (off the event loop) until `fd` is readable; false on timeout. */
export async function readableWithin(fd: number, timeoutMs: number): Promise<boolean> {
  const pollfd = new Uint8Array(8);
  const view = new DataView(pollfd.buffer);
  view.setInt32(0, fd, true);
  view.setInt16(4, POLLIN, true);
  const ready = await pollAsync(pollfd, timeoutMs);
  return ready > 0;
}

/** accept4 on a listening socket that poll said is readable. */
export function acceptConnection(listening: number): number {
  return Number(
    unwrap(syscall(SYS_ACCEPT4, BigInt(listening), 0n, 0n, BigInt(SOCK_CLOEXEC)), "accept4"),
  );
}

/** Reads one byte (the caller polled first); undefined at end of file. */
export function readByte(fd: number): number | undefined {
  const byte = new Uint8Array(1);
  const n = Number(unwrap(libc().read(fd, byte, 1n), "read"));
  return n === 1 ? byte[0] : undefined;
}

/** `fd` becomes `target` too (dup3; the copy is not close-on-exec, as stdio is not). */
export function duplicateOnto(fd: number, target: number): void {
  unwrap(syscall(SYS_DUP3, BigInt(fd), BigInt(target), 0n), "dup3");
}

/**
 * Closes the descriptors from 3 up that are not close-on-exec: Deno opens all of its own with
 * O_CLOEXEC, so these are what the parent shell left open (a caller's `flock` lock).
 */
export function closeLeftOpen(): void {
  for (let fd = 3; fd < MAX_INHERITED_FD; fd++) {
    const flags = libc().fcntl(fd, F_GETFD, 0);
    if (flags >= 0 && (flags & FD_CLOEXEC) === 0) closeFd(fd);
  }
}

/** How a child ended, or undefined while it runs (wait4 with WNOHANG: reaps it once ended). */
export function reapChild(pid: number): { code: number; signal: number } | undefined {
  const status = new Int32Array(1);
  const address = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(status)));
  const got = syscall(SYS_WAIT4, BigInt(pid), address, BigInt(WNOHANG));
  if (got === 0n) return undefined;
  if (got < 0n) {
    const code = errno();
    // Not our child (or reaped already): nothing to wait for.
    if (code === Errno.ECHILD) return { code: 1, signal: 0 };
    throw new SysError("wait4", code, `pid ${pid}`);
  }
  const raw = status[0];
  const signal = raw & 0x7f;
  return signal === 0 ? { code: (raw >> 8) & 0xff, signal: 0 } : { code: 128 + signal, signal };
}
