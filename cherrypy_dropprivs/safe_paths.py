"""Acting on a path as root without trusting anything a non-root user could change.

Before the drop, root opens log files, writes the PID file and hands paths to
the target user. Each of these goes through a path that, after a compromise
of the site, the target user may have prepared: a symlink planted where a log
file was, a directory swapped for a link while root walks it. So every path
root acts on is resolved here, from ``/``, one component at a time, on
descriptors:

- each directory is opened with ``openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)``
  relative to the one before, and checked on its descriptor (``fstat``);
- a directory on the way must be one only root can change: owned by root and
  not writable by its group or by others. A sticky directory writable by
  others (``/tmp``) is accepted on the way if the entry taken from it is owned
  by root: the sticky bit stops other users from renaming or removing it;
- the directory that holds the final entry must be one only root can write,
  sticky or not: anything else could put, or have put, the entry there;
- a symlink is followed only if root owns it (``/var/run -> /run``); its
  target is walked by the same rules. A symlink owned by anyone else, on the
  way or last, is refused;
- the final entry is opened with ``O_NOFOLLOW`` relative to its directory's
  descriptor and checked on that descriptor (type, link count); ``fchown``,
  ``fchmod`` and writes use the descriptor. A name is never checked and then
  used again.

A refusal raises :class:`UnsafePath` naming the directory or link and why;
other failures are ordinary ``OSError``. No cherrypy imports here.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import List, Optional, Tuple

#: As the kernel: more symlinks than this in one resolution is ELOOP.
MAX_SYMLINKS = 40

_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PEEK = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

#: Directories handed to the target (``chown``) never at these exact paths:
#: the system's own top directories and the shared ones under them.
SYSTEM_DIRS = frozenset({
    '/', '/bin', '/boot', '/dev', '/etc', '/home', '/lib', '/lib32', '/lib64', '/libx32',
    '/media', '/mnt', '/opt', '/proc', '/root', '/run', '/sbin', '/snap', '/srv', '/sys',
    '/tmp', '/usr', '/var',
    '/dev/shm', '/run/lock', '/run/user', '/run/systemd',
    '/var/backups', '/var/cache', '/var/lib', '/var/local', '/var/lock', '/var/log',
    '/var/mail', '/var/opt', '/var/run', '/var/spool', '/var/tmp', '/var/www',
})
#: ... nor anything under these: what root runs, reads at boot, or the kernel's.
SYSTEM_TREES = ('/bin', '/boot', '/dev', '/etc', '/lib', '/lib32', '/lib64', '/libx32',
                '/proc', '/root', '/sbin', '/sys', '/usr')


class UnsafePath(Exception):
    """``path`` cannot be used by root: a non-root user could have changed it."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(reason if reason.startswith(path) else f'{path}: {reason}')


def normalize(path: str) -> str:
    """Absolute and lexically normalized, like ``os.path.abspath`` (and no ``//``)."""
    p = os.path.normpath(os.path.abspath(path))
    return '/' + p.lstrip('/')


def system_path_reason(path: str) -> Optional[str]:
    """Why ``path`` is a system directory that must not be handed over; None if not."""
    p = normalize(path)
    if p in SYSTEM_DIRS:
        return f'{p} is a system directory'
    for top in SYSTEM_TREES:
        if p.startswith(top + '/'):
            return f'{p} is under the system directory {top}'
    return None


def describe(st: os.stat_result) -> str:
    return f'owner {st.st_uid}, group {st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o}'


def directory_problem(st: os.stat_result, holds_entry: bool) -> Optional[str]:
    """Why a non-root user could change this directory's entries, or None.

    ``holds_entry``: the directory holds the final entry, so the sticky bit is
    not enough (anyone could have created the entry). Otherwise a sticky
    directory passes here and the caller requires the entry to be root's.
    """
    if st.st_uid != 0:
        return f'is owned by uid {st.st_uid}, who can change its entries'
    writers = []
    if st.st_mode & stat.S_IWGRP:
        writers.append(f'group {st.st_gid}')
    if st.st_mode & stat.S_IWOTH:
        writers.append('every user')
    if not writers:
        return None
    if st.st_mode & stat.S_ISVTX:
        if not holds_entry:
            return None
        return (f'is writable by {" and ".join(writers)} (sticky, which does not stop another '
                f'user from creating the entry first)')
    return f'is writable by {" and ".join(writers)}'


def _sticky_open(st: os.stat_result) -> bool:
    """Writable by non-root users and sticky: only root's entries in it are safe."""
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)) and bool(st.st_mode & stat.S_ISVTX)


def _join(parts: List[str]) -> str:
    return '/' + '/'.join(parts)


