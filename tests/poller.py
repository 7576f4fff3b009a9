"""A client that polls a server every few milliseconds and records each outcome.

Each request is a fresh connection (``Connection: close``), so a refused,
reset or empty answer shows up as such instead of being hidden by a
keep-alive pool's retry. Shared by tests/test_restarts.py and
benchmarks/restart_continuity.py, so both measure the same way.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, List, Optional

OK = 'ok'


@dataclass
class Outcome:
    started: float
    ended: float
    kind: str  # ok, refused, reset, empty, status, timeout, error
    status: int = 0
    body: Optional[dict] = None
    detail: str = ''


def tcp(host: str, port: int) -> Callable[[], socket.socket]:
    family = socket.AF_INET6 if ':' in host else socket.AF_INET

    def connect() -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((host, port))
        return s
    return connect


def unix(path: str) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        return s
    return connect


def tls(inner: Callable[[], socket.socket]) -> Callable[[], socket.socket]:
    """Wrap a connector in TLS without verification (self-signed test certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def connect() -> socket.socket:
        return ctx.wrap_socket(inner(), server_hostname='localhost')
    return connect


def request(connect: Callable[[], socket.socket], path: str = '/whoami') -> Outcome:
    """One request on a fresh connection, classified."""
    t0 = time.monotonic()
    try:
        s = connect()
    except ConnectionRefusedError as e:
        return Outcome(t0, time.monotonic(), 'refused', detail=str(e))
    except ConnectionResetError as e:
        return Outcome(t0, time.monotonic(), 'reset', detail=str(e))
    except (socket.timeout, TimeoutError) as e:
        return Outcome(t0, time.monotonic(), 'timeout', detail=str(e))
    except (OSError, ssl.SSLError) as e:
        return Outcome(t0, time.monotonic(), 'error', detail=repr(e))
    try:
        s.sendall(f'GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'.encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    except ConnectionResetError as e:
        return Outcome(t0, time.monotonic(), 'reset', detail=str(e))
    except (socket.timeout, TimeoutError) as e:
        return Outcome(t0, time.monotonic(), 'timeout', detail=str(e))
    except (OSError, ssl.SSLError) as e:
        kind = 'reset' if 'EOF' in str(e) or 'reset' in str(e).lower() else 'error'
        return Outcome(t0, time.monotonic(), kind, detail=repr(e))
    finally:
        s.close()
    t1 = time.monotonic()
    raw = b''.join(chunks)
    if not raw:
        return Outcome(t0, t1, 'empty')
    head, _, body = raw.partition(b'\r\n\r\n')
    try:
        status = int(head.split(b' ', 2)[1])
    except (IndexError, ValueError):
        return Outcome(t0, t1, 'error', detail=repr(raw[:80]))
    if status != 200:
        return Outcome(t0, t1, 'status', status, detail=body[:200].decode(errors='replace'))
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    return Outcome(t0, t1, OK, status, parsed)


@dataclass
class Poller:
    """Polls in a background thread until stop(); bounded by ``max_seconds``."""

    connect: Callable[[], socket.socket]
    path: str = '/whoami'
    interval: float = 0.002
    max_seconds: float = 120.0
    outcomes: List[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='poller', daemon=True)

    def start(self) -> Poller:
        """Start polling; returns once the first answer is in (at most 5 s), so a
        restart triggered next is seen from before it happens."""
        self._thread.start()
        deadline = time.monotonic() + 5
        while not self.outcomes and time.monotonic() < deadline:
            time.sleep(0.001)
        return self

    def stop(self) -> Poller:
        self._stop.set()
        self._thread.join(timeout=15)
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.outcomes.append(request(self.connect, self.path))
            time.sleep(self.interval)

    # -- summaries ------------------------------------------------------------

    def counts(self) -> Counter:
        return Counter(o.kind for o in self.outcomes)

    def failures(self) -> List[Outcome]:
        return [o for o in self.outcomes if o.kind != OK]

    def longest_outage_ms(self) -> float:
        """Longest time with no successful answer: between two consecutive
        successful completions, or from the first failure after a success to
        the end of polling if none came back."""
        last_ok: Optional[float] = None
        worst = 0.0
        for o in self.outcomes:
            if o.kind == OK:
                if last_ok is not None:
                    worst = max(worst, o.ended - last_ok)
                last_ok = o.ended
        if self.outcomes and self.outcomes[-1].kind != OK and last_ok is not None:
            worst = max(worst, self.outcomes[-1].ended - last_ok)
        return worst * 1000

    def longest_request_ms(self) -> float:
        return max((o.ended - o.started for o in self.outcomes), default=0.0) * 1000

    def boots(self) -> List[str]:
        """Distinct process images that answered, in order (site.py's /boot)."""
        seen: List[str] = []
        for o in self.outcomes:
            b = (o.body or {}).get('boot')
            if b and (not seen or seen[-1] != b):
                seen.append(b)
        return seen


def wait_started(connect: Callable[[], socket.socket], not_boot: Optional[str] = None,
                 timeout: float = 15.0, alive: Callable[[], bool] = lambda: True) -> dict:
    """Poll site.py's /boot until a process image other than ``not_boot`` has
    finished starting (bus STARTED); returns its /boot answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError('the server process exited')
        o = request(connect, '/boot')
        if o.kind == OK and o.body and o.body.get('started') and o.body.get('boot') != not_boot:
            return o.body
        time.sleep(0.01)
    raise AssertionError(f'no new started process image within {timeout}s (old boot {not_boot})')
