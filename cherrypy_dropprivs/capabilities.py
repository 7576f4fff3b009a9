"""Thin ctypes wrappers for the per-thread prctl and capset calls.

Python's os module has no capset, PR_SET_NO_NEW_PRIVS or PR_GET_DUMPABLE.
These calls act on the calling thread only (unlike glibc's set*id, which it
applies to every thread), so callers must run them in each thread that needs
them or create threads afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from .kernel_view import thread_creds

PR_GET_DUMPABLE = 3
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int


class _CapHeader(ctypes.Structure):
    _fields_ = [('version', ctypes.c_uint32), ('pid', ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ('effective', ctypes.c_uint32),
        ('permitted', ctypes.c_uint32),
        ('inheritable', ctypes.c_uint32),
    ]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f'{what}: {os.strerror(err)}')
    return ret


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f'prctl({option})')


def clear_thread_capabilities() -> None:
    """Empty the calling thread's effective, permitted, inheritable and ambient sets."""
    prctl(PR_SET_KEEPCAPS, 0)
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as e:  # kernels before 4.3 have no ambient set
        if e.errno != 22:
            raise
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), 'capset')


def clear_inheritable() -> None:
    """Empty the calling thread's inheritable set; keep its permitted and effective sets.

    Safe as root before the drop: the thread keeps what it may still need
    (e.g. CAP_SETUID for glibc's set*id broadcast). The kernel clears
    permitted, effective and ambient at setresuid, never inheritable; with a
    non-empty inheritable set an exec of a file with ``+ei`` file
    capabilities would grant them again. Lowering needs no privilege.
    """
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), 'capget')
    if not (data[0].inheritable or data[1].inheritable):
        return
    data[0].inheritable = data[1].inheritable = 0
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    _check(_libc.capset(ctypes.byref(header), data), 'capset')


def held_in_any_thread() -> bool:
    """Whether any thread of this process has a capability in any set but the bounding one."""
    return any(t.cap_prm or t.cap_eff or t.cap_amb or t.cap_inh for t in thread_creds('self'))


def set_no_new_privs() -> None:
    """Set no_new_privs on the calling thread (inherited by threads it creates)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def get_dumpable() -> int:
    return prctl(PR_GET_DUMPABLE)
