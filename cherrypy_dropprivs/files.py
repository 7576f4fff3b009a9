"""The files root touches before the drop: resolved safely, handed over, checked.

Acting as root on a path without trusting anything a non-root user could
change (the safe walk), handing a path to the target user on its
descriptor, and stat-based access for another identity (what the target
will be able to do after the drop; ACLs are not considered). No CherryPy.
"""

from __future__ import annotations

import os
import stat
from typing import Iterable, List, Optional, Protocol, Tuple, TypeVar, Union

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


_Fd = TypeVar('_Fd', bound='_OpenFd')


class _OpenFd:
    """A descriptor owned by the object: ``close()`` it, or use ``with``."""

    __slots__: Tuple[str, ...] = ('fd',)
    fd: int

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self: _Fd) -> _Fd:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Parent(_OpenFd):
    """The directory holding a path's last entry, open, checked; close() it."""

    __slots__ = ('name', 'real')

    def __init__(self, fd: int, name: str, real: str) -> None:
        #: ``real``: the path as walked, every symlink replaced by its target.
        self.fd, self.name, self.real = fd, name, real


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


#: The refusal of a file with other hard links (its own advice: see LINKED).
LINKED_ELSEWHERE = 'refusing a file linked elsewhere'


def _check_entry(asked: str, real: str, st: os.stat_result, kinds: Tuple[str, ...],
                 links_ok: bool = False) -> None:
    if stat.S_ISREG(st.st_mode) and 'file' in kinds:
        if st.st_nlink > 1 and not links_ok:
            raise UnsafePath(asked, f'{real} has {st.st_nlink} hard links; {LINKED_ELSEWHERE}')
        return
    if stat.S_ISDIR(st.st_mode) and 'dir' in kinds:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UnsafePath(asked, f'{real} is a directory, expected a regular file')
    raise UnsafePath(asked, f'{real} is not a regular file'
                            + (' or a directory' if 'dir' in kinds else '')
                            + ' (a device, pipe or socket is left as it is)')


class Opened(_OpenFd):
    """A path's final entry, open read-only (O_NOFOLLOW) and checked; close() it."""

    __slots__ = ('st', 'real')

    def __init__(self, fd: int, st: os.stat_result, real: str) -> None:
        self.fd, self.st, self.real = fd, st, real


def open_existing(path: str, kinds: Tuple[str, ...] = ('file',), links_ok: bool = False) -> Opened:
    """Open an existing regular file (one link, unless ``links_ok``: only to
    read it, where another name changes nothing) or, with 'dir' in ``kinds``,
    a directory."""
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
        _check_entry(asked, parent.real, pst, kinds, links_ok)  # before opening: no device is opened
        fd = _open_leased(parent.name, _READ, 0, parent.fd)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (pst.st_dev, pst.st_ino):
                raise UnsafePath(asked, f'{parent.real} changed while it was being opened')
            _check_entry(asked, parent.real, st, kinds, links_ok)
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


def _open_leased(name: str, flags: int, mode: int, dir_fd: int) -> int:
    """``openat`` with O_NONBLOCK (a FIFO must not block root's start), once more
    without it when a lease answers EWOULDBLOCK: the owner of a file (the
    target user, for a log handed over) can hold a lease on it, and the
    kernel then breaks it within ``fs.lease-break-time``. Only a regular file
    takes a lease, and its directory is root's: it cannot become a FIFO."""
    try:
        return os.open(name, flags, mode, dir_fd=dir_fd)
    except BlockingIOError:
        return os.open(name, flags & ~os.O_NONBLOCK, mode, dir_fd=dir_fd)


def _open_for_writing(path: str, flags: int, mode: int) -> Tuple[int, str]:
    """Open (creating) the final entry of a safe path for writing; checked, one link."""
    asked = normalize(path)
    with resolve_parent(asked) as parent:
        fd = _open_leased(parent.name, flags | os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                          | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, mode, parent.fd)
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


