"""The image a restart re-executed: adopting the handed-over sockets, staying
daemonized, and failing clearly when it cannot serve.

Loaded only in such an image (the hand-over variable is present), or in a
process that starts its servers without root; a plain root start never
needs it. The hand-over is checked, never trusted: see :func:`adopt`. The
old image's side of the exec stays in handoff.py, loaded at start: a restart
after the package was upgraded in place must not run new files against the
old image's code (it re-executes into the new version, whole).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Dict, List, Optional, Sequence

from . import patches
from .handoff import (
    HANDOFF_ENV,
    KEEPER,
    Addr,
    ServerInfo,
    SocketKeeper,
    can_bind_privileged,
    daemonizers,
    listening_problem,
    server_adapters,
    server_infos,
    unprivileged_port_start,
    unreadable_tls,
    whoami,
)
from .kernel import is_dumpable, make_undumpable, traced_by


def adopt(keeper: SocketKeeper, raw: str, expected: Dict[str, Addr]) -> List[str]:
    """Adopt the sockets described by ``raw`` (the hand-over variable, already
    removed from the environment, in a process without root); returns what was refused.

    A re-executed process adopts only a listening stream socket, in its own
    network namespace, whose address matches the configured server of the
    same key (``expected``: key -> configured bind address). Anything else
    is returned as a reason, for the caller to fail closed with.
    """
    try:
        data = json.loads(raw)
        pid, sockets = data['pid'], dict(data['sockets'])
    except (ValueError, KeyError, TypeError) as e:
        return [f'{HANDOFF_ENV} is malformed ({e!r})']
    if pid != os.getpid():
        return []  # inherited by some other program's child: not ours
    keeper.daemonized = data.get('daemonized') is True
    refused = []
    for key, fd in sockets.items():
        why = _unadoptable(key, fd, expected)
        if why:
            refused.append(f'fd {fd} ({key}): {why}')
            continue
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        keeper.put(key, sock)
    keeper.adopted_from_exec = bool(keeper.fds())
    if keeper.adopted_from_exec:
        refused += _out_of_reach()
    return refused


def _out_of_reach() -> List[str]:
    """The re-executed image must be out of reach of the target's other
    processes before it adopts for good: not dumpable (the package's __init__
    set it first), and traced by nobody (a tracer attached between the exec and
    that import stays attached). Both in the kernel's view."""
    try:
        make_undumpable()
        if is_dumpable():
            why = 'still dumpable after PR_SET_DUMPABLE 0'
        else:
            tracers = traced_by()
            if not tracers:
                return []
            why = f'traced by pid {", ".join(map(str, sorted(tracers)))} (TracerPid)'
    except OSError as e:
        why = f'PR_SET_DUMPABLE 0 failed ({e.strerror})'
    return [f'this re-executed image is within reach of other processes ({why}): another '
            f'process of {whoami()} could take the listening sockets (pidfd_getfd) or ptrace it']


def _unadoptable(key: str, fd: object, expected: Dict[str, Addr]) -> Optional[str]:
    """Why the handed-over ``fd`` must not be adopted for ``key``, or None."""
    if key not in expected:
        return 'no configured server has this address'
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 3:
        return 'not a descriptor number above 2'
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        return f'not an open socket ({e.strerror})'
    try:
        if sock.type != socket.SOCK_STREAM:
            return f'a {sock.type.name} socket, not a stream socket'
        own, its = netns_cookie(), netns_cookie(sock)
        if own is not None and its != own:
            return 'bound in another network namespace'
        return listening_problem(sock, expected[key])
    finally:
        sock.close()


def proves_root_start(keeper: SocketKeeper) -> bool:
    """Whether an adopted socket is one only root could have bound: a TCP
    port below ip_unprivileged_port_start. The environment can be forged;
    a bound privileged port cannot (short of a process holding
    CAP_NET_BIND_SERVICE, or the dropped site itself handing its own
    sockets on). The socket must also be in this process's network
    namespace: in a user namespace of its own, any user is root of a new
    network namespace and may bind its privileged ports."""
    limit = unprivileged_port_start()
    own = netns_cookie()
    return own is not None and any(
        s.family in (socket.AF_INET, socket.AF_INET6) and 0 < s.getsockname()[1] < limit
        and netns_cookie(s) == own for s in keeper.sockets())


