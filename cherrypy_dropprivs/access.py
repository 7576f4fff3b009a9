"""What a target identity could do to a path, computed without becoming it.

The preflight checks must run before the drop (as root, whose own access
checks would all succeed), and the check command runs without root at all.
So access is computed from ``stat`` alone, the way the kernel's
``generic_permission`` does it: the owner bits if the uid owns the file,
else the group bits if the file's group is the primary or a supplementary
group, else the other bits; and search (x) permission on every parent
directory. POSIX ACLs, capabilities (CAP_DAC_OVERRIDE), read-only mounts,
LSMs (SELinux/AppArmor) and immutable attributes are NOT considered: a path
reported accessible may still be refused by those. No cherrypy imports here.

``identity`` is anything with ``uid``, ``gid`` and ``groups`` attributes,
e.g. :class:`cherrypy_dropprivs.identity.Identity`.
"""

from __future__ import annotations

import os
import stat
from typing import Iterable, Optional, Protocol, Tuple

R, W, X = os.R_OK, os.W_OK, os.X_OK
#: Only the parents must be searchable: what ``stat(path)`` needs.
STAT = os.F_OK

__all__ = [
    'R', 'W', 'X', 'STAT', 'can_access', 'why_not', 'why_not_reachable', 'why_not_writable_file',
    'why_not_creatable', 'why_not_removable', 'Who',
]


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
