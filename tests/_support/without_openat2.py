"""Runs argv[1:] with openat2(2) failing ENOSYS (a seccomp filter), as on Linux before 5.6 or
under a container profile that denies it. x86_64 only (the filter checks the audit arch)."""
import ctypes, os, struct, sys

ENOSYS, SYS_OPENAT2, AUDIT_ARCH_X86_64 = 38, 437, 0xC000003E
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
ALLOW, ERRNO = 0x7FFF0000, 0x00050000


def insn(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)


program = b"".join([
    insn(LD_W_ABS, 4),                       # seccomp_data.arch
    insn(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
    insn(RET_K, ALLOW),
    insn(LD_W_ABS, 0),                       # seccomp_data.nr
    insn(JEQ_K, SYS_OPENAT2, 0, 1),
    insn(RET_K, ERRNO | ENOSYS),
    insn(RET_K, ALLOW),
])


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


libc = ctypes.CDLL(None, use_errno=True)
code = ctypes.create_string_buffer(program)
fprog = SockFprog(len(program) // 8, ctypes.addressof(code))
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0
os.execvp(sys.argv[1], sys.argv[1:])