def _as_the_kernel_reads(path: Union[str, bytes]) -> Tuple[str, Optional[str]]:
    """(absolute path, why it cannot be checked or None) for a path another
    component will use by name. The walk here resolves ``..`` before the
    links; the kernel, after them: a path with ``..`` is refused."""
    text = os.fsdecode(path)
    if '..' in text.split('/'):
        return text, "it has a '..' component (the kernel applies it after following links)"
    return normalize(text), None


def read_problem(path: Union[str, bytes]) -> Optional[str]:
    """Why root could not safely read ``path`` by name, as CherryPy reads TLS
    files; None if it could. Changes nothing."""
    full, why = _as_the_kernel_reads(path)
    if why:
        return why
    try:
        open_existing(full, links_ok=True).close()
    except UnsafePath as e:
        return e.reason
    except OSError as e:
        return f'{e.filename or full}: {e.strerror}'
    return None


def bind_problem(path: Union[str, bytes]) -> Optional[str]:
    """Why root could not safely remove what is at ``path`` and bind a UNIX
    socket there (its directory and the way there); None if it could."""
    full, why = _as_the_kernel_reads(path)
    if why:
        return why
    try:
        with resolve_parent(full):
            return None
    except UnsafePath as e:
        return e.reason
    except OSError as e:
        return f'{e.filename or full}: {e.strerror}'


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


R, W, X = os.R_OK, os.W_OK, os.X_OK


#: Only the parents must be searchable: what ``stat(path)`` needs.
STAT = os.F_OK


class Who(Protocol):
    @property
    def uid(self) -> int: ...

    @property
    def gid(self) -> int: ...

    @property
    def groups(self) -> Iterable[int]: ...


def _names(mode: int) -> str:
    return ''.join(c for bit, c in ((R, 'r'), (W, 'w'), (X, 'x')) if mode & bit) or 'stat'


def _allowed(st: os.stat_result, who: Who, mode: int) -> bool:
    """One inode's permission bits against ``mode`` (R|W|X) for ``who``."""
    if mode == 0:
        return True
    if who.uid == 0:
        # root: everything but execute, which needs some x bit on non-directories
        return not (mode & X) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    perm = st.st_mode
    if st.st_uid == who.uid:
        bits = (perm >> 6) & 7
    elif st.st_gid == who.gid or st.st_gid in set(who.groups):
        bits = (perm >> 3) & 7
    else:
        bits = perm & 7
    return bits & mode == mode


def _parents(path: str) -> Tuple[str, ...]:
    """Every directory that must be searched to reach ``path`` (absolute)."""
    path = os.path.abspath(path)
    out = []
    head = os.path.dirname(path)
    while True:
        out.append(head)
        up = os.path.dirname(head)
        if up == head:
            break
        head = up
    return tuple(reversed(out))


def _walk(path: str, who: Who) -> Optional[str]:
    """Why the parents of ``path`` cannot be searched (symlinks resolved), or None."""
    real = os.path.realpath(path)
    for d in _parents(real):
        try:
            st = os.stat(d)
        except OSError as e:
            return f'{d}: {e.strerror}'
        if not _allowed(st, who, X):
            return (
                f'directory {d} (owner {st.st_uid}, group {st.st_gid}, mode '
                f'{stat.S_IMODE(st.st_mode):04o}) is not searchable (x) by uid {who.uid}'
            )
    return None


def why_not_reachable(path: str, who: Who) -> Optional[str]:
    """Why ``who`` could not reach (``stat``) ``path``: an unsearchable parent; or None.

    Says nothing about whether ``path`` exists.
    """
    return _walk(path, who)


def why_not(path: str, who: Who, mode: int = R) -> Optional[str]:
    """Why ``who`` could not access the existing ``path`` with ``mode``; None if it could.

    ``mode`` is a combination of :data:`R`, :data:`W`, :data:`X`, or
    :data:`STAT` (only reaching the path: ``stat``, what the Autoreloader does).
    """
    reason = _walk(path, who)
    if reason:
        return reason
    try:
        st = os.stat(path)
    except OSError as e:
        return f'{path}: {e.strerror}'
    if not _allowed(st, who, mode):
        return (
            f'{path} (owner {st.st_uid}, group {st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o}) '
            f'is not {_names(mode)} for uid {who.uid} gid {who.gid}'
        )
    return None


