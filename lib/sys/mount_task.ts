/**
 * mount(2) / umount2(2) off the main thread. A mount of EROFS on a file this process serves
 * over FUSE makes the kernel send us requests before mount(2) returns, so the main thread must
 * stay free to answer them. Each call goes to a pool thread first (cheap, but errno is lost
 * there); a failure is tried again on a worker thread, which keeps errno, so failures carry
 * their real reason.
 */
import { runLibcTask } from "../../ffi/libc_worker.ts";
import { type LibcSymbols } from "../../ffi/libc.ts";
import { mountAsync, umountAsync } from "../../ffi/mount.ts";
import type { ErrnoReader } from "../../ffi/libc_worker.ts";
import { loopAttachBody } from "./loop.ts";

/** What went wrong in the worker: the failing call and its errno (0 = success). */
export interface SyscallResult {
  errno: number;
  call: string;
  /** Loop devices used, when the mount went through the loop fallback. */
  loopDevices?: string[];
}

export interface MountCall {
  source: string;
  target: string;
  fsType: string;
  flags: number;
  data: string;
  /**
   * When the kernel answers ENOTBLK (no file-backed mounts for this fs type: EROFS before
   * 6.12), attach `source` and every `device=` file to read-only autoclear loop devices and
   * mount those instead (`always`: without trying the file first).
   */
  loopFallback?: { extraFiles: string[]; dataWithoutDevices: string; always?: boolean };
}

/** Worker body: one mount(2), with the loop fallback. Self-contained (see ffi/libc_worker.ts). */
function mountBody(
  libc: LibcSymbols,
  errno: ErrnoReader,
  req: MountCall,
  helpers: { loopAttach: typeof loopAttachBody },
): SyscallResult {
  const ENOTBLK = 15;
  const cstr = (s: string) => new TextEncoder().encode(s + "\0");
  const mount = (source: string, data: string) =>
    libc.mount(cstr(source), cstr(req.target), cstr(req.fsType), BigInt(req.flags), cstr(data));
  const fallback = req.loopFallback;
  if (!fallback?.always) {
    if (mount(req.source, req.data) === 0) return { errno: 0, call: "mount" };
    const code = errno();
    if (code !== ENOTBLK || !fallback) return { errno: code, call: "mount" };
  }
  // Each loop device stays attached only while someone holds it: keep our fds open until the
  // mount holds the devices, then close them (autoclear detaches them at unmount).
  const fds: number[] = [];
  const devices: string[] = [];
  try {
    for (const file of [req.source, ...fallback.extraFiles]) {
      const attached = helpers.loopAttach(libc, errno, file, true);
      if ("errno" in attached) return { ...attached, loopDevices: devices };
      fds.push(attached.fd);
      devices.push(attached.device);
    }
    const data = [
      fallback.dataWithoutDevices,
      ...devices.slice(1).map((device) => `device=${device}`),
    ].filter((part) => part).join(",");
    if (mount(devices[0], data) !== 0) {
      return { errno: errno(), call: "mount", loopDevices: devices };
    }
    return { errno: 0, call: "mount", loopDevices: devices };
  } finally {
    for (const fd of fds) libc.close(fd);
  }
}

/** Worker body: one umount2(2). */
function umountBody(
  libc: LibcSymbols,
  errno: ErrnoReader,
  req: { target: string; flags: number },
): SyscallResult {
  const target = new TextEncoder().encode(req.target + "\0");
  return libc.umount2(target, req.flags) === 0
    ? { errno: 0, call: "umount" }
    : { errno: errno(), call: "umount" };
}

/**
 * mount(2) off this thread; resolves with the errno instead of throwing. It is tried first on
 * a pool thread, which costs nothing to start (a worker: 20-50 ms, most of the CLI's mount(2)
 * step); only a failure goes to a worker, which keeps errno: it tries again there (a failed
 * mount changed nothing) and falls back to loop devices when the kernel wants a block device.
 */
export async function mountOffThread(request: MountCall): Promise<SyscallResult> {
  if (!request.loopFallback?.always) {
    const { source, target, fsType, flags, data } = request;
    if (await mountAsync(source, target, fsType, flags, data) === 0) {
      return { errno: 0, call: "mount" };
    }
  }
  return await runLibcTask("mount", mountBody, request, { loopAttach: loopAttachBody });
}

/**
 * umount2(2) off this thread; resolves with the errno instead of throwing. Like mountOffThread:
 * a pool thread first, a worker (which keeps errno) only after a failure. A worker per call cost
 * ~100 ms, and `umount` of a mount with N layers made 2N calls (the CLI's layer mounts, the
 * server's FUSE mounts): 50 s for 419 layers. Trying again on the worker is sound because a
 * umount2 that failed changed nothing (MNT_EXPIRE, whose first call only marks, is not used).
 */
export async function umountOffThread(target: string, flags: number): Promise<SyscallResult> {
  if (await umountAsync(target, flags) === 0) return { errno: 0, call: "umount" };
  return await runLibcTask("umount", umountBody, { target, flags });
}
