"""Holding every server until the drop is verified.

The servers bind as root and their threads exist before the drop, but no
connection is accepted (let alone served) until the gate opens: each cheroot
server's ``serve`` (its accept loop) waits at the gate. Connections that
arrive meanwhile wait in the kernel's listen backlog, sized for it, and are
served by the dropped process; if the drop fails the process exits and the
kernel resets them. Whether a held server is up is read from its own socket,
never by connecting to it (a full backlog would make that time out).
Per server: ``bind``/``bind_unix_socket`` adopt a kept socket (handoff),
``requests.start`` runs per-thread actions before the worker threads exist,
``stop`` pauses a kept socket. Nothing on the per-request path is touched.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import Any, Callable, Iterator, List

import cheroot.server
from cherrypy import _cpserver
from cherrypy.process import servers as cp_servers

from . import patches
from .handoff import KEEPER, adapter_key, describe, hold_backlog, listening_problem, server_adapters


class Gate:
    """Shut from the arm listener until the drop is verified; every held accept loop waits here."""

    def __init__(self) -> None:
        self._open = threading.Event()
        #: Per-thread work (capabilities, no_new_privs) each server thread runs
        #: before it creates its worker threads, so that they inherit it.
        self.thread_actions: List[Callable[[], None]] = []

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def wait(self, still_wanted: Callable[[], bool], poll: float = 0.1) -> bool:
        """Block until open; give up (False) once ``still_wanted()`` is false.

        The poll lets a server that is stopped before the drop (a failed start)
        leave, so the bus can join its thread.
        """
        while not self._open.wait(poll):
            if not still_wanted():
                return False
        return True

    def run_thread_actions(self) -> None:
        for action in self.thread_actions:
            action()


class UngateableServer(Exception):
    """A server the gate cannot hold (not a cheroot HTTPServer)."""


class NotListening(Exception):
    """A held server's start ended without a socket listening on its address."""


def arm(adapter, gate: Gate) -> None:
    """Make ``adapter``'s server wait at ``gate`` and adopt kept sockets."""
    _wait_without_connecting(adapter, gate)
    if adapter.httpserver is not None:
        hook_httpserver(adapter, adapter.httpserver, gate)
        return
    if not isinstance(adapter, _cpserver.Server):
        raise UngateableServer(f'server {describe(adapter)} has no HTTP server to hold')
    patches.replace(adapter, '_dropprivs_gate', gate)
    if patches.replaced(adapter, 'httpserver_from_self'):
        return
    create = adapter.httpserver_from_self

    def httpserver_from_self(httpserver=None):
        made, bind_addr = create(httpserver)
        hook_httpserver(adapter, made, adapter._dropprivs_gate)
        return made, bind_addr

    patches.replace(adapter, 'httpserver_from_self', httpserver_from_self)


def _wait_without_connecting(adapter, gate: Gate) -> None:
    """Replace ServerAdapter.wait() while the gate is shut.

    CherryPy's wait() proves a server is up by connecting to it (portend),
    which needs a free slot in the very backlog that held clients fill: under
    traffic it times out and the start fails. While the gate is shut the
    server's own state is the proof instead: its accept loop is ready and its
    socket is listening on the configured address. The server's thread says
    when it reaches the gate (an event, not CherryPy's 100 ms polling), since
    every start and restart waits for it. With the gate open, CherryPy's own
    wait() runs unchanged.
    """
    patches.replace(adapter, '_dropprivs_wait_gate', gate)
    patches.replace(adapter, '_dropprivs_at_gate', threading.Event())  # anew for each start
    if patches.replaced(adapter, 'wait'):
        return
    cherrypy_wait = adapter.wait

    def wait():
        if adapter._dropprivs_wait_gate.is_open:
            return cherrypy_wait()
        adapter.__dict__.pop('_dropprivs_unbound', None)
        at_gate = adapter._dropprivs_at_gate
        while not (at_gate.wait(0.05) and getattr(adapter.httpserver, 'ready', False)):
            if adapter.interrupt:
                raise adapter.interrupt
            if at_gate.is_set():  # an older server's thread: poll its state
                time.sleep(0.005)
        hs = adapter.httpserver
        problem = listening_problem(getattr(hs, 'socket', None), adapter.bind_addr)
        if problem:
            adapter._dropprivs_unbound = problem
            raise NotListening(f'server {describe(adapter)} is not listening: {problem}')
        return None

    patches.replace(adapter, 'wait', wait)


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
    patches.replace(bus, '_dropprivs_subscribe_gate', gate)
    if patches.replaced(bus, 'subscribe'):
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

    patches.replace(bus, 'subscribe', subscribe)


def _is_cheroot_server(httpserver: object) -> bool:
    return isinstance(httpserver, cheroot.server.HTTPServer)