#: getsockopt(SOL_SOCKET, SO_NETNS_COOKIE): the socket's network namespace (Linux 5.14+).
SO_NETNS_COOKIE = 71


def netns_cookie(sock: Optional[socket.socket] = None) -> Optional[int]:
    """The network namespace cookie of ``sock`` (default: this process's own,
    through a fresh socket); None where the kernel cannot tell."""
    try:
        if sock is None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                return netns_cookie(probe)
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), sys.byteorder)
    except OSError:
        return None


def stay_daemonized(bus) -> None:
    """In an image re-executed by a daemon: the Daemonizer (65) must not fork
    again, and a SIGHUP must restart it again. The process is still detached
    (session, streams); a new pid would leave the PID file root wrote
    pointing at nothing, and only root could rewrite it. CherryPy's
    Daemonizer forks even when it says "Already daemonized", and the bus
    already holds its start listener for this publish, so its fork is made a
    no-op on the instance."""
    for d in daemonizers(bus):
        d.finalized = True
        patches.replace(d, 'daemonize', _already_daemonized)
    # CherryPy's SignalHandler takes a process for a daemon (SIGHUP restarts
    # it, else it exits) if its pid differs from the one it saw when it was
    # made: here, in this image, with the daemon's pid already.
    handler = getattr(bus, 'signal_handler', None)
    if getattr(handler, '_original_pid', None) == os.getpid():
        patches.replace(handler, '_original_pid', None, keep=True)
    if daemonizers(bus):
        bus.log(f'dropprivs: already daemonized before the re-exec: not forking again '
                f'(pid {os.getpid()} kept)')


def _already_daemonized(*args, **kwargs) -> None:
    return None


def cannot_serve(bus) -> Optional[str]:
    """A fatal problem for a non-root process about to start its servers, or None."""
    infos = server_infos(server_adapters(bus))
    tls = unreadable_tls(infos)
    if tls:
        return f'cannot start the servers: {"; ".join(tls)}'
    problems = cannot_listen(infos, socket_activation=bool(os.environ.get('LISTEN_PID')))
    if problems:
        return no_socket_message(problems, KEEPER.adopted_from_exec)
    return None


def cannot_listen(servers: Sequence[ServerInfo], socket_activation: bool = False) -> List[str]:
    """Servers this (non-root) process could neither adopt a socket for nor bind."""
    out = []
    limit = unprivileged_port_start()
    privileged = can_bind_privileged()
    for server in servers:
        addr = server.bind_addr
        if server.has_socket or addr is None:
            continue
        if isinstance(addr, (tuple, list)):
            if socket_activation:
                continue  # cheroot takes fd 3 from the activating manager
            port = int(addr[1])
            if 0 < port < limit and not privileged:
                out.append(f'server {server.description}: port {port} is privileged (below {limit}), '
                           f'this process runs as {whoami()} without CAP_NET_BIND_SERVICE, and it '
                           f'has no listening socket to adopt for it')
            continue
        path = os.fsdecode(addr)
        if path.startswith('\0') or not path:
            continue  # abstract namespace: nothing on disk to recreate
        parent = os.path.dirname(os.path.abspath(path))
        if not os.access(parent, os.W_OK | os.X_OK):
            out.append(f'server {server.description}: the UNIX socket {path} cannot be recreated '
                       f'by {whoami()} ({parent} is not writable), and there is no listening '
                       f'socket to adopt for it')
    return out


def no_socket_message(problems: Sequence[str], handed_over: bool) -> str:
    why = (
        'Sockets were handed over across the re-exec, but not for these servers'
        if handed_over else
        'No listening socket was handed over: this is a re-executed process whose sockets '
        'were not kept, or a process started directly as an unprivileged user'
    )
    return (
        f'No sockets to adopt: {"; ".join(problems)}. {why}. Start the site as root (the '
        f'plugin binds, drops, and keeps the sockets for restarts), under systemd socket '
        f'activation, or with CAP_NET_BIND_SERVICE; or listen on a port >= '
        f'{unprivileged_port_start()}'
    )