def can_access(path: str, who: Who, mode: int = R) -> bool:
    """True if ``who`` could access ``path`` with ``mode`` (see :func:`why_not`)."""
    return why_not(path, who, mode) is None


def why_not_creatable(path: str, who: Who) -> Optional[str]:
    """Why ``who`` could not create ``path`` (w+x on its directory); None if it could."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f'directory {parent} does not exist'
    return why_not(parent, who, W | X)


def why_not_writable_file(path: str, who: Who) -> Optional[str]:
    """Why ``who`` could not (re)open ``path`` for writing, creating it if missing."""
    if os.path.lexists(path):
        return why_not(path, who, W)
    return why_not_creatable(path, who)


def why_not_removable(path: str, who: Who) -> Optional[str]:
    """Why ``who`` could not unlink ``path``: w+x on the directory, sticky-bit rule."""
    parent = os.path.dirname(os.path.abspath(path))
    reason = why_not(parent, who, W | X)
    if reason:
        return reason
    if who.uid == 0:
        return None
    try:
        dst = os.stat(parent)
        fst = os.lstat(path)
    except OSError as e:
        return f'{e.filename}: {e.strerror}'
    if dst.st_mode & stat.S_ISVTX and who.uid not in (dst.st_uid, fst.st_uid):
        return (
            f'directory {parent} is sticky (mode {stat.S_IMODE(dst.st_mode):04o}) and neither '
            f'it nor {path} belongs to uid {who.uid}'
        )
    return None


def hand_over_or_raise(path: str, who: Who, *, directory_ok: bool = False,
                       dry_run: bool = False) -> str:
    """chown ``path`` to ``who``'s uid and primary gid; the path as walked.

    Raises :class:`~.UnsafePath` when the safety rules refuse it,
    ``OSError`` otherwise (``FileNotFoundError`` for a missing path). Permission
    bits stay as they were (set-id bits cleared, as the kernel's chown would).
    ``dry_run`` only says whether it would be done (the check command).
    """
    return chown(path, who.uid, who.gid, directory_ok=directory_ok, dry_run=dry_run)


def hand_over(
    path: str, who: Who, *, directory_ok: bool = False, dry_run: bool = False
) -> Optional[str]:
    """Like :func:`hand_over_or_raise`; None when done, else why it was not done."""
    try:
        hand_over_or_raise(path, who, directory_ok=directory_ok, dry_run=dry_run)
    except UnsafePath as e:
        return str(e)
    except OSError as e:
        return f'{e.filename or path}: {e.strerror}'
    return None


LOG_NOT_WRITABLE = (
    'log file {path} cannot be reopened by {user} after the drop ({reason}): a graceful restart '
    '(SIGUSR1, engine.graceful()) would fail to reopen it. Fix: keep chown_logs=True (the '
    'default), or chown {user} {path}'
)


LOG_NOT_HANDED_OVER = (
    'log file {path} was not handed to {user}: {reason}. Fix: log to a regular file that only '
    'root can link to, e.g. in a root-owned directory'
)


SESSION_NOT_WRITABLE = (
    'session storage path {path} (tools.sessions.storage_path) is not writable by {user} '
    '({reason}): sessions will fail after the drop. Fix: chown=[{path!r}], or '
    'install -d -o {user} -m 0700 {path}'
)


AUTORELOAD_NOT_STATABLE = (
    'the Autoreloader watches {count} file(s) {user} cannot stat, e.g. {path} ({reason}): after '
    'the drop it treats a file it saw before and cannot stat now as changed and restarts, in a '
    'loop, and a re-executed process cannot read that code. Fix: engine.autoreload.on: False '
    '(production), or make those directories searchable by {user}'
)


#: One message for this problem, from the check command and from the start alike.
TLS_NOT_READABLE = (
    'TLS {which} {path} is not readable by {user} ({reason}): it is read again by every restart '
    'after the drop (engine.restart(), SIGHUP, the Autoreloader), which would then fail. Fix: '
    "give the user's group read access, e.g. `chgrp {group} {path} && chmod g+r {path}` (every "
    'directory above it must be searchable too), or point the server at a copy the user can read'
)


TLS_UNSAFE = (
    'TLS {which} {path} (server {server}) is not safe for root to read: {reason}. The server '
    'reads it as root when it starts, so a user who can change its path could make root read '
    'any file into the process that user then runs. Fix: keep TLS files where only root can '
    'change the path (e.g. under /etc/ssl or /etc/letsencrypt, owned by root, not group- or '
    'world-writable); a file owned by another user is fine there'
)


UNIX_UNSAFE = (
    'UNIX socket {path} (server {server}) is not safe for root to bind: {reason}. The server '
    'removes whatever is at that path and binds there as root, so a user who can change the '
    'path could make root remove a file elsewhere, or listen where no client can reach. Fix: '
    'a directory only root can write, e.g. /run/{name} (systemd RuntimeDirectory={name} with '
    'no User=)'
)


PIDFILE_NOT_REMOVABLE = (
    'PID file {path} cannot be removed by {user} at exit ({reason}): root writes it, before the '
    'drop, in a directory only root can write, so it stays behind after a stop (the next start '
    'rewrites it). Remove it after the stop (systemd: ExecStopPost=-/bin/rm -f {path}), or under '
    'systemd use no PID file (Type=simple). Do not make its directory writable by {user}: root '
    'writes there at the next start'
)


PIDFILE_UNSAFE = (
    'PID file {path} is not safe for root to write: {reason}. Root writes the PID file before '
    'the drop, and a user who can change its directory can point that write at any file. Fix: '
    'put it in a directory only root can write (owned by root, not group- or world-writable), '
    'e.g. /run/{base}, or /run/{name}/{base} with systemd RuntimeDirectory={name} and no User=; '
    'under systemd, Type=simple needs no PID file'
)


LOG_UNSAFE = (
    'log file {path} is not safe for root to open: {reason}. CherryPy opens log files as root '
    'when the config is applied, and the dropped process keeps writing to what root opened. '
    'Fix: keep log files in a directory only root can write (owned by root, not group- or '
    'world-writable), e.g. /var/log/{name}/ created by systemd LogsDirectory={name} with no '
    'User= (chown_logs=True hands the files themselves to {user})'
)


LINKED = (
    '{what} {path} is not safe for root to act on: {reason}. Its directory may be sound: the '
    'other name can be anywhere, and {who} can make one for a file it owns (root would then '
    'write to, or hand over, a file that also lives elsewhere). Fix: remove the other names '
    '(find / -xdev -samefile {path}), or the file; the start stops (exit 77) until then'
)


CHOWN_MISSING = (
    'chown path {path} does not exist, so it was not handed to {user}. Fix: create it, or '
    'remove it from chown'
)


CHOWN_REFUSED = 'chown path {path} was not handed to {user}: {reason}'


CHOWN_UNSAFE = (
    'chown path {path} is not safe for root to hand to {user}: {reason}. Fix: a path whose '
    'directories only root can write (owned by root, not group- or world-writable), e.g. '
    'install -d -o root -m 0755 /var/lib/{name} and chown=[\'/var/lib/{name}/sessions\']'
)


class Finding:
    """One thing the dropped process will not be able to do.

    ``kind``: 'log', 'session', 'autoreload', 'tls', 'pidfile' or 'chown'.
    ``severity``: 'warning', the dropped process will fail at something; or
    'note', expected and safe, said once (a PID file root wrote stays behind).
    """

    __slots__ = ('kind', 'path', 'message', 'severity')

    def __init__(self, kind: str, path: str, message: str, severity: str = 'warning') -> None:
        self.kind, self.path, self.message, self.severity = kind, path, message, severity

    def __str__(self) -> str:
        return self.message


def make(kind: str, template: str, path: str, *, severity: str = 'warning', **fields) -> Finding:
    return Finding(kind, path, template.format(path=path, **fields), severity)


def run_dir_name(path: str) -> str:
    """``/var/run/web.pid`` -> ``web``: a name for a suggested /run/<name>/."""
    base = os.path.basename(path)
    return base.rsplit('.', 1)[0] if '.' in base else base or 'app'


def _user(who) -> str:
    return getattr(who, 'user', None) or str(who.uid)


def _group(who) -> str:
    return getattr(who, 'group', None) or str(who.gid)


def check_log_file(path: str, who) -> Optional[Finding]:
    reason = why_not_writable_file(path, who)
    if reason is None:
        return None
    return make('log', LOG_NOT_WRITABLE, path, user=_user(who), reason=reason)


def check_session_path(path: str, who) -> Optional[Finding]:
    reason: Optional[str]
    if not os.path.isdir(path):
        reason = f'{path} is not a directory' if os.path.exists(path) else 'it does not exist'
    else:
        reason = why_not(path, who, R | W | X)
    if reason is None:
        return None
    return make('session', SESSION_NOT_WRITABLE, path, user=_user(who), reason=reason)


def check_watched_files(paths: Iterable[str], who) -> Optional[Finding]:
    """One finding for all watched files the identity cannot stat (or None)."""
    blocked = []
    for p in sorted(set(paths)):
        reason = why_not_reachable(p, who)  # a missing file is not watched: no matter
        if reason is not None:
            blocked.append((p, reason))
    if not blocked:
        return None
    path, reason = blocked[0]
    return make('autoreload', AUTORELOAD_NOT_STATABLE, path, user=_user(who),
                reason=reason, count=len(blocked))


def check_tls_file(which: str, path: str, who) -> Optional[Finding]:
    reason = why_not(path, who, R)
    if reason is None:
        return None
    return make('tls', TLS_NOT_READABLE, path, which=which, user=_user(who),
                group=_group(who), reason=reason)


def check_pidfile(path: str, who) -> Optional[Finding]:
    """A note when ``who`` cannot remove the PID file at exit: always the case for a
    PID file root writes, since its directory must be one only root can write."""
    reason = why_not_creatable(path, who)
    if reason is None:
        return None
    return make('pidfile', PIDFILE_NOT_REMOVABLE, path, severity='note', user=_user(who),
                reason=reason)


def pidfile_unsafe(path: str, reason: str, who=None) -> Finding:
    if LINKED_ELSEWHERE in reason:
        return make('pidfile', LINKED, path, reason=reason, what='PID file',
                    who='a user who owns or may write it')
    return make('pidfile', PIDFILE_UNSAFE, path, reason=reason, name=run_dir_name(path),
                base=os.path.basename(path))


def log_unsafe(path: str, reason: str, who) -> Finding:
    if LINKED_ELSEWHERE in reason:
        return make('log', LINKED, path, reason=reason, what='log file', who=f'the user {_user(who)}')
    return make('log', LOG_UNSAFE, path, reason=reason, user=_user(who),
                name=_app_name(path))


def chown_unsafe(path: str, reason: str, who) -> Finding:
    if LINKED_ELSEWHERE in reason:
        return make('chown', LINKED, path, reason=reason, what='chown path',
                    who=f'the user {_user(who)}')
    return make('chown', CHOWN_UNSAFE, path, reason=reason, user=_user(who),
                name=_app_name(path))


def _app_name(path: str) -> str:
    """``/srv/mysite/logs/error.log`` -> a name for a suggested directory: the first
    component under /var/log, /var/lib, /srv or /opt, else the file's directory name."""
    parts = [p for p in os.path.normpath(path).split(os.sep) if p]
    for depth, top in ((2, ('var', 'log')), (2, ('var', 'lib')), (1, ('srv',)), (1, ('opt',))):
        if tuple(parts[:depth]) == top and len(parts) > depth + 1:
            return parts[depth]
    parent = os.path.basename(os.path.dirname(os.path.normpath(path)))
    return parent or 'app'
