"""Wiring the gate and the kept sockets into the servers on a CherryPy bus.

Each cheroot server gets three per-instance hooks: ``bind`` and
``bind_unix_socket`` adopt a kept socket instead of binding,
``requests.start`` runs the per-thread actions before the worker threads
exist, and ``serve`` waits at the gate before the accept loop starts.
Nothing on the per-request path is touched.
"""

from __future__ import annotations

import os
from typing import Iterator, List

import cheroot.server
import portend
from cherrypy import _cpserver
from cherrypy.process import servers as cp_servers

from .gate import Gate
from .listening_sockets import KEEPER, addr_key


class UngateableServer(Exception):
    """A server the gate cannot hold (not a cheroot HTTPServer)."""


def server_adapters(bus) -> List[cp_servers.ServerAdapter]:
    """Every ServerAdapter subscribed to the bus's ``start`` channel."""
    found = []
    for listener in bus.listeners.get('start', ()):
        owner = getattr(listener, '__self__', None)
        if isinstance(owner, cp_servers.ServerAdapter) and owner not in found:
            found.append(owner)
    return found


def describe(adapter) -> str:
    try:
        return adapter.description
    except Exception:  # an unstarted server may not know its address yet
        return repr(adapter.bind_addr)


def arm(adapter, gate: Gate) -> None:
    """Make ``adapter``'s server wait at ``gate`` and adopt kept sockets."""
    if adapter.httpserver is not None:
        hook_httpserver(adapter, adapter.httpserver, gate)
        return
    if not isinstance(adapter, _cpserver.Server):
        raise UngateableServer(f'server {describe(adapter)} has no HTTP server to hold')
    if '_dropprivs_gate' in adapter.__dict__:
        adapter._dropprivs_gate = gate
        return
    create = adapter.httpserver_from_self

    def httpserver_from_self(httpserver=None):
        made, bind_addr = create(httpserver)
        hook_httpserver(adapter, made, adapter._dropprivs_gate)
        return made, bind_addr

    adapter._dropprivs_gate = gate
    adapter.httpserver_from_self = httpserver_from_self


def hook_httpserver(adapter, httpserver, gate: Gate) -> None:
    if not isinstance(httpserver, cheroot.server.HTTPServer):
        raise UngateableServer(
            f'server {describe(adapter)} is a {type(httpserver).__name__}, not a cheroot '
            f'HTTPServer: its requests cannot be held until the drop'
        )
    httpserver._dropprivs_gate = gate
    if httpserver.__dict__.get('_dropprivs_hooked'):
        return
    cls = type(httpserver)

    def key() -> str:
        cached = httpserver.__dict__.get('_dropprivs_key')
        if cached is None:
            configured = adapter.bind_addr if adapter.bind_addr is not None else httpserver.bind_addr
            cached = httpserver._dropprivs_key = addr_key(configured)
        return cached

    def adopt(sock):
        if httpserver.ssl_adapter is not None:
            sock = httpserver.ssl_adapter.bind(sock)
        httpserver.socket = sock
        httpserver.bind_addr = httpserver.resolve_real_bind_addr(sock)
        return sock

    def bind(family, type, proto=0):
        sock = KEEPER.take(key())
        return adopt(sock) if sock is not None else cls.bind(httpserver, family, type, proto)

    def bind_unix_socket(bind_addr):
        sock = KEEPER.take(key())
        return adopt(sock) if sock is not None else cls.bind_unix_socket(httpserver, bind_addr)

    def serve():
        if not httpserver._dropprivs_gate.wait(lambda: httpserver.ready):
            return None
        return cls.serve(httpserver)

    pool = httpserver.requests
    start_pool = pool.start

    def start_workers():
        httpserver._dropprivs_gate.run_thread_actions()
        return start_pool()

    key()
    httpserver.bind = bind
    httpserver.bind_unix_socket = bind_unix_socket
    httpserver.serve = serve
    pool.start = start_workers
    httpserver._dropprivs_hooked = True


def is_bound(adapter) -> bool:
    """Started, ready, holding a socket, and held by our gate."""
    hs = adapter.httpserver
    return bool(
        adapter.running
        and hs is not None
        and getattr(hs, 'ready', False)
        and getattr(hs, 'socket', None) is not None
        and hs.__dict__.get('_dropprivs_hooked')
    )


def keep_sockets(adapters) -> None:
    for adapter in adapters:
        hs = adapter.httpserver
        from_activation = bool(os.environ.get('LISTEN_PID'))
        KEEPER.keep(hs._dropprivs_key, hs.socket, from_activation)


class _PortendWithKeptSockets:
    """portend as CherryPy's ServerAdapter uses it, except that a port whose
    listening socket we keep counts as free: it is ours to adopt, and waiting
    for it to close would wait forever."""

    def __getattr__(self, name):
        return getattr(portend, name)

    def free(self, host, port, timeout=float('inf')):
        if port in KEEPER.ports():
            return None
        return portend.free(host, port, timeout=timeout)


def patch_port_checks() -> None:
    if not isinstance(cp_servers.portend, _PortendWithKeptSockets):
        cp_servers.portend = _PortendWithKeptSockets()


def install_execv_handoff(bus) -> None:
    """Carry the kept sockets through the bus's re-exec (restart, autoreload, SIGHUP)."""
    if bus.__dict__.get('_dropprivs_execv'):
        return
    do_execv, set_cloexec = bus._do_execv, bus._set_cloexec

    def _do_execv():
        KEEPER.prepare_exec()
        return do_execv()

    def _set_cloexec():
        set_cloexec()
        KEEPER.mark_inheritable()

    bus._do_execv = _do_execv
    bus._set_cloexec = _set_cloexec
    bus._dropprivs_execv = True


def iter_unbound(adapters) -> Iterator[str]:
    for adapter in adapters:
        if not is_bound(adapter):
            yield describe(adapter)
