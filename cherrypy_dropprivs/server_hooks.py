"""Wiring the gate and the kept sockets into the servers on a CherryPy bus.

Each cheroot server gets three per-instance hooks: ``bind`` and
``bind_unix_socket`` adopt a kept socket instead of binding,
``requests.start`` runs the per-thread actions before the worker threads
exist, and ``serve`` waits at the gate before the accept loop starts.
Nothing on the per-request path is touched.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  cheroot's stop() needs it; the stdlib may be out of reach later
import os
import sys
import threading
import time
from typing import Any, Iterator, List

import cheroot.server
import portend
from cherrypy import _cpserver
from cherrypy.process import servers as cp_servers
from cherrypy.process import wspbus
from cherrypy.process.plugins import Daemonizer

from .errors import EXIT_DROP_FAILED, exit_now
from .gate import Gate
from .listening_sockets import KEEPER, addr_key, hold_backlog, listening_problem
from .restart_checks import ServerInfo, can_bind_again, reexec_blockers, reexec_failure, tls_files


class UngateableServer(Exception):
    """A server the gate cannot hold (not a cheroot HTTPServer)."""


class NotListening(Exception):
    """A held server's start ended without a socket listening on its address."""


def server_adapters(bus) -> List[cp_servers.ServerAdapter]:
    """Every ServerAdapter subscribed to the bus's ``start`` channel."""
    found = []
    for listener in bus.listeners.get('start', ()):
        owner = getattr(listener, '__self__', None)
        if isinstance(owner, cp_servers.ServerAdapter) and owner not in found:
            found.append(owner)
    return found


def adapter_key(adapter, httpserver=None) -> str:
    """The KEEPER key of a server's configured address (the same after execv)."""
    httpserver = httpserver if httpserver is not None else adapter.httpserver
    configured = adapter.bind_addr
    if configured is None and httpserver is not None:
        configured = httpserver.bind_addr
    return addr_key(configured)


def describe(adapter) -> str:
    try:
        # An unstarted cherrypy Server describes itself as '' (no httpserver yet).
        return adapter.description or repr(adapter.bind_addr)
    except Exception:  # an unstarted server may not know its address yet
        return repr(adapter.bind_addr)


def arm(adapter, gate: Gate) -> None:
    """Make ``adapter``'s server wait at ``gate`` and adopt kept sockets."""
    _wait_without_connecting(adapter, gate)
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


def _wait_without_connecting(adapter, gate: Gate) -> None:
    """Replace ServerAdapter.wait() while the gate is shut.

    CherryPy's wait() proves a server is up by connecting to it (portend),
    which needs a free slot in the very backlog that held clients fill: under
    traffic it times out and the start fails. While the gate is shut the
    server's own state is the proof instead: its accept loop is ready and its
    socket is listening on the configured address. The state is polled every
    5 ms (CherryPy polls every 100 ms), since every start and restart waits
    for it. With the gate open, CherryPy's own wait() runs unchanged.
    """
    adapter._dropprivs_wait_gate = gate
    if '_dropprivs_wait' in adapter.__dict__:
        return
    cherrypy_wait = adapter.wait

    def wait():
        if adapter._dropprivs_wait_gate.is_open:
            return cherrypy_wait()
        adapter.__dict__.pop('_dropprivs_unbound', None)
        while not getattr(adapter.httpserver, 'ready', False):
            if adapter.interrupt:
                raise adapter.interrupt
            time.sleep(0.005)
        hs = adapter.httpserver
        problem = listening_problem(getattr(hs, 'socket', None), adapter.bind_addr)
        if problem:
            adapter._dropprivs_unbound = problem
            raise NotListening(f'server {describe(adapter)} is not listening: {problem}')
        return None

    adapter._dropprivs_wait = True
    adapter.wait = wait


def hold_servers_now(bus, gate: Gate) -> None:
    """Hook the servers already subscribed (at the plugin's subscribe), so one
    whose start listener runs before the arm listener is held too. Problems are
    left to the arm listener, which reports them and fails closed."""
    for adapter in server_adapters(bus):
        try:
            arm(adapter, gate)
        except Exception:
            pass


def hold_servers_subscribed_later(bus, gate: Gate) -> None:
    """Hook each server as it subscribes to the bus while ``gate`` is shut.

    A server subscribed after the plugin, with a start priority below the arm
    listener's, would otherwise start (and serve, as root) before anything
    could hold it. Problems are left to the arm listener, as above.
    """
    if '_dropprivs_subscribe' in bus.__dict__:
        bus._dropprivs_subscribe_gate = gate
        return
    original = bus.subscribe

    def subscribe(channel, callback=None, priority=None):
        result = original(channel, callback, priority)
        owner = getattr(callback, '__self__', None)
        if (channel == 'start' and isinstance(owner, cp_servers.ServerAdapter)
                and not bus._dropprivs_subscribe_gate.is_open):
            try:
                arm(owner, bus._dropprivs_subscribe_gate)
            except Exception:
                pass
        return result

    bus._dropprivs_subscribe_gate = gate
    bus._dropprivs_subscribe = True
    bus.subscribe = subscribe


def _is_cheroot_server(httpserver: object) -> bool:
    return isinstance(httpserver, cheroot.server.HTTPServer)


