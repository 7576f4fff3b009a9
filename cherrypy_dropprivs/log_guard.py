"""CherryPy's log files, opened as root without following what others planted.

CherryPy opens ``log.error_file`` and ``log.access_file`` when the config is
applied: as root, with ``open(name, 'a')``, which follows symlinks and creates
the file. After a compromise the target user may have replaced a log file by a
symlink to a root-only file, or to a path where root then creates a file.
Checking later is too late: root has already opened (or created) it, and
CherryPy logs ``Bus STARTING`` into it before any start listener runs.

So :func:`install` wraps ``LogManager._add_builtin_file_handler``: while the
process is root, the file is opened through :mod:`.safe_paths` (every directory
only root can change, no symlink root does not own, ``O_NOFOLLOW``, one link).
A path refused by those rules is not opened at all: no handler is added, a
WARNING says so at once, and :func:`refused` lists it, so that the plugin fails
closed before serving (see :func:`.preflight.check_log_streams`). Not root:
CherryPy's own code runs unchanged. Ordinary errors (a missing directory)
are raised as CherryPy would raise them.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Tuple

from cherrypy import _cplogging

from .safe_paths import UnsafePath, open_append

#: logger -> (path, reason): a builtin log file refused while root.
_REFUSED: Dict[logging.Logger, Tuple[str, str]] = {}


def refused() -> Dict[str, str]:
    """path -> reason, for every log file still configured that was refused."""
    return {path: reason for path, reason in _REFUSED.values()}


def install() -> None:
    """Wrap CherryPy's LogManager file handling (once; idempotent)."""
    cls = _cplogging.LogManager
    if getattr(cls, '_dropprivs_guarded', False):
        return
    original_add = cls._add_builtin_file_handler
    original_set = cls._set_file_handler

    def _set_file_handler(self, log, filename):
        _REFUSED.pop(log, None)  # a new value: what was refused before no longer counts
        return original_set(self, log, filename)

    def _add_builtin_file_handler(self, log, fname):
        if os.geteuid() != 0:
            return original_add(self, log, fname)
        path = os.path.abspath(fname)
        try:
            fd = open_append(path)
        except UnsafePath as e:
            _REFUSED[log] = (path, e.reason)
            self.error(f'dropprivs: WARNING: log file {path} not opened as root: {e.reason}; '
                       f'the start will stop before serving', 'ENGINE', severity=logging.WARNING)
            return None
        h = logging.FileHandler(fname, delay=True)
        h.stream = os.fdopen(fd, h.mode, encoding=h.encoding, errors=h.errors)
        h.setFormatter(_cplogging.logfmt)
        h._cpbuiltin = 'file'
        log.addHandler(h)
        return None

    cls._add_builtin_file_handler = _add_builtin_file_handler
    cls._set_file_handler = _set_file_handler
    cls._dropprivs_guarded = True