@dataclass
class Parent:
    """The directory holding a path's last entry, open, checked; close() it."""

    fd: int
    name: str
    #: The path as walked: every symlink replaced by its target.
    real: str

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Parent:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _walk_once(path: str, asked: str):
    """One walk of the normalized ``path``: a Parent, or a new path (a symlink's)."""
    parts = [p for p in path.split('/') if p]
    if not parts:
        raise UnsafePath(asked, 'the root directory itself')
    fd = os.open('/', _WALK)
    done: List[str] = []
    try:
        st = os.fstat(fd)
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            here = _join(done)
            problem = directory_problem(st, holds_entry=last)
            if problem:
                raise UnsafePath(asked, f'directory {here} ({describe(st)}) {problem}')
            # The entry itself, not followed: a symlink is looked at, never traversed.
            try:
                efd = os.open(name, _PEEK, dir_fd=fd)
            except FileNotFoundError:
                if last:
                    parent, fd = Parent(fd, name, _join(done + [name])), -1
                    return parent
                raise FileNotFoundError(2, 'No such file or directory', _join(done + [name]))
            try:
                est = os.fstat(efd)
                where = _join(done + [name])
                if _sticky_open(st) and est.st_uid != 0:
                    raise UnsafePath(asked, f'{where} (owner {est.st_uid}) is in the sticky directory '
                                            f'{here} ({describe(st)}), where its owner can replace it')
                if stat.S_ISLNK(est.st_mode):
                    if est.st_uid != 0:
                        raise UnsafePath(asked, f'{where} is a symlink not owned by root (owner '
                                                f'{est.st_uid}); refusing to follow it')
                    target = os.readlink('', dir_fd=efd)
                    base = target if target.startswith('/') else os.path.join(here, target)
                    return normalize(os.path.join(base, *parts[i + 1:]))
                if last:
                    parent, fd = Parent(fd, name, where), -1
                    return parent
                if not stat.S_ISDIR(est.st_mode):
                    raise NotADirectoryError(20, 'Not a directory', where)
            finally:
                os.close(efd)
            nfd = os.open(name, _WALK, dir_fd=fd)
            nst = os.fstat(nfd)
            if (nst.st_dev, nst.st_ino) != (est.st_dev, est.st_ino):
                os.close(nfd)
                raise UnsafePath(asked, f'{where} changed while it was being opened')
            os.close(fd)
            fd, st = nfd, nst
            done.append(name)
    finally:
        if fd >= 0:
            os.close(fd)
    raise AssertionError('unreachable')  # pragma: no cover


def resolve_parent(path: str) -> Parent:
    """Walk safely to the directory holding ``path``'s last entry (which may be missing).

    Root-owned symlinks are followed, the last one included: the Parent is then
    that of the link's target. Raises UnsafePath, or OSError (ENOENT on the way).
    """
    asked = normalize(path)
    current = asked
    for _ in range(MAX_SYMLINKS + 1):
        result = _walk_once(current, asked)
        if isinstance(result, Parent):
            return result
        current = result
    raise UnsafePath(asked, f'more than {MAX_SYMLINKS} symlinks')


def _check_entry(asked: str, real: str, st: os.stat_result, kinds: Tuple[str, ...]) -> None:
    if stat.S_ISREG(st.st_mode) and 'file' in kinds:
        if st.st_nlink > 1:
            raise UnsafePath(asked, f'{real} has {st.st_nlink} hard links; refusing a file '
                                    f'linked elsewhere')
        return
    if stat.S_ISDIR(st.st_mode) and 'dir' in kinds:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UnsafePath(asked, f'{real} is a directory, expected a regular file')
    raise UnsafePath(asked, f'{real} is not a regular file'
                            + (' or a directory' if 'dir' in kinds else '')
                            + ' (a device, pipe or socket is left as it is)')


@dataclass
class Opened:
    """A path's final entry, open read-only (O_NOFOLLOW) and checked; close() it."""

    fd: int
    st: os.stat_result
    real: str

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_existing(path: str, kinds: Tuple[str, ...] = ('file',)) -> Opened:
    """Open an existing regular file (one link) or, with 'dir' in ``kinds``, directory."""
    asked = normalize(path)
    with resolve_parent(asked) as parent:
        try:
            pfd = os.open(parent.name, _PEEK, dir_fd=parent.fd)
        except OSError as e:
            raise OSError(e.errno, e.strerror, parent.real) from None
        try:
            pst = os.fstat(pfd)
        finally:
            os.close(pfd)
        if stat.S_ISLNK(pst.st_mode):  # only root can put one there; not followed again
            raise UnsafePath(asked, f'{parent.real} became a symlink while it was being opened')
        _check_entry(asked, parent.real, pst, kinds)  # before opening: no device is opened
        fd = os.open(parent.name, _READ, dir_fd=parent.fd)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (pst.st_dev, pst.st_ino):
                raise UnsafePath(asked, f'{parent.real} changed while it was being opened')
            _check_entry(asked, parent.real, st, kinds)
        except BaseException:
            os.close(fd)
            raise
        return Opened(fd, st, parent.real)