def hook_httpserver(adapter: Any, httpserver: Any, gate: Gate) -> None:
    """Per-instance hooks on one cheroot server (see the module docstring)."""
    if not _is_cheroot_server(httpserver):
        raise UngateableServer(
            f'server {describe(adapter)} is a {type(httpserver).__name__}, not a cheroot '
            f'HTTPServer: its requests cannot be held until the drop'
        )
    if httpserver.__dict__.get('_dropprivs_hooked'):
        httpserver._dropprivs_gate = gate
        return
    if getattr(httpserver, 'ready', False):
        # Its accept loop already runs (its start listener ran before ours,
        # or it was started by hand): it may have served as root already,
        # and holding it now would hold nothing.
        raise UngateableServer(
            f'server {describe(adapter)} was already serving before the drop could hold it '
            f'(start it from the bus at its default priority 75, not before)'
        )
    httpserver._dropprivs_gate = gate
    cls = type(httpserver)

    def key() -> str:
        cached = httpserver.__dict__.get('_dropprivs_key')
        if cached is None:
            cached = httpserver._dropprivs_key = adapter_key(adapter, httpserver)
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
        # Also give up once the main thread has gone (an interrupted start, e.g.
        # KeyboardInterrupt before the drop): the held server and its workers
        # would otherwise keep the process alive as root forever. Stopping it
        # closes the socket (resetting held connections) and lets it exit.
        if not httpserver._dropprivs_gate.wait(
                lambda: httpserver.ready and threading.main_thread().is_alive()):
            httpserver.stop()  # a no-op when the bus already stopped it
            return None
        return cls.serve(httpserver)

    def stop():
        cls.stop(httpserver)
        if not getattr(adapter.bus, 'execv', False):
            # A stop for good: refuse new clients as a closed port would,
            # but keep the socket bound for a later start. Across a re-exec
            # it keeps listening and clients wait in its backlog instead.
            KEEPER.pause(key())

    pool = httpserver.requests
    start_pool = pool.start

    def start_workers():
        httpserver._dropprivs_gate.run_thread_actions()
        return start_pool()

    key()
    # Clients that arrive while the gate is shut can only wait: make room.
    httpserver.request_queue_size = max(httpserver.request_queue_size or 0, hold_backlog())
    httpserver.bind = bind
    httpserver.bind_unix_socket = bind_unix_socket
    httpserver.serve = serve
    httpserver.stop = stop
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
    """After the drop: keep each socket this process could not bind again."""
    from_activation = bool(os.environ.get('LISTEN_PID'))
    for adapter in adapters:
        hs = adapter.httpserver
        if from_activation or not can_bind_again(adapter.bind_addr):
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

    def fail(why: str):
        exit_now(bus.log, reexec_failure(why), EXIT_DROP_FAILED)

    def _do_execv():
        if os.geteuid() != 0:  # after the drop: exec only what the new process can run
            blockers = reexec_blockers(sys.executable, sys.argv[0] if sys.argv else '', startup_cwd())
            if blockers:
                fail('; '.join(blockers))
        KEEPER.prepare_exec(daemonized=any(d.finalized for d in daemonizers(bus)))
        try:
            return do_execv()
        except OSError as e:  # e.g. EACCES: the dropped user cannot reach the interpreter
            fail(f'execv({sys.executable}): {e}')

    def _set_cloexec():
        set_cloexec()
        KEEPER.mark_inheritable()

    bus._do_execv = _do_execv
    bus._set_cloexec = _set_cloexec
    bus._dropprivs_execv = True


def server_infos(adapters) -> List[ServerInfo]:
    """Plain facts about each server for restart_checks (no cherrypy there)."""
    out = []
    for adapter in adapters:
        addr = adapter.bind_addr
        has = addr is not None and addr_key(addr) in KEEPER
        out.append(ServerInfo(describe(adapter), addr, has, tls_files(adapter)))
    return out


def daemonizers(bus) -> List[Daemonizer]:
    found = []
    for listener in bus.listeners.get('start', ()):
        owner = getattr(listener, '__self__', None)
        if isinstance(owner, Daemonizer) and owner not in found:
            found.append(owner)
    return found


def stay_daemonized(bus) -> None:
    """In an image re-executed by a daemon: the Daemonizer (65) must not fork
    again. The process is still detached (session, streams); a new pid would
    leave the PID file root wrote pointing at nothing, and only root could
    rewrite it. CherryPy's Daemonizer forks even when it says "Already
    daemonized", and the bus already holds its start listener for this
    publish, so its fork is made a no-op on the instance."""
    for d in daemonizers(bus):
        d.finalized = True
        d.daemonize = _already_daemonized
    if daemonizers(bus):
        bus.log(f'dropprivs: already daemonized before the re-exec: not forking again '
                f'(pid {os.getpid()} kept)')


def _already_daemonized(*args, **kwargs) -> None:
    return None


def autoreload_on(bus) -> bool:
    reloader = getattr(bus, 'autoreload', None)
    return reloader is not None and any(
        getattr(listener, '__self__', None) is reloader for listener in bus.listeners.get('start', ()))


def startup_cwd() -> str:
    """The directory the bus chdirs to before it re-executes."""
    return getattr(wspbus, '_startup_cwd', None) or os.getcwd()


def iter_unbound(adapters) -> Iterator[str]:
    """'server (address): why' for each server that is not bound and held."""
    for adapter in adapters:
        if not is_bound(adapter):
            name, addr = describe(adapter), repr(adapter.bind_addr)
            where = name if name == addr else f'{name} (address {addr})'
            yield f'{where}: {unbound_reason(adapter)}'


def unbound_reason(adapter) -> str:
    hs = adapter.httpserver
    if adapter.interrupt is not None:
        return f'its start failed: {adapter.interrupt!r}'
    why = adapter.__dict__.get('_dropprivs_unbound')
    if why:
        return why
    if hs is None:
        return 'it has no HTTP server (its start listener did not run)'
    if not getattr(hs, 'ready', False):
        return 'its accept loop is not ready'
    if getattr(hs, 'socket', None) is None:
        return 'it has no socket'
    if not hs.__dict__.get('_dropprivs_hooked'):
        return 'it is not held by the gate'
    return 'it is not running'
