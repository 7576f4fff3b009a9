"""libc through ctypes, for what Python's os module lacks: capget, capset, prctl, sigaction.

Loaded on first use: a start with no capability to clear and no
no_new_privs to set never needs it (ctypes and libc's symbols cost memory
and import time). capset and prctl act on the calling thread only. No CherryPy.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


@functools.cache
def load() -> SimpleNamespace:
    """ctypes, libc and the capability structures, once."""
    import ctypes

    try:
        lib = ctypes.CDLL('libc.so.6', use_errno=True)  # glibc; find_library would run ldconfig
    except OSError:
        import ctypes.util
        lib = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    lib.prctl.restype = ctypes.c_int

    class CapHeader(ctypes.Structure):
        _fields_ = [('version', ctypes.c_uint32), ('pid', ctypes.c_int)]

    class CapData(ctypes.Structure):
        _fields_ = [('effective', ctypes.c_uint32), ('permitted', ctypes.c_uint32),
                    ('inheritable', ctypes.c_uint32)]

    return SimpleNamespace(ctypes=ctypes, lib=lib, CapHeader=CapHeader, CapData=CapData)


def check(ret: int, what: str) -> int:
    """``ret``, or OSError with errno if the call failed (returned < 0)."""
    if ret < 0:
        err = load().ctypes.get_errno()
        raise OSError(err, f'{what}: {os.strerror(err)}')
    return ret


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return check(load().lib.prctl(option, arg2, arg3, arg4, arg5), f'prctl({option})')


def _capset(data) -> None:
    c = load()
    header = c.CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    check(c.lib.capset(c.ctypes.byref(header), data), 'capset')


def clear_capabilities() -> None:
    """Empty the calling thread's effective, permitted, inheritable and ambient sets."""
    prctl(PR_SET_KEEPCAPS, 0)
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as e:  # kernels before 4.3 have no ambient set
        if e.errno != 22:
            raise
    _capset((load().CapData * 2)())


def clear_inheritable() -> None:
    """Empty the calling thread's inheritable set, keeping the others (see kernel)."""
    c = load()
    header = c.CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (c.CapData * 2)()
    check(c.lib.capget(c.ctypes.byref(header), data), 'capget')
    data[0].inheritable = data[1].inheritable = 0
    _capset(data)
