"""The CherryPy application: ``/`` (HTML) and ``/identity.json``."""

from __future__ import annotations

import cherrypy

from .identity_page import render
from .kernel_identity import StartInfo, collect

#: Mount config: identity data must never be served from a cache.
CONFIG = {'/': {'tools.response_headers.on': True,
                'tools.response_headers.headers': [('Cache-Control', 'no-store')]}}


class IdentitySite:
    """Each request reads the kernel's view afresh, from the thread serving it."""

    def __init__(self, start: StartInfo) -> None:
        self.start = start

    @cherrypy.expose
    def index(self) -> str:
        return render(collect(self.start))

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def identity_json(self) -> dict:  # CherryPy maps /identity.json to identity_json
        return collect(self.start)
