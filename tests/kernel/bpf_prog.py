"""Load a tc (BPF_PROG_TYPE_SCHED_CLS) program with the bpf() system call, optionally pin it.

Run as a script inside the drill's namespaces: `python bpf_prog.py [PIN_PATH]`. The program is
hand-assembled (`r0 = 0; exit`, i.e. TC_ACT_OK), so no compiler is needed. Prints `loaded` (and
`pinned`) on success; on failure prints `<step>: <errno name>` and exits 1.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_PROG_TYPE_SCHED_CLS = 3
ATTR_SIZE = 128  # larger than every field we set; the kernel needs the tail zeroed


def _bpf(libc: ctypes.CDLL, command: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    return libc.syscall(SYS_BPF[platform.machine()], command, attr, ATTR_SIZE)


def _fail(step: str) -> int:
    code = ctypes.get_errno()
    print(f"{step}: {errno.errorcode.get(code, code)} ({os.strerror(code)})")
    return 1


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    # mov r0, 0 (BPF_ALU64 | BPF_MOV | BPF_K); exit (BPF_JMP | BPF_EXIT)
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    # prog_type, insn_cnt, insns, license (the log fields and the rest stay zero)
    struct.pack_into(
        "<IIQQ",
        attr,
        0,
        BPF_PROG_TYPE_SCHED_CLS,
        len(insns) // 8,
        ctypes.addressof(code),
        ctypes.addressof(license_),
    )
    fd = _bpf(libc, BPF_PROG_LOAD, attr)
    if fd < 0:
        return _fail("load")
    print("loaded")
    if len(argv) > 1:
        path = ctypes.create_string_buffer(argv[1].encode())
        pin = ctypes.create_string_buffer(ATTR_SIZE)
        struct.pack_into("<QI", pin, 0, ctypes.addressof(path), fd)
        if _bpf(libc, BPF_OBJ_PIN, pin) < 0:
            return _fail("pin")
        print("pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
