"""Runs argv[2:] with one kind of system call refused (a seccomp filter), as some kernels or file
systems do. argv[1] says which:
  openat2  openat2(2) fails ENOSYS (Linux before 5.6, or a container profile that denies it)
  tmpfile  openat(2) with O_TMPFILE fails EOPNOTSUPP (NFS, vfat, older FUSE file systems)
x86_64 only (the filter checks the audit arch and x86_64 system call numbers)."""
import ctypes, os, struct, sys

ENOSYS, EOPNOTSUPP = 38, 95
SYS_OPENAT, SYS_OPENAT2, AUDIT_ARCH_X86_64 = 257, 437, 0xC000003E
__O_TMPFILE = 0x400000
LD_W_ABS, JEQ_K, JSET_K, RET_K = 0x20, 0x15, 0x45, 0x06
ALLOW, ERRNO = 0x7FFF0000, 0x00050000
# seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 * i (the low word first).
ARCH, NR, ARG2 = 4, 0, 32


def insn(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)


arch_check = [insn(LD_W_ABS, ARCH), insn(JEQ_K, AUDIT_ARCH_X86_64, 1, 0), insn(RET_K, ALLOW)]
rules = {
    "openat2": [
        insn(LD_W_ABS, NR),
        insn(JEQ_K, SYS_OPENAT2, 0, 1),
        insn(RET_K, ERRNO | ENOSYS),
        insn(RET_K, ALLOW),
    ],
    "tmpfile": [
        insn(LD_W_ABS, NR),
        insn(JEQ_K, SYS_OPENAT, 0, 3),
        insn(LD_W_ABS, ARG2),
        insn(JSET_K, __O_TMPFILE, 0, 1),
        insn(RET_K, ERRNO | EOPNOTSUPP),
        insn(RET_K, ALLOW),
    ],
}
program = b"".join(arch_check + rules[sys.argv[1]])


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


libc = ctypes.CDLL(None, use_errno=True)
code = ctypes.create_string_buffer(program)
fprog = SockFprog(len(program) // 8, ctypes.addressof(code))
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0
os.execvp(sys.argv[2], sys.argv[2:])