def identify(path: str) -> Tuple[int, int]:
    """(st_dev, st_ino) of the regular file ``path`` resolves to safely."""
    with open_existing(path) as opened:
        return opened.st.st_dev, opened.st.st_ino


def chown(path: str, uid: int, gid: int, *, directory_ok: bool = False,
          dry_run: bool = False) -> str:
    """Hand ``path`` to ``uid:gid`` on its descriptor; mode kept, set-id bits cleared.

    Refuses (UnsafePath) anything :func:`open_existing` refuses, and a path
    that resolves to a system directory. Returns the path as walked.
    """
    kinds = ('file', 'dir') if directory_ok else ('file',)
    with open_existing(path, kinds) as opened:
        reason = system_path_reason(opened.real)
        if reason:
            raise UnsafePath(normalize(path), f'{reason}; refusing to hand it over')
        st = opened.st
        if dry_run or (st.st_uid, st.st_gid) == (uid, gid):
            return opened.real
        os.fchown(opened.fd, uid, gid)
        mode = stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)
        if stat.S_IMODE(os.fstat(opened.fd).st_mode) != mode:
            os.fchmod(opened.fd, mode)
        return opened.real


def _open_for_writing(path: str, flags: int, mode: int) -> Tuple[int, str]:
    """Open (creating) the final entry of a safe path for writing; checked, one link."""
    asked = normalize(path)
    with resolve_parent(asked) as parent:
        fd = os.open(parent.name, flags | os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, mode, dir_fd=parent.fd)
        try:
            _check_entry(asked, parent.real, os.fstat(fd), ('file',))
        except BaseException:
            os.close(fd)
            raise
        return fd, parent.real


def open_append(path: str, mode: int = 0o666) -> int:
    """A log file for appending, created if missing (``mode`` less the umask, as open())."""
    fd, _ = _open_for_writing(path, os.O_APPEND, mode)
    return fd


def write_root_file(path: str, data: bytes, mode: int = 0o644) -> str:
    """Write ``data`` to ``path`` as root: owner root:root, ``mode`` whatever the umask.

    The file is not truncated before it has been checked (regular, one link).
    Returns the path as walked.
    """
    fd, real = _open_for_writing(path, 0, mode)
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (0, 0):
            os.fchown(fd, 0, 0)
        os.fchmod(fd, mode)
        os.ftruncate(fd, 0)
        _write_all(fd, data)
    finally:
        os.close(fd)
    return real


def secure_root_file(path: str, mode: int = 0o644) -> str:
    """An existing file root wrote (e.g. by CherryPy's PIDFile): made root:root ``mode``."""
    with open_existing(path) as opened:
        if (opened.st.st_uid, opened.st.st_gid) != (0, 0):
            os.fchown(opened.fd, 0, 0)
        if stat.S_IMODE(os.fstat(opened.fd).st_mode) != mode:
            os.fchmod(opened.fd, mode)
        return opened.real


def write_own_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Without root: write ``data`` to ``path`` (last component not followed), ``mode``."""
    fd = os.open(normalize(path), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_NOCTTY | os.O_CLOEXEC, mode)
    try:
        _check_entry(normalize(path), normalize(path), os.fstat(fd), ('file',))
        os.fchmod(fd, mode)
        os.ftruncate(fd, 0)
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def problem(path: str, *, must_exist: bool = False, kinds: Tuple[str, ...] = ('file',)) -> Optional[str]:
    """Why root could not safely use ``path``; None if it could. Changes nothing.

    A missing final entry is fine unless ``must_exist`` (its directory is checked).
    """
    try:
        if must_exist:
            open_existing(path, kinds).close()
            return None
        with resolve_parent(path) as parent:
            try:
                efd = os.open(parent.name, _PEEK, dir_fd=parent.fd)
            except FileNotFoundError:
                return None
            try:
                est = os.fstat(efd)
            finally:
                os.close(efd)
        _check_entry(normalize(path), parent.real, est, kinds)
    except UnsafePath as e:
        return e.reason
    except OSError as e:
        return f'{e.filename or path}: {e.strerror}'
    return None
