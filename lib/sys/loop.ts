/**
 * Loop devices, for kernels that cannot mount EROFS on a regular file (before 6.12): a free
 * device from /dev/loop-control, configured read-only with autoclear so it goes away with the
 * last user (the mount). Constants from linux/loop.h.
 */
import type { LibcSymbols } from "../../ffi/libc.ts";
import type { ErrnoReader } from "../../ffi/libc_worker.ts";

/** A loop device attached to a file; `fd` keeps it alive until the mount holds it. */
export interface AttachedLoop {
  fd: number;
  device: string;
}

/**
 * Attaches `file` to a free loop device (LOOP_CTL_GET_FREE, then LOOP_CONFIGURE; LOOP_SET_FD +
 * LOOP_SET_STATUS64 on kernels before 5.8). Runs on a libc worker thread: opening a file we
 * serve over FUSE needs the main thread free. Self-contained (see ffi/libc_worker.ts).
 *
 * Autoclear detaches the device when its last opener closes: the caller must keep `fd` open
 * until the mount has opened the device, and close it afterwards.
 */
export function loopAttachBody(
  libc: LibcSymbols,
  errno: ErrnoReader,
  file: string,
  readOnly: boolean,
): AttachedLoop | { errno: number; call: string } {
  const O_RDONLY = 0, O_RDWR = 2, O_CLOEXEC = 0o2000000;
  const LOOP_SET_FD = 0x4c00, LOOP_CLR_FD = 0x4c01, LOOP_SET_STATUS64 = 0x4c04;
  const LOOP_CONFIGURE = 0x4c0a, LOOP_CTL_GET_FREE = 0x4c82;
  const LO_FLAGS_READ_ONLY = 1, LO_FLAGS_AUTOCLEAR = 4;
  const LO_NAME_SIZE = 64, LOOP_INFO64_SIZE = 232, LOOP_CONFIG_SIZE = 304;
  const EBUSY = 16, EINVAL = 22, ENOTTY = 25;
  const encoder = new TextEncoder();
  const cstr = (s: string) => encoder.encode(s + "\0");
  const address = (buffer: Uint8Array<ArrayBuffer>) =>
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)));
  const mode = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  const loFlags = LO_FLAGS_AUTOCLEAR | (readOnly ? LO_FLAGS_READ_ONLY : 0);
  // struct loop_info64 at `at`: lo_flags at +52, lo_file_name[64] at +56 (shown by losetup).
  const fillInfo = (buffer: Uint8Array<ArrayBuffer>, at: number) => {
    new DataView(buffer.buffer).setUint32(at + 52, loFlags, true);
    buffer.set(encoder.encode(file).subarray(0, LO_NAME_SIZE - 1), at + 56);
  };

  const control = libc.open(cstr("/dev/loop-control"), O_RDWR | O_CLOEXEC, 0);
  if (control < 0) return { errno: errno(), call: "open /dev/loop-control" };
  const backing = libc.open(cstr(file), mode, 0);
  if (backing < 0) {
    const code = errno();
    libc.close(control);
    return { errno: code, call: `open ${file}` };
  }
  try {
    // Another process may take the free device between GET_FREE and CONFIGURE: retry.
    for (let attempt = 0; attempt < 16; attempt++) {
      const index = libc.ioctl(control, BigInt(LOOP_CTL_GET_FREE), 0n);
      if (index < 0) return { errno: errno(), call: "ioctl LOOP_CTL_GET_FREE" };
      const device = `/dev/loop${index}`;
      const fd = libc.open(cstr(device), mode, 0);
      if (fd < 0) return { errno: errno(), call: `open ${device}` };
      // struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
      const config = new Uint8Array(LOOP_CONFIG_SIZE);
      new DataView(config.buffer).setUint32(0, backing, true);
      fillInfo(config, 8);
      if (libc.ioctl(fd, BigInt(LOOP_CONFIGURE), address(config)) === 0) return { fd, device };
      let code = errno();
      if (code === EINVAL || code === ENOTTY) {
        if (libc.ioctl(fd, BigInt(LOOP_SET_FD), BigInt(backing)) === 0) {
          const info = new Uint8Array(LOOP_INFO64_SIZE);
          fillInfo(info, 0);
          if (libc.ioctl(fd, BigInt(LOOP_SET_STATUS64), address(info)) === 0) {
            return { fd, device };
          }
          code = errno();
          libc.ioctl(fd, BigInt(LOOP_CLR_FD), 0n);
        } else {
          code = errno();
        }
      }
      libc.close(fd);
      if (code !== EBUSY) return { errno: code, call: `ioctl LOOP_CONFIGURE ${device}` };
    }
    return { errno: EBUSY, call: "ioctl LOOP_CONFIGURE" };
  } finally {
    libc.close(backing);
    libc.close(control);
  }
}
