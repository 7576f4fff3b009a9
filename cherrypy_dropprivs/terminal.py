"""Giving up the controlling terminal before the drop.

A process keeps its controlling terminal across set*id calls. With it, the
dropped process could push input into root's shell (``ioctl(TIOCSTI)``,
with ``dev.tty.legacy_tiocsti=1``), and read root's keystrokes through a
standard fd opened read-write on the terminal. Before the drop:

- ``ioctl(TIOCNOTTY)`` on the terminal. A process that is not the session
  leader (the usual case: a job started from a shell) only detaches itself:
  it stays in the terminal's foreground process group, so Ctrl-C (the tty
  driver's SIGINT to that group) still stops it. A session leader that does
  it disassociates the whole session and the kernel sends SIGHUP and SIGCONT
  to the foreground process group: SIGHUP is ignored around the call (the
  exact previous disposition, CherryPy's handler included, is restored).
- stdin, stdout and stderr, where they are that terminal, are reopened
  write-only on the same terminal. A shell opens its terminal read-write and
  every job inherits that, so any of them could read keystrokes; without a
  controlling terminal a background job's reads are no longer even stopped
  by SIGTTIN. Write-only, screen logging goes on and ``isatty()`` stays true
  (CherryPy's SIGHUP handler still means "exit" on a terminal), but reading
  root's keystrokes fails (EBADF).

Afterwards ``/proc/self/stat`` field 7 (``tty_nr``) is 0, which the drop
verifies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import signal
import stat
import termios
from typing import List, Optional, Tuple

_libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
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
        self._old = ctypes.create_string_buffer(_SIGACTION_SIZE)
        ign = ctypes.create_string_buffer(_SIGACTION_SIZE)
        ctypes.c_void_p.from_buffer(ign).value = int(signal.SIG_IGN)  # sa_handler comes first
        if _libc.sigaction(int(signal.SIGHUP), ign, self._old) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f'sigaction(SIGHUP): {os.strerror(err)}')
        return self

    def __exit__(self, *exc):
        if _libc.sigaction(int(signal.SIGHUP), self._old, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f'sigaction(SIGHUP) restore: {os.strerror(err)}')
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
        for std in (0, 1, 2):
            try:
                s = os.fstat(std)
            except OSError:
                continue
            if not stat.S_ISCHR(s.st_mode) or s.st_rdev != nr:
                continue
            label = ('stdin', 'stdout', 'stderr')[std]
            try:
                new = os.open(f'/proc/self/fd/{std}', os.O_WRONLY | os.O_NOCTTY)
                what = f'{label} reopened write-only'
            except PermissionError:  # not root, on another user's terminal
                new = os.open(os.devnull, os.O_RDONLY if std == 0 else os.O_WRONLY)
                what = f'{label} now {os.devnull} (the terminal cannot be reopened write-only)'
            try:
                os.dup2(new, std)  # dup2 leaves close-on-exec off, as for the old fd
            finally:
                os.close(new)
            done.append(what)
    finally:
        os.close(fd)
    return done
