"""Handing a path to the target user before the drop (chown, mode kept).

Done as root, so it refuses anything that could turn a chown into a gift of
someone else's file. Everything goes through :mod:`.safe_paths`: the path is
walked from ``/`` on descriptors (no directory on the way that a non-root
user could change, no symlink root does not own), the final entry is opened
with ``O_NOFOLLOW`` and ``fchown`` acts on that descriptor. Only regular
files with one link and, where allowed, directories; never a system
directory. No cherrypy imports here.
"""

from __future__ import annotations

from typing import Optional

from . import safe_paths
from .access import Who
from .safe_paths import UnsafePath


def hand_over_or_raise(path: str, who: Who, *, directory_ok: bool = False,
                       dry_run: bool = False) -> str:
    """chown ``path`` to ``who``'s uid and primary gid; the path as walked.

    Raises :class:`~.safe_paths.UnsafePath` when the safety rules refuse it,
    ``OSError`` otherwise (``FileNotFoundError`` for a missing path). Permission
    bits stay as they were (set-id bits cleared, as the kernel's chown would).
    ``dry_run`` only says whether it would be done (the check command).
    """
    return safe_paths.chown(path, who.uid, who.gid, directory_ok=directory_ok, dry_run=dry_run)


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
