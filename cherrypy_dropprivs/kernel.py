"""Linux calls and /proc reading: no policy and no CherryPy.

Per-thread credentials from ``/proc/<pid>/task/*/status`` (the kernel's view,
which /proc/<pid>/status gives for the main thread only), ctypes wrappers for
what Python's os module lacks (capset, prctl, sigaction), the controlling
terminal, and the umask read without changing it. capset and prctl act on
the calling thread only (glibc broadcasts set*id, not these): callers run
them in each thread that needs them, or before creating threads.
"""

from __future__ import annotations

import fcntl
import functools
import os
import signal
import stat
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple, Union


class ThreadCreds:
    """One thread's credentials as the kernel reports them.

    A plain class (not a dataclass): every dataclass costs ~0.3 ms at import.
    """

    __slots__ = ('tid', 'name', 'uids', 'gids', 'groups', 'cap_inh', 'cap_prm', 'cap_eff',
                 'cap_bnd', 'cap_amb', 'no_new_privs', 'umask')

    def __init__(self, tid: int, name: str, uids: Tuple[int, int, int, int],
                 gids: Tuple[int, int, int, int], groups: Tuple[int, ...], cap_inh: int,
                 cap_prm: int, cap_eff: int, cap_bnd: int, cap_amb: int, no_new_privs: bool,
                 umask: int) -> None:
        self.tid, self.name = tid, name
        self.uids, self.gids, self.groups = uids, gids, groups  # real, effective, saved, fs
        self.cap_inh, self.cap_prm, self.cap_eff = cap_inh, cap_prm, cap_eff
        self.cap_bnd, self.cap_amb = cap_bnd, cap_amb
        self.no_new_privs, self.umask = no_new_privs, umask


def parse_status(text: str) -> Dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(':')
        fields[key] = value.strip()
    return fields


def creds_from_status(tid: int, fields: Dict[str, str]) -> ThreadCreds:
    def ids(key: str) -> Tuple[int, int, int, int]:
        a, b, c, d = (int(x) for x in fields[key].split())
        return a, b, c, d

    return ThreadCreds(
        tid=tid,
        name=fields.get('Name', ''),
        uids=ids('Uid'),
        gids=ids('Gid'),
        groups=tuple(int(g) for g in fields.get('Groups', '').split()),
        cap_inh=int(fields.get('CapInh', '0'), 16),
        cap_prm=int(fields.get('CapPrm', '0'), 16),
        cap_eff=int(fields.get('CapEff', '0'), 16),
        cap_bnd=int(fields.get('CapBnd', '0'), 16),
        cap_amb=int(fields.get('CapAmb', '0'), 16),
        no_new_privs=fields.get('NoNewPrivs', '0') == '1',
        umask=int(fields.get('Umask', '0'), 8),
    )


def thread_creds(pid: Union[int, str] = 'self') -> List[ThreadCreds]:
    """Credentials of every thread of ``pid``, from /proc/<pid>/task/*/status.

    A thread that exits while we read is skipped: it cannot serve anything.
    """
    base = f'/proc/{pid}/task'
    out = []
    for tid in sorted(os.listdir(base), key=int):
        try:
            with open(f'{base}/{tid}/status') as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out.append(creds_from_status(int(tid), parse_status(text)))
    return out


def listeners_on_port(port: int) -> List[Tuple[int, int, str]]:
    """(pid, uid, command) of each other process holding a TCP socket that listens
    on ``port`` (from /proc/net/tcp{,6} and /proc/*/fd; complete only as root)."""
    inodes = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(table) as f:
                next(f)
                for cols in map(str.split, f):
                    if cols[3] == '0A' and int(cols[1].rsplit(':', 1)[1], 16) == port:
                        inodes.add(f'socket:[{cols[9]}]')
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    found = []
    for pid in (p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()):
        try:
            fds = os.listdir(f'/proc/{pid}/fd')
            if not any(os.readlink(f'/proc/{pid}/fd/{fd}') in inodes for fd in fds):
                continue
            with open(f'/proc/{pid}/comm') as f:
                comm = f.read().strip()
            uid = os.stat(f'/proc/{pid}').st_uid
        except OSError:
            continue
        found.append((int(pid), uid, comm))
    return found


