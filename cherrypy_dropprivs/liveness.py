"""Is each server still serving? For the systemd watchdog (notify.Watchdog).

Read from the servers' own state, never by connecting to them: a probe
connection would need a free backlog slot and a free worker (under load it
would time out and get a busy but healthy site killed), would reach the
application and its logs, and would need TLS and a path to ask for. Instead,
for each cheroot server:

- it is started, ready, and its socket is listening (``SO_ACCEPTCONN``);
- its accept loop runs: cheroot's ConnectionManager calls ``_expire`` about
  every ``expiration_interval`` (0.5 s) from that loop, idle or busy; a
  per-instance wrapper records when (not on the per-request path);
- its workers take accepted connections: a connection at the head of the
  worker queue that is still the head one check later (half the watchdog
  interval) means no worker took anything meanwhile while clients wait, the
  state of a site whose every worker hangs.

Only cheroot internals are read (duck-typed; the ones replaced are listed in
patches.TABLE). No CherryPy imports.
"""

from __future__ import annotations

import socket
import time
import weakref
from typing import Any, List, Optional, Sequence, Tuple

from . import patches


def _is_listening(sock: Any) -> bool:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    except (OSError, AttributeError):
        return False


def _heartbeat(conns: Any) -> Optional[float]:
    """When ``conns`` (a ConnectionManager) last ran its expiry pass; hooks it on first use."""
    if conns is None:
        return None
    if not patches.replaced(conns, '_expire'):
        expire = getattr(conns, '_expire', None)
        if expire is None:
            return None  # another cheroot: the accept loop is judged by the rest

        def _expire(*args, **kwargs):
            conns._dropprivs_beat = time.monotonic()
            return expire(*args, **kwargs)

        conns._dropprivs_beat = time.monotonic()
        patches.replace(conns, '_expire', _expire, keep=True)  # dies with this server start
    return conns.__dict__.get('_dropprivs_beat')


def _queue_head(pool: Any) -> Tuple[Any, int]:
    """The connection longest waiting for a worker (None if none), and how many wait."""
    q = getattr(pool, '_queue', None)
    if q is None:
        return None, 0
    with q.mutex:
        return (q.queue[0] if q.queue else None), len(q.queue)


class Liveness:
    """Checks a fixed list of server adapters; remembers the last look at each."""

    def __init__(self, adapters: Sequence[Any], period: float) -> None:
        self.adapters = list(adapters)
        self.period = period
        self._heads: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def problem(self) -> Optional[str]:
        """None when every server serves; otherwise what is wrong, by server."""
        found: List[str] = []
        for adapter in self.adapters:
            why = self._server_problem(adapter)
            if why:
                found.append(f'server {_name(adapter)}: {why}')
        return '; '.join(found) or None

    def _server_problem(self, adapter: Any) -> Optional[str]:
        hs = getattr(adapter, 'httpserver', None)
        if not getattr(adapter, 'running', False) or hs is None or not getattr(hs, 'ready', False):
            return 'it is not running'
        if not _is_listening(getattr(hs, 'socket', None)):
            return 'its socket is not listening'
        beat = _heartbeat(getattr(hs, '_connections', None))
        stale = max(self.period, 4 * float(getattr(hs, 'expiration_interval', 0.5) or 0.5))
        if beat is not None and time.monotonic() - beat > stale:
            return f'its accept loop has not run for {time.monotonic() - beat:.1f} s'
        head, waiting = _queue_head(getattr(hs, 'requests', None))
        before = self._heads.get(hs)
        self._heads[hs] = head
        if head is not None and before is head:
            return (f'{waiting} accepted connection(s) waiting and no worker took one for '
                    f'{self.period:.1f} s (every worker busy or hung)')
        return None


def _name(adapter: Any) -> str:
    try:
        return str(adapter.description or adapter.bind_addr)
    except Exception:
        return repr(getattr(adapter, 'bind_addr', adapter))