def hook_httpserver(adapter: Any, httpserver: Any, gate: Gate) -> None:
    """Per-instance hooks on one cheroot server (see the module docstring)."""
    if not _is_cheroot_server(httpserver):
        raise UngateableServer(
            f'server {describe(adapter)} is a {type(httpserver).__name__}, not a cheroot '
            f'HTTPServer: its requests cannot be held until the drop'
        )
    if patches.replaced(httpserver, 'serve'):
        patches.replace(httpserver, '_dropprivs_gate', gate)
        return
    if getattr(httpserver, 'ready', False):
        # Its accept loop already runs (its start listener ran before ours,
        # or it was started by hand): it may have served as root already,
        # and holding it now would hold nothing.
        raise UngateableServer(
            f'server {describe(adapter)} was already serving before the drop could hold it '
            f'(start it from the bus at its default priority 75, not before)'
        )
    patches.replace(httpserver, '_dropprivs_gate', gate)
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
        if sock is not None:
            return adopt(sock)
        try:
            return cls.bind(httpserver, family, type, proto)
        except OSError as e:
            holders = port_holders(httpserver.bind_addr)
            if e.errno == errno.EADDRINUSE and holders:
                raise OSError(e.errno, f'{e.strerror}: {holders}') from e
            raise

    def bind_unix_socket(bind_addr):
        sock = KEEPER.take(key())
        return adopt(sock) if sock is not None else cls.bind_unix_socket(httpserver, bind_addr)

    def serve():
        at_gate = adapter.__dict__.get('_dropprivs_at_gate')
        if at_gate is not None:
            at_gate.set()  # ready and listening: the adapter's wait() returns now
        # Also give up once the main thread has gone (an interrupted start, e.g.
        # KeyboardInterrupt before the drop): the held server and its workers
        # would otherwise keep the process alive as root forever. Stopping it
        # closes the socket (resetting held connections) and lets it exit.
        if not httpserver._dropprivs_gate.wait(
                lambda: httpserver.ready and threading.main_thread().is_alive()):
            httpserver.stop()  # a no-op when the bus already stopped it
            return None
        return cls.serve(httpserver)

    def pause_unless_exec():
        if not getattr(adapter.bus, 'execv', False):
            # A stop for good: refuse new clients as a closed port would,
            # but keep the socket bound for a later start. Across a re-exec
            # it keeps listening and clients wait in its backlog instead.
            KEEPER.pause(key())

    def stop():
        cls.stop(httpserver)
        pause_unless_exec()  # if cheroot's stop did not reach its workers

    pool = httpserver.requests
    start_pool, stop_pool = pool.start, pool.stop

    def start_workers():
        httpserver._dropprivs_gate.run_thread_actions()
        return start_pool()

    def stop_workers(*args, **kwargs):
        # cheroot's stop() has just closed the server's socket and now waits
        # up to shutdown_timeout for busy workers: refuse new clients now.
        pause_unless_exec()
        return stop_pool(*args, **kwargs)

    key()
    # Clients that arrive while the gate is shut can only wait: make room.
    patches.replace(httpserver, 'request_queue_size',
                    max(httpserver.request_queue_size or 0, hold_backlog()))
    for name, hook in (('bind', bind), ('bind_unix_socket', bind_unix_socket), ('stop', stop),
                       ('serve', serve)):
        patches.replace(httpserver, name, hook)
    patches.replace(pool, 'start', start_workers)
    patches.replace(pool, 'stop', stop_workers)


def is_bound(adapter) -> bool:
    """Started, ready, holding a socket, and held by our gate."""
    hs = adapter.httpserver
    return bool(
        adapter.running
        and hs is not None
        and getattr(hs, 'ready', False)
        and getattr(hs, 'socket', None) is not None
        and patches.replaced(hs, 'serve')
    )


def iter_unbound(adapters) -> Iterator[str]:
    """'server (address): why' for each server that is not bound and held."""
    for adapter in adapters:
        if not is_bound(adapter):
            name, addr = describe(adapter), repr(adapter.bind_addr)
            where = name if name == addr else f'{name} (address {addr})'
            yield f'{where}: {unbound_reason(adapter)}'


def port_holders(addr) -> str:
    """'port P is held by another process: pid ...', naming who listens on a
    port this process could not bind; '' when nobody else does."""
    if not isinstance(addr, tuple) or not addr[1]:
        return ''
    from .processes import listeners_on_port  # a scan of /proc, on a failure only

    holders = listeners_on_port(int(addr[1]))
    if not holders:
        return ''
    return (f'port {addr[1]} is held by another process: '
            + ', '.join(f'pid {pid} ({comm}, uid {uid})' for pid, uid, comm in holders)
            + '; stop it first (under systemd, KillMode=control-group stops every process a '
              'unit started, including what a compromised site left behind)')


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
        return port_holders(adapter.bind_addr) or 'its accept loop is not ready'
    if getattr(hs, 'socket', None) is None:
        return 'it has no socket'
    if not patches.replaced(hs, 'serve'):
        return 'it is not held by the gate'
    return 'it is not running'
