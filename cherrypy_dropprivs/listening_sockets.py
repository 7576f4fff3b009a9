"""Listening sockets kept open for the life of the process and across execv.

After the drop the process can no longer bind a privileged port. Keeping a
duplicate of every listening socket lets a server stop and start again in
the same process, and lets a re-executed process (engine.restart(), the
autoreloader, SIGHUP) adopt them instead of binding, as systemd's
LISTEN_FDS and nginx's binary upgrade do. Because the socket never closes,
clients only ever wait in the backlog; none is refused.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Dict, Optional, Set, Union

#: Environment variable that carries the kept sockets across execv.
HANDOFF_ENV = 'CHERRYPY_DROPPRIVS_SOCKETS'

Addr = Union[tuple, str, bytes, None]


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

    def fds(self) -> Dict[str, int]:
        return {k: s.fileno() for k, s in self._kept.items()}

    # -- across execv -------------------------------------------------------

    def prepare_exec(self, env: Optional[dict] = None) -> None:
        """Make the kept sockets inheritable and describe them in the environment."""
        env = os.environ if env is None else env
        self.mark_inheritable()
        env[HANDOFF_ENV] = json.dumps({'pid': os.getpid(), 'sockets': self.fds()})
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

    def adopt_inherited(self, env: Optional[dict] = None) -> int:
        """Adopt sockets handed over by our own execv; returns how many."""
        env = os.environ if env is None else env
        raw = env.pop(HANDOFF_ENV, None)
        if not raw:
            return 0
        data = json.loads(raw)
        if data.get('pid') != os.getpid():
            return 0  # inherited by some other program's child: not ours
        for key, fd in data['sockets'].items():
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                continue
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
                sock.detach()
                continue
            sock.set_inheritable(False)
            self._kept[key] = sock
        self.adopted_from_exec = bool(self._kept)
        return len(self._kept)


#: One per process: sockets belong to the process, not to a bus or plugin.
KEEPER = SocketKeeper()
