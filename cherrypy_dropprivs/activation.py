"""Config-file activation: ``cherrypy.engine.dropprivs``.

CherryPy's ``engine`` config namespace drives ``engine.X.on`` and
``engine.X.attr`` only if ``engine.X`` already exists, so importing the
package creates an unsubscribed plugin there (also under ``cherryd -i``).
"""

from __future__ import annotations

import cherrypy

from .plugin import DropPrivileges


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
    return plugin
