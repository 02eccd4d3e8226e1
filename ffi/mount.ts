/** mount(2) and umount2(2) through libc. */
import { cstr, libc, unwrap } from "./libc.ts";

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
  return await libc().mount_nonblocking(
    cstr(source),
    cstr(target),
    cstr(fstype),
    BigInt(flags),
    cstr(data),
  );
}

/**
 * umount2(2) on a pool thread; 0 or -1 (errno is not readable after a nonblocking call, see
 * mountAsync).
 */
export async function umountAsync(target: string, flags: number): Promise<number> {
  return await libc().umount2_nonblocking(cstr(target), flags);
}

export function umount(target: string, flags = 0): void {
  unwrap(libc().umount2(cstr(target), flags), "umount", target);
}
