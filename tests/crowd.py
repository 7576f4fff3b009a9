"""A crowd of clients: many pollers at once, and idle keep-alive connections.

Used by tests/test_busy.py and benchmarks/busy_start.py to play the first of
the three visitors: dozens of clients already waiting when the process starts
or restarts, more than any listen backlog default, plus connections that are
open and send nothing. Every loop is bounded in time.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, List, Optional

import poller


class Crowd:
    """``clients`` threads, each polling ``path`` on a fresh connection, from
    before the server exists until stop() (or ``max_seconds``)."""

    def __init__(self, connect: Callable[[], socket.socket], clients: int, path: str = '/whoami',
                 interval: float = 0.005, max_seconds: float = 60.0) -> None:
        self.pollers = [poller.Poller(connect, path, interval=interval, max_seconds=max_seconds)
                        for _ in range(clients)]

    def start(self) -> Crowd:
        for p in self.pollers:
            p._thread.start()  # no wait for a first answer: the server may not exist yet
        return self

    def stop(self) -> Crowd:
        for p in self.pollers:
            p._stop.set()
        for p in self.pollers:
            p._thread.join(timeout=15)
        return self

    def outcomes(self) -> List[poller.Outcome]:
        return [o for p in self.pollers for o in list(p.outcomes)]

    def answered(self) -> List[poller.Outcome]:
        return [o for o in self.outcomes() if o.kind == poller.OK]

    def first_answer(self) -> Optional[float]:
        """monotonic() time the first answer completed, or None."""
        return min((o.ended for o in self.answered()), default=None)

    def answered_since(self, t: float) -> int:
        return sum(1 for o in self.answered() if o.ended > t)

    def by_root(self) -> List[poller.Outcome]:
        """Answers whose serving thread had euid 0 (site.py reports /proc/thread-self)."""
        return [o for o in self.answered() if o.body and o.body['uids'][1] == 0]


class IdleClients:
    """``n`` connections that connect and then send nothing, held open until
    close(): each occupies a cheroot worker until its read times out."""

    def __init__(self, host: str, port: int, n: int) -> None:
        self.host, self.port, self.n = host, port, n
        self.socks: List[socket.socket] = []

    def open(self, timeout: float = 5.0) -> IdleClients:
        deadline = time.monotonic() + timeout
        while len(self.socks) < self.n and time.monotonic() < deadline:
            try:
                self.socks.append(socket.create_connection((self.host, self.port), timeout=2))
            except OSError:
                time.sleep(0.05)
        assert len(self.socks) == self.n, f'opened {len(self.socks)} of {self.n} idle connections'
        return self

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()
