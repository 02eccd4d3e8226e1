/**
 * Read-ahead of many ranges of a file in one system call (process_madvise over a mapping that
 * is never read), for the metadata a mount reads next.
 */
import { addressOf, libc, SysError } from "./libc.ts";
import { pidfdOpen } from "./process.ts";

/** The system call number, shared by x86_64 and arm64 (the unified table from 5.1 on). */
const SYS_PROCESS_MADVISE = 440;
/** mmap/madvise constants (asm-generic/mman-common.h); iovecs per call at most (UIO_MAXIOV). */
const PROT_READ = 1, MAP_SHARED = 1, MADV_WILLNEED = 3, UIO_MAXIOV = 1024, PAGE_BYTES = 4096;
const MAP_FAILED = (1n << 64n) - 1n;

/**
 * Reads ahead the ranges ([offset, length] pairs, in order, page-aligned offsets) of the file
 * `fd` into its page cache in one system call per UIO_MAXIOV ranges, on a pool thread:
 * process_madvise(MADV_WILLNEED, 5.15+) over a read-only shared mapping of the file that is
 * never read (no page of it is faulted in, so a device that fails cannot fault this process).
 * One call instead of one posix_fadvise per range: each of those costs a round trip through
 * the pool, ~1 ms under emulation. Resolves with the bytes advised (a prefix of the ranges: the
 * kernel stops at the first it refuses), or -1 when the kernel refuses the call itself (older
 * kernels, no CAP_SYS_NICE, a page size that does not divide the offsets): advise one by one.
 */
export async function willNeedRangesAsync(fd: number, ranges: readonly number[]): Promise<number> {
  let end = 0;
  for (let i = 0; i < ranges.length; i += 2) end = Math.max(end, ranges[i] + ranges[i + 1]);
  if (end === 0) return 0;
  const mapBytes = Math.ceil(end / PAGE_BYTES) * PAGE_BYTES;
  const base = BigInt(libc().mmap(0n, BigInt(mapBytes), PROT_READ, MAP_SHARED, fd, 0n));
  if (base === MAP_FAILED) return -1;
  let pidfd = -1;
  try {
    pidfd = pidfdOpen(Deno.pid);
    let advised = 0;
    for (let first = 0; first < ranges.length; first += 2 * UIO_MAXIOV) {
      const count = Math.min(UIO_MAXIOV, (ranges.length - first) / 2);
      // struct iovec { void *iov_base; size_t iov_len; }
      const iovecs = new Uint8Array(16 * count);
      const view = new DataView(iovecs.buffer);
      let bytes = 0;
      for (let i = 0; i < count; i++) {
        view.setBigUint64(16 * i, base + BigInt(ranges[first + 2 * i]), true);
        view.setBigUint64(16 * i + 8, BigInt(ranges[first + 2 * i + 1]), true);
        bytes += ranges[first + 2 * i + 1];
      }
      const done = Number(
        await libc().syscall5_nonblocking(
          BigInt(SYS_PROCESS_MADVISE),
          BigInt(pidfd),
          addressOf(iovecs),
          BigInt(count),
          BigInt(MADV_WILLNEED),
          0n,
        ),
      );
      if (done < 0) return first === 0 ? -1 : advised;
      advised += done;
      if (done < bytes) break;
    }
    return advised;
  } catch (error) {
    if (error instanceof SysError) return -1; // pidfd_open refused
    throw error;
  } finally {
    if (pidfd >= 0) libc().close(pidfd);
    libc().munmap(base, BigInt(mapBytes));
  }
}