def current_thread_creds() -> ThreadCreds:
    """The calling thread's credentials (/proc/thread-self/status)."""
    with open('/proc/thread-self/status') as f:
        fields = parse_status(f.read())
    return creds_from_status(int(os.path.basename(os.readlink('/proc/thread-self'))), fields)


PR_GET_DUMPABLE = 3


PR_SET_KEEPCAPS = 8


PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


@functools.cache
def _c() -> SimpleNamespace:
    """libc through ctypes, loaded on first use: a start with nothing to clear
    never needs it (ctypes and libc's symbols cost memory and import time)."""
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


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = _c().ctypes.get_errno()
        raise OSError(err, f'{what}: {os.strerror(err)}')
    return ret


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_c().lib.prctl(option, arg2, arg3, arg4, arg5), f'prctl({option})')


def _capset(data) -> None:
    c = _c()
    header = c.CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    _check(c.lib.capset(c.ctypes.byref(header), data), 'capset')


def clear_thread_capabilities() -> None:
    """Empty the calling thread's effective, permitted, inheritable and ambient sets."""
    t = current_thread_creds()
    if not (t.cap_prm or t.cap_eff or t.cap_inh or t.cap_amb):
        return  # nothing to clear (the usual case): no ctypes needed
    prctl(PR_SET_KEEPCAPS, 0)
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as e:  # kernels before 4.3 have no ambient set
        if e.errno != 22:
            raise
    _capset((_c().CapData * 2)())


def clear_inheritable() -> None:
    """Empty the calling thread's inheritable set; keep its permitted and effective sets.

    Safe as root before the drop: the thread keeps what it may still need
    (e.g. CAP_SETUID for glibc's set*id broadcast). The kernel clears
    permitted, effective and ambient at setresuid, never inheritable; with a
    non-empty inheritable set an exec of a file with ``+ei`` file
    capabilities would grant them again. Lowering needs no privilege.
    """
    if not current_thread_creds().cap_inh:
        return  # the usual case: no ctypes needed
    c = _c()
    header = c.CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (c.CapData * 2)()
    _check(c.lib.capget(c.ctypes.byref(header), data), 'capget')
    data[0].inheritable = data[1].inheritable = 0
    _capset(data)


def held_in_any_thread() -> bool:
    """Whether any thread of this process has a capability in any set but the bounding one."""
    return any(t.cap_prm or t.cap_eff or t.cap_amb or t.cap_inh for t in thread_creds('self'))


def set_no_new_privs() -> None:
    """Set no_new_privs on the calling thread (inherited by threads it creates)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def get_dumpable() -> int:
    return prctl(PR_GET_DUMPABLE)


def current_umask() -> int:
    """The process's umask without changing it, from /proc (Linux 4.7+).

    Reading it with os.umask means setting it for an instant, and another
    thread creating a file in that instant would get the probe's mask; the
    fallback probes with 0o077 so that such a file is too private, not too open.
    """
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


#: Larger than glibc's struct sigaction on every Linux ABI (152 bytes on x86-64, arm64).
_SIGACTION_SIZE = 512


def tty_nr(pid='self') -> int:
    """The controlling terminal's device number (0: none), /proc/<pid>/stat field 7."""
    with open(f'/proc/{pid}/stat', 'rb') as f:
        data = f.read()
    fields = data[data.rindex(b')') + 2:].split()
    return int(fields[4])  # state ppid pgrp session tty_nr


