"""Config-file activation: ``cherrypy.engine.dropprivs``.

CherryPy's ``engine`` config namespace drives ``engine.X.on`` and
``engine.X.attr`` only if ``engine.X`` already exists, so importing the
package creates an unsubscribed plugin there (also under ``cherryd -i``).
A bad ``engine.dropprivs.*`` setting that nothing catches (as under cherryd,
which applies the config outside any try) ends the process with
EXIT_BAD_CONFIG and one line, not a traceback and status 1.
"""

from __future__ import annotations

import os
import sys

import cherrypy

from .errors import EXIT_BAD_CONFIG, ConfigError
from .plugin import DropPrivileges


def _is_bad_config(exc: BaseException) -> bool:
    return isinstance(exc, ConfigError) or hasattr(exc, 'dropprivs_option')


def _exit_on_bad_config(previous):
    def excepthook(exc_type, exc, tb):
        if not _is_bad_config(exc):
            return previous(exc_type, exc, tb)
        detail = str(exc) if isinstance(exc, ConfigError) else f'{exc_type.__name__}: {exc}'
        print(f'cherrypy_dropprivs: bad configuration: {detail}; exiting with status '
              f'{EXIT_BAD_CONFIG} before anything was bound', file=sys.stderr, flush=True)
        os._exit(EXIT_BAD_CONFIG)

    excepthook._dropprivs = True  # type: ignore[attr-defined]
    return excepthook


def install(engine=None) -> DropPrivileges:
    engine = cherrypy.engine if engine is None else engine
    existing = getattr(engine, 'dropprivs', None)
    if isinstance(existing, DropPrivileges):
        return existing
    try:
        plugin = DropPrivileges(engine)
    except ValueError:  # no 'nobody' on this system: config must name a user
        plugin = DropPrivileges(engine, uid=None)
        plugin._uid = 'nobody'  # still the documented default; resolved (and refused) at start
    engine.dropprivs = plugin
    if not getattr(sys.excepthook, '_dropprivs', False):
        sys.excepthook = _exit_on_bad_config(sys.excepthook)
    return plugin
