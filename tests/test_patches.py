"""Every CherryPy internal the plugin replaces is put back by unsubscribe() (patches.py).

In-process, on a bus of its own: subscribe() and the arm listener replace
what they replace (the servers' readiness and accept hooks, the bus's
subscribe, portend, a PIDFile's class, a Daemonizer's files); unsubscribe()
must leave every one of those objects exactly as it found it.
"""

from __future__ import annotations

import copy

from cherrypy import _cpserver
from cherrypy.process import plugins
from cherrypy.process import servers as cp_servers
from cherrypy.process.wspbus import Bus
from conftest import free_port, needs_root

from cherrypy_dropprivs import DropPrivileges, patches


def _state(obj) -> dict:
    """An object's own attributes, and its class: what a patch could change."""
    return {'__class__': obj.__class__, **{k: v for k, v in vars(obj).items()}}


def _listeners(bus) -> dict:
    return {ch: set(ls) for ch, ls in copy.copy(bus.listeners).items()}


@needs_root  # the arm listener holds servers only for a drop from root
def test_unsubscribe_undoes_every_patch(tmp_path):
    bus = Bus()
    server = _cpserver.Server()
    server.bus = bus
    server.socket_host, server.socket_port = '127.0.0.1', free_port()
    server.subscribe()
    pidfile = plugins.PIDFile(bus, str(tmp_path / 'site.pid'))
    pidfile.subscribe()
    daemon = plugins.Daemonizer(bus, stdout=str(tmp_path / 'out.log'))
    daemon.subscribe()
    watched = [server, bus, pidfile, daemon]
    before = [_state(o) for o in watched]
    portend_before, listeners_before = cp_servers.portend, _listeners(bus)

    plugin = DropPrivileges(bus, uid='nobody')
    plugin.subscribe()
    listeners_before_arm = _listeners(bus)
    plugin.arm()  # what the start does before the servers: hold them, secure the files
    changed = [o for o, b in zip(watched, before) if _state(o) != b]
    assert {type(o).__name__ for o in changed} >= {'Server', 'Bus', 'SafePIDFile', 'Daemonizer'}, changed
    assert patches.replaced(server, 'wait') and patches.replaced(bus, 'subscribe')
    assert cp_servers.portend is not portend_before

    plugin.unsubscribe()
    for obj, b in zip(watched, before):
        assert _state(obj) == b, type(obj).__name__
    assert cp_servers.portend is portend_before
    assert _listeners(bus) == listeners_before
    assert listeners_before_arm  # (the plugin's own listeners were there, and are gone)
    assert not any(patches.replaced(o, name) for o in watched for name in ('wait', 'subscribe'))
