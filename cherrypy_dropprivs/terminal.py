"""Giving up a controlling terminal before the drop (Linux; no CherryPy).

A root process started from a shell keeps that terminal: dropped, it could
still type into root's shell (TIOCSTI) or read its keystrokes. So the
terminal is given up with TIOCNOTTY (with SIGHUP ignored for that instant
when this process leads the session: the kernel then sends SIGHUP to the
terminal's foreground process group, this process included), and every
descriptor on it is reopened write-only or replaced by /dev/null. Imported
only when there is a controlling terminal (kernel.tty_nr), which a service
under systemd never has.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
from typing import List, Optional, Tuple

from . import kernel, libc

#: Larger than glibc's struct sigaction on every Linux ABI (152 bytes on x86-64, arm64).
_SIGACTION_SIZE = 512


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
    nr = kernel.tty_nr()
    found = _device(nr) if nr else None
    return found[1].st_uid if found else None


class _HupIgnored:
    """SIGHUP ignored (raw sigaction: works in any thread), restored exactly on exit."""

    def __enter__(self):
        c = libc.load()
        self._old = c.ctypes.create_string_buffer(_SIGACTION_SIZE)
        ign = c.ctypes.create_string_buffer(_SIGACTION_SIZE)
        c.ctypes.c_void_p.from_buffer(ign).value = int(signal.SIG_IGN)  # sa_handler comes first
        libc.check(c.lib.sigaction(int(signal.SIGHUP), ign, self._old), 'sigaction(SIGHUP)')
        return self

    def __exit__(self, *exc):
        c = libc.load()
        libc.check(c.lib.sigaction(int(signal.SIGHUP), self._old, None), 'sigaction(SIGHUP) restore')
        return False


def give_up() -> List[str]:
    """Detach from the controlling terminal ; what was done, [] if nothing.

    Raises OSError if the kernel refuses a step.
    """
    if not kernel.tty_nr():
        return []
    fd = _ctty_fd()
    if fd is None:
        return []
    import termios  # only with a terminal: one module less in every other process

    done = []
    try:
        nr = kernel.tty_nr()
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
