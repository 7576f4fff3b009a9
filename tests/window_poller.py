"""Aggressive clients that poll a site from before it starts until it is up.

Used by tests/test_request_window.py and benchmarks/requests_as_root.py, so the
test and the measurement count requests the same way.

Each poller thread loops: connect (refused until the port is bound), send one
HTTP/1.0 GET on a fresh connection, read to EOF. A connection the kernel
accepts while the server process is still root (its euid in
/proc/<pid>/status is 0 right after connect) is a *window* connection: it
arrived between bind and drop. What matters is who answers it: the body of
every answer is the serving thread's own credentials (site.py /whoami and the
grafted /wsgi/whoami read /proc/thread-self/status).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

ANSWERED = 'answered'  # a complete HTTP response
CLOSED = 'closed'      # connected, then reset or closed with no response byte
TIMEOUT = 'timeout'    # connected, no response within the read timeout


@dataclass
class Attempt:
    port: int
    path: str
    outcome: str
    #: The server process was root right after the kernel accepted the connection.
    connected_while_root: Optional[bool]
    #: (HTTPS) the server process was root when the client's handshake completed.
    handshake_while_root: Optional[bool] = None
    status: Optional[int] = None
    body: Optional[dict] = None
    received: int = 0  # bytes of response received

    @property
    def served_by_root(self) -> bool:
        """The serving thread had uid 0 or gid 0 in any position, or group 0."""
        b = self.body or {}
        return bool(0 in b.get('uids', ()) or 0 in b.get('gids', ()) or 0 in b.get('groups', ()))


def process_euid(pid: Optional[int]) -> Optional[int]:
    """The euid of ``pid``'s main thread now, from the kernel; None if gone/unknown."""
    if pid is None:
        return None
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('Uid:'):
                    return int(line.split()[2])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _is_root(pid: Optional[int]) -> Optional[bool]:
    euid = process_euid(pid)
    return None if euid is None else euid == 0


@dataclass
class WindowPoller:
    """``per_port`` threads per port, alternating ``paths``; HTTPS on ``tls_ports``."""

    ports: Sequence[int]
    tls_ports: Sequence[int] = ()
    per_port: int = 4
    paths: Sequence[str] = ('/whoami', '/wsgi/whoami')
    connect_timeout: float = 0.5
    read_timeout: float = 5.0
    #: Set once the server process exists, so connections can be classified.
    pid: Optional[int] = None
    attempts: List[Attempt] = field(default_factory=list)
    refused: Dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self._ctx = ssl.create_default_context()
        self._ctx.check_hostname = False
        self._ctx.verify_mode = ssl.CERT_NONE
        self.refused = {p: 0 for p in self.ports}

    # -- control --------------------------------------------------------------

    def start(self) -> None:
        for port in self.ports:
            for i in range(self.per_port):
                t = threading.Thread(target=self._loop, args=(port, i), daemon=True,
                                     name=f'poller-{port}-{i}')
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        """Stop polling; in-flight attempts finish within the read timeout."""
        self._stop.set()
        for t in self._threads:
            t.join(self.connect_timeout + self.read_timeout + 2)

    def wait_refused(self, timeout: float = 5) -> None:
        """Block until every port was refused at least once: polling began before the bind."""
        deadline = time.monotonic() + timeout
        while any(n == 0 for n in self.refused.values()):
            if time.monotonic() > deadline:
                raise AssertionError(f'pollers were never refused: {self.refused} (port in use?)')
            time.sleep(0.01)

    # -- views ----------------------------------------------------------------

    def snapshot(self) -> List[Attempt]:
        with self._lock:
            return list(self.attempts)

    def answered(self) -> List[Attempt]:
        return [a for a in self.snapshot() if a.outcome == ANSWERED]

    def answered_on_every_port_after_drop(self) -> bool:
        done = {a.port for a in self.answered() if a.body and not a.served_by_root}
        return done >= set(self.ports)

    # -- one poller -----------------------------------------------------------

    def _loop(self, port: int, index: int) -> None:
        n = index
        while not self._stop.is_set():
            path = self.paths[n % len(self.paths)]
            n += 1
            attempt = self._once(port, path)
            if attempt is None:
                with self._lock:
                    self.refused[port] += 1
                time.sleep(0.002)
                continue
            with self._lock:
                self.attempts.append(attempt)

    def _once(self, port: int, path: str) -> Optional[Attempt]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(('127.0.0.1', port))
        except OSError:  # refused (not bound yet / gone), or the backlog was full
            sock.close()
            return None
        attempt = Attempt(port, path, CLOSED, _is_root(self.pid))
        sock.settimeout(self.read_timeout)
        chunks: List[bytes] = []
        try:
            if port in self.tls_ports:
                sock = self._ctx.wrap_socket(sock, server_hostname='localhost')
                attempt.handshake_while_root = _is_root(self.pid)
            sock.sendall(f'GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n'.encode())
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except socket.timeout:
            attempt.outcome = TIMEOUT
        except (OSError, ssl.SSLError):
            pass  # reset, or a TLS handshake the server never finished
        finally:
            sock.close()
        raw = b''.join(chunks)
        attempt.received = len(raw)
        if raw and attempt.outcome != TIMEOUT:
            head, _, body = raw.partition(b'\r\n\r\n')
            try:
                attempt.status = int(head.split(b' ', 2)[1])
            except (IndexError, ValueError):
                attempt.status = None
            attempt.outcome = ANSWERED
            try:
                attempt.body = json.loads(body)
            except ValueError:
                attempt.body = None
        return attempt


@dataclass
class Startup:
    """What one startup of the site produced."""

    attempts: List[Attempt]
    refused_before: Dict[int, int]
    #: From just before the process was started until it was up (or had exited).
    seconds: float = 0.0

    @property
    def answered(self) -> List[Attempt]:
        return [a for a in self.attempts if a.outcome == ANSWERED]

    @property
    def by_root(self) -> List[Attempt]:
        return [a for a in self.answered if a.served_by_root]

    @property
    def by_dropped(self) -> List[Attempt]:
        return [a for a in self.answered if a.body and not a.served_by_root]

    @property
    def window(self) -> List[Attempt]:
        """Connections the kernel accepted while the server process was root."""
        return [a for a in self.attempts if a.connected_while_root]


def run_startup(start_process, poller: WindowPoller, *, tail: float = 0.3,
                timeout: float = 10.0, expect_exit: bool = False):
    """Poll from before ``start_process()`` until the site is up (or has exited).

    ``start_process()`` returns an object with ``pid`` and ``alive()``. Up means:
    every port has answered from a non-root thread; then polling goes on for
    ``tail`` seconds. With ``expect_exit`` polling goes on until the process is
    gone and every held connection has been settled. Returns (Startup, process).
    """
    poller.start()
    try:
        poller.wait_refused()
        refused_before = dict(poller.refused)
        t0 = time.monotonic()
        proc = start_process()
        poller.pid = proc.pid
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                break
            if not expect_exit and poller.answered_on_every_port_after_drop():
                break
            time.sleep(0.01)
        seconds = time.monotonic() - t0
        if not expect_exit and proc.alive():
            time.sleep(tail)
        if expect_exit:
            time.sleep(0.2)  # let the pollers see the resets of held connections
    finally:
        poller.stop()
    return Startup(poller.snapshot(), refused_before, seconds), proc
