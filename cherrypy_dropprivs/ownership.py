"""Handing a path to the target user before the drop (chown, mode kept).

Done as root, so it refuses anything that could turn a chown into a gift of
someone else's file: only regular files and directories, no file with more
than one hard link, and no symlink on the way that root does not own (a
user who can plant a link could otherwise point a log path at /etc/shadow).
No cherrypy imports here.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

from .access import Who


def untrusted_symlink(path: str) -> Optional[str]:
    """The first symlink on ``path`` not owned by root, or None."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    here = os.sep
    for depth, part in enumerate(parts):
        here = os.path.join(here, part)
        try:
            st = os.lstat(here)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid != 0:
                return here
            target = os.readlink(here)
            rest = os.path.join(*parts[depth + 1:]) if depth + 1 < len(parts) else ''
            base = target if os.path.isabs(target) else os.path.join(os.path.dirname(here), target)
            return untrusted_symlink(os.path.normpath(os.path.join(base, rest)))
    return None


def hand_over(
    path: str, who: Who, *, directory_ok: bool = False, dry_run: bool = False
) -> Optional[str]:
    """chown ``path`` to ``who``'s uid and primary gid; None, or why it was not done.

    Permission bits stay as they were (the kernel's chown would clear
    set-id bits; none are restored on purpose). ``dry_run`` only says whether
    it would be done (the check command).
    """
    link = untrusted_symlink(path)
    if link:
        return f'{path}: the symlink {link} is not owned by root; refusing to chown through it'
    try:
        lst = os.lstat(path)
    except OSError as e:
        return f'{path}: {e.strerror}'
    if stat.S_ISLNK(lst.st_mode) and lst.st_uid != 0:
        return f'{path}: a symlink not owned by root; refusing to chown through it'
    if not (stat.S_ISDIR(lst.st_mode) or stat.S_ISREG(lst.st_mode) or stat.S_ISLNK(lst.st_mode)):
        return f'{path} is not a regular file (a device or pipe is left as it is)'
    # Work on an open descriptor, not the name: the file cannot be swapped for a
    # link between the checks and the chown (O_NOFOLLOW on the last component).
    real = os.path.realpath(path) if stat.S_ISLNK(lst.st_mode) else path
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        return f'{path}: {e.strerror}'
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            if not directory_ok:
                return f'{path} is a directory, expected a file'
        elif not stat.S_ISREG(st.st_mode):
            return f'{path} is not a regular file (a device or pipe is left as it is)'
        elif st.st_nlink > 1:
            return f'{path} has {st.st_nlink} hard links; refusing to chown a file linked elsewhere'
        if (st.st_uid, st.st_gid) == (who.uid, who.gid) or dry_run:
            return None
        try:
            os.fchown(fd, who.uid, who.gid)
            mode = stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)
            if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
                os.fchmod(fd, mode)
        except OSError as e:
            return f'{path}: chown to {who.uid}:{who.gid} failed: {e.strerror}'
        return None
    finally:
        os.close(fd)
