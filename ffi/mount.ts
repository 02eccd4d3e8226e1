/** mount(2) and umount2(2) through libc. */
import { cstr, holdingBuffers, libc, unwrap } from "./libc.ts";

/** Mount flags (linux/mount.h). */
export const MS_RDONLY = 1, MS_NOSUID = 2, MS_NODEV = 4, MS_NOEXEC = 8;
/** umount2 flags. */
export const MNT_FORCE = 1, MNT_DETACH = 2, UMOUNT_NOFOLLOW = 8;

/** mount(2); `data` is the comma-separated option string. */
export function mount(
  source: string,
  target: string,
  fstype: string,
  flags: number,
  data = "",
): void {
  unwrap(
    libc().mount(cstr(source), cstr(target), cstr(fstype), BigInt(flags), cstr(data)),
    "mount",
    `${fstype} ${source} on ${target}`,
  );
}

/** mount(2) on a pool thread, for when this thread must keep serving the backing store. */
export async function mountAsync(
  source: string,
  target: string,
  fstype: string,
  flags: number,
  data = "",
): Promise<number> {
  // errno is not readable after a nonblocking call; callers that need the reason retry
  // synchronously or inspect the result of a follow-up call.
  const args = [cstr(source), cstr(target), cstr(fstype), cstr(data)] as const;
  return await holdingBuffers(
    libc().mount_nonblocking(args[0], args[1], args[2], BigInt(flags), args[3]),
    ...args,
  );
}

/**
 * umount2(2) on a pool thread; 0 or -1 (errno is not readable after a nonblocking call, see
 * mountAsync).
 */
export async function umountAsync(target: string, flags: number): Promise<number> {
  const path = cstr(target);
  return await holdingBuffers(libc().umount2_nonblocking(path, flags), path);
}

export function umount(target: string, flags = 0): void {
  unwrap(libc().umount2(cstr(target), flags), "umount", target);
}
