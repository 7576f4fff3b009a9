"""Listening sockets kept open for the life of the process and across execv.

After the drop the process can no longer bind a privileged port. Keeping a
duplicate of such a listening socket lets a server stop and start again in
the same process, and lets a re-executed process (engine.restart(), the
autoreloader, SIGHUP) adopt it instead of binding, as systemd's LISTEN_FDS
and nginx's binary upgrade do. Across a re-exec the socket keeps listening:
clients wait in the backlog and none is refused. After a plain stop it is
*paused* (``shutdown``: no longer listening, so clients are refused as by a
closed port, but still bound), and listening again on the next start needs
no privilege. Sockets the process could bind again are not kept at all.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from typing import Dict, List, Optional, Set, Union

from .restart_checks import unprivileged_port_start

#: Environment variable that carries the kept sockets across execv.
HANDOFF_ENV = 'CHERRYPY_DROPPRIVS_SOCKETS'

Addr = Union[tuple, str, bytes, None]

#: The listen backlog a held server gets at the least (capped by SOMAXCONN):
#: while the gate is shut every arriving client waits there, and CherryPy's
#: default of 5 would make the kernel drop new connections within moments.
HOLD_BACKLOG = 1024


def addr_key(bind_addr: Addr) -> str:
    """A stable key for a configured bind address (the same after execv)."""
    if isinstance(bind_addr, bytes):
        bind_addr = bind_addr.decode('utf-8', 'surrogateescape')
    if isinstance(bind_addr, (tuple, list)):
        return json.dumps([str(bind_addr[0]), int(bind_addr[1])])
    return json.dumps(bind_addr)


class SocketKeeper:
    """Holds one duplicate of each server's listening socket, by address key."""

    def __init__(self) -> None:
        self._kept: Dict[str, socket.socket] = {}
        #: Keys taken from a LISTEN_PID (socket activation) server: fd 3.
        self.activation_key: Optional[str] = None
        self.adopted_from_exec = False
        #: The process that re-executed us had daemonized (see prepare_exec).
        self.daemonized = False
        #: True once prepare_exec has put the activation socket back on fd 3.
        self._fd3_handed = False

    def __contains__(self, key: str) -> bool:
        return key in self._kept

    def keep(self, key: str, sock: socket.socket, from_activation: bool = False) -> None:
        if key not in self._kept:
            self._kept[key] = socket.socket(fileno=os.dup(sock.fileno()))
        if from_activation:
            self.activation_key = key

    def take(self, key: str) -> Optional[socket.socket]:
        """A fresh duplicate of the kept socket for ``key`` (the server closes it on stop)."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        return socket.socket(fileno=os.dup(kept.fileno()))

    def ports(self) -> Set[int]:
        out = set()
        for s in self._kept.values():
            if s.family in (socket.AF_INET, socket.AF_INET6):
                out.add(s.getsockname()[1])
        return out

    def pause(self, key: str) -> None:
        """Stop listening on the kept socket for ``key`` but keep it bound.

        On Linux ``shutdown`` of a listening socket resets the connections
        waiting in its backlog and leaves it bound and unconnected: new
        clients are refused, as after CherryPy closes a port, and a later
        ``listen`` (cheroot's, on the next start) needs no privilege.
        """
        kept = self._kept.get(key)
        if kept is not None and is_listening(kept):
            try:
                kept.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def fds(self) -> Dict[str, int]:
        return {k: s.fileno() for k, s in self._kept.items()}

    # -- across execv -------------------------------------------------------

    def prepare_exec(self, daemonized: bool = False) -> None:
        """Make the kept sockets inheritable and describe them in the environment.

        ``daemonized``: the process has already daemonized, so the new image
        must not fork again (a new pid would orphan the PID file root wrote).
        """
        env = os.environ
        self.mark_inheritable()
        env[HANDOFF_ENV] = json.dumps({'pid': os.getpid(), 'sockets': self.fds(),
                                       'daemonized': daemonized})
        if self.activation_key is not None and env.get('LISTEN_PID') == str(os.getpid()):
            # cheroot's own socket-activation path reads fd 3 only (LISTEN_PID
            # stays valid: execv keeps the pid).
            os.dup2(self._kept[self.activation_key].fileno(), 3, inheritable=True)
            self._fd3_handed = True

    def mark_inheritable(self) -> None:
        """Undo the close-on-exec that CherryPy's _set_cloexec() puts on every fd."""
        for s in self._kept.values():
            os.set_inheritable(s.fileno(), True)
        if self._fd3_handed:
            os.set_inheritable(3, True)

    def adopt_inherited(self, expected: Dict[str, Addr], holds_root: bool) -> List[str]:
        """Adopt the sockets our own execv handed over; returns what was refused.

        The hand-over is only a hint in the environment, which whoever starts
        the process controls. So a root start adopts nothing (it binds its own
        sockets), and a re-executed process adopts only a listening stream
        socket whose address matches the configured server of the same key
        (``expected``: key -> configured bind address). Anything else is
        returned as a reason, for the caller to fail closed with.
        """
        raw = os.environ.pop(HANDOFF_ENV, None)
        if not raw:
            return []
        if holds_root:
            return []  # binds afresh; the described fds are not touched
        try:
            data = json.loads(raw)
            pid, sockets = data['pid'], dict(data['sockets'])
        except (ValueError, KeyError, TypeError) as e:
            return [f'{HANDOFF_ENV} is malformed ({e!r})']
        if pid != os.getpid():
            return []  # inherited by some other program's child: not ours
        self.daemonized = data.get('daemonized') is True
        refused = []
        for key, fd in sockets.items():
            why = _unadoptable(key, fd, expected)
            if why:
                refused.append(f'fd {fd} ({key}): {why}')
                continue
            sock = socket.socket(fileno=fd)
            sock.set_inheritable(False)
            self._kept[key] = sock
        self.adopted_from_exec = bool(self._kept)
        return refused

    def proves_root_start(self) -> bool:
        """Whether an adopted socket is one only root could have bound: a TCP
        port below ip_unprivileged_port_start. The environment can be forged;
        a bound privileged port cannot (short of a process holding
        CAP_NET_BIND_SERVICE, or the dropped site itself handing its own
        sockets on)."""
        limit = unprivileged_port_start()
        return any(s.family in (socket.AF_INET, socket.AF_INET6) and 0 < s.getsockname()[1] < limit
                   for s in self._kept.values())


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
        return listening_problem(sock, expected[key])
    finally:
        sock.close()


def hold_backlog() -> int:
    """``min(net.core.somaxconn, HOLD_BACKLOG)``: the kernel caps listen() there anyway."""
    try:
        with open('/proc/sys/net/core/somaxconn') as f:
            somaxconn = int(f.read())
    except (OSError, ValueError):
        somaxconn = socket.SOMAXCONN
    return max(1, min(somaxconn, HOLD_BACKLOG))


def listening_problem(sock: Optional[socket.socket], bind_addr: Addr) -> Optional[str]:
    """Why ``sock`` is not listening on ``bind_addr``; None when it is.

    Asks the socket itself and never connects to it: a connection would need
    a free slot in the backlog that held clients may have filled.
    """
    if sock is None:
        return 'it has no socket'
    if not is_listening(sock):
        return 'its socket is not listening'
    try:
        name = sock.getsockname()
    except OSError as e:
        return f'its socket has no address ({e})'
    if isinstance(bind_addr, (tuple, list)):
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return f'its socket is {sock.family.name}, not an IP socket'
        port = int(bind_addr[1])
        if port and name[1] != port:
            return f'its socket is bound to port {name[1]}, not {port}'
        if not _same_host(str(bind_addr[0]), str(name[0])):
            return f'its socket is bound to {name[0]}, not {bind_addr[0]}'
    elif bind_addr is not None:
        if sock.family != socket.AF_UNIX:
            return f'its socket is {sock.family.name}, not a UNIX socket'
        if os.fsencode(name) != os.fsencode(bind_addr):
            return f'its socket is bound to {name!r}, not {bind_addr!r}'
    return None


def _ip(host: str):
    try:
        ip = ipaddress.ip_address(host.strip('[]').split('%')[0])
    except ValueError:
        return None  # a name: cheroot resolved it; nothing to compare without asking DNS
    mapped = getattr(ip, 'ipv4_mapped', None)
    return mapped if mapped is not None else ip


def _same_host(configured: str, bound: str) -> bool:
    want, got = _ip(configured) if configured else ipaddress.ip_address('0.0.0.0'), _ip(bound)
    if want is None or got is None:
        return True
    if want.is_unspecified:
        return got.is_unspecified
    return want == got


def is_listening(sock: socket.socket) -> bool:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    except OSError:
        return False


#: One per process: sockets belong to the process, not to a bus or plugin.
KEEPER = SocketKeeper()