def _ctty_fd() -> Optional[int]:
    try:
        return os.open('/dev/tty', os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:  # ENXIO: no controlling terminal
        return None


def _device(nr: int) -> Optional[Tuple[str, os.stat_result]]:
    """A path to character device ``nr`` and its stat: an open fd of ours first, then /dev.

    (/dev/tty itself is another device: its owner and inode say nothing.)
    """
    candidates = [f'/proc/self/fd/{fd}' for fd in sorted(os.listdir('/proc/self/fd'), key=int)]
    for top in ('/dev/pts', '/dev'):
        try:
            candidates += [os.path.join(top, n) for n in sorted(os.listdir(top))]
        except OSError:
            pass
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == nr:
            name = os.path.realpath(path) if path.startswith('/proc/') else path
            return name, st
    return None


def terminal_owner() -> Optional[int]:
    """The uid owning the controlling terminal's device, or None without one."""
    nr = tty_nr()
    found = _device(nr) if nr else None
    return found[1].st_uid if found else None


class _HupIgnored:
    """SIGHUP ignored (raw sigaction: works in any thread), restored exactly on exit."""

    def __enter__(self):
        c = _c()
        self._old = c.ctypes.create_string_buffer(_SIGACTION_SIZE)
        ign = c.ctypes.create_string_buffer(_SIGACTION_SIZE)
        c.ctypes.c_void_p.from_buffer(ign).value = int(signal.SIG_IGN)  # sa_handler comes first
        _check(c.lib.sigaction(int(signal.SIGHUP), ign, self._old), 'sigaction(SIGHUP)')
        return self

    def __exit__(self, *exc):
        _check(_c().lib.sigaction(int(signal.SIGHUP), self._old, None), 'sigaction(SIGHUP) restore')
        return False


def give_up() -> List[str]:
    """Detach from the controlling terminal (see the module doc); what was done, [] if nothing.

    Raises OSError if the kernel refuses a step.
    """
    if not tty_nr():
        return []
    fd = _ctty_fd()
    if fd is None:
        return []
    import termios  # only with a terminal: one module less in every other process

    done = []
    try:
        nr = tty_nr()
        found = _device(nr)
        name = found[0] if found else f'device {os.major(nr)}:{os.minor(nr)}'
        leader = os.getsid(0) == os.getpid()
        if leader:
            with _HupIgnored():
                fcntl.ioctl(fd, termios.TIOCNOTTY)
            done.append(f'gave up controlling terminal {name} (session leader: the terminal '
                        f'left the whole session; Ctrl-C there no longer reaches this process)')
        else:
            fcntl.ioctl(fd, termios.TIOCNOTTY)
            done.append(f'gave up controlling terminal {name}')
        # Every descriptor on the terminal, not only 0-2 (a shell's `3<>/dev/tty`
        # would otherwise still read root's keystrokes).
        for std in sorted(int(n) for n in os.listdir('/proc/self/fd')):
            try:
                s = os.fstat(std)
            except OSError:
                continue
            if std == fd or not stat.S_ISCHR(s.st_mode) or s.st_rdev != nr:
                continue
            label = ('stdin', 'stdout', 'stderr')[std] if std < 3 else f'fd {std}'
            inheritable = os.get_inheritable(std)
            try:
                new = os.open(f'/proc/self/fd/{std}', os.O_WRONLY | os.O_NOCTTY)
                what = f'{label} reopened write-only'
            except PermissionError:  # not root, on another user's terminal
                new = os.open(os.devnull, os.O_RDONLY if std == 0 else os.O_WRONLY)
                what = f'{label} now {os.devnull} (the terminal cannot be reopened write-only)'
            try:
                os.dup2(new, std, inheritable=inheritable)
            finally:
                os.close(new)
            done.append(what)
    finally:
        os.close(fd)
    return done


def nproc_soft_limit() -> Optional[int]:
    """RLIMIT_NPROC's soft limit, None if unlimited.

    Read from /proc/self/limits rather than through the ``resource`` module,
    which would stay loaded in the site for this one call.
    """
    try:
        with open('/proc/self/limits') as f:
            for line in f:
                if line.startswith('Max processes '):
                    text = line.split()[2]
                    return None if text == 'unlimited' else int(text)
    except (OSError, ValueError, IndexError):
        pass
    import resource

    limit = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    return None if limit == resource.RLIM_INFINITY else limit
