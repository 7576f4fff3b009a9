"""systemd's readiness protocol (sd_notify), sent by the dropped process itself.

One datagram per message to the AF_UNIX socket named in ``NOTIFY_SOCKET``
(a leading ``@`` is the abstract namespace): newline-separated ``KEY=value``
fields. The socket is connected while the process is still root and the
descriptor kept, so messages keep flowing after the drop even to a path the
target user could not open. The variables are removed from the environment
once read (as sd_notify(3) does with ``unset_environment``), so processes the
site starts do not inherit them; a re-exec by a restart gets them back
through :data:`ENV`, privately, with the connected descriptor.

Imported only when ``NOTIFY_SOCKET`` (or :data:`ENV`) is set. No CherryPy
imports: the plugin wires it to the bus.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Callable, Optional, Union

#: Carries the notify socket across the bus's re-exec (JSON: pid, socket, fd,
#: watchdog_usec). Read and removed at once by the re-executed image.
ENV = 'CHERRYPY_DROPPRIVS_NOTIFY'

#: How long one send may wait when the receiver's queue is full.
SEND_TIMEOUT = 2.0


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants in MONOTONIC_USEC=."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _sockaddr(address: str) -> Union[str, bytes]:
    if address.startswith('@'):
        return b'\0' + os.fsencode(address[1:])
    return address


def _same_peer(sock: socket.socket, address: str) -> bool:
    try:
        peer = sock.getpeername()
    except OSError:
        return False
    return os.fsencode(peer) == os.fsencode(_sockaddr(address))


class Notifier:
    """The connected notify socket and what systemd asked for (the watchdog)."""

    def __init__(self, address: str, sock: Optional[socket.socket] = None,
                 watchdog_usec: Optional[int] = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock = sock
        #: Why the last send failed ('' after a success): the caller logs it.
        self.error = ''
        self._lock = threading.Lock()

    @classmethod
    def open(cls, address: str, watchdog_usec: Optional[int] = None) -> Notifier:
        """Connect now (as root, before the drop); an unreachable socket is tried again per send."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.settimeout(SEND_TIMEOUT)
        notifier = cls(address, None, watchdog_usec)
        try:
            sock.connect(_sockaddr(address))
            notifier._sock = sock
        except OSError as e:
            sock.close()
            notifier.error = f'cannot connect to the notify socket {address}: {e}'
        return notifier

    @property
    def is_path(self) -> bool:
        return not self.address.startswith('@')

    @property
    def fd(self) -> Optional[int]:
        return None if self._sock is None else self._sock.fileno()

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=value`` fields; False (and ``error`` says why) if it was lost."""
        data = '\n'.join(f.replace('\n', ' ') for f in fields).encode('utf-8', 'replace')
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.send(data)
                    self.error = ''
                    return True
                except OSError as e:
                    first = e  # e.g. ECONNREFUSED: the receiver re-created its socket
            else:
                first = None
            try:  # a fresh socket, as the user the process is now (sd_notify's way)
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as fresh:
                    fresh.settimeout(SEND_TIMEOUT)
                    fresh.sendto(data, _sockaddr(self.address))
                self.error = ''
                return True
            except OSError as e:
                why = f'{first}; then {e}' if first is not None else str(e)
                self.error = f'notify socket {self.address}: {why}'
                return False

    def unreachable(self) -> Optional[str]:
        """Why the current user could not open a path socket anew (access(2),
        real ids), or None. Abstract sockets need no permission."""
        if not self.is_path:
            return None
        if os.access(self.address, os.W_OK):
            return None
        parent = os.path.dirname(os.path.abspath(self.address))
        if not os.access(parent, os.X_OK):
            return f'a directory on the way to it is not searchable ({parent} or above)'
        if not os.path.exists(self.address):
            return 'it does not exist'
        return 'it is not writable'

    def exec_environment(self, carry_fd: bool) -> str:
        """The value of :data:`ENV` for a re-exec; ``carry_fd``: the connected
        descriptor will be inherited (the caller makes it inheritable)."""
        fd = self.fd if carry_fd else None
        return json.dumps({'pid': os.getpid(), 'socket': self.address, 'fd': fd,
                           'watchdog_usec': self.watchdog_usec})


def _watchdog_usec(usec: Optional[str], pid: Optional[str]) -> Optional[int]:
    """WATCHDOG_USEC when it is meant for this process (WATCHDOG_PID unset or ours)."""
    if not usec or (pid and pid.strip() != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value if value > 0 else None


def _adopt(fd: object, address: str) -> Optional[socket.socket]:
    """The inherited descriptor, if it is a datagram socket connected to ``address``.

    Only an inheritable one: our re-exec makes it so, while whatever the
    application opened after the exec is close-on-exec; a descriptor that
    fails a check is left alone, never closed.
    """
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 3:
        return None
    try:
        if not os.get_inheritable(fd):
            return None
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    if (sock.family != socket.AF_UNIX or sock.type != socket.SOCK_DGRAM
            or not _same_peer(sock, address)):
        sock.close()
        return None
    os.close(fd)
    sock.settimeout(SEND_TIMEOUT)
    return sock


def from_environment() -> Optional[Notifier]:
    """Read (and remove) NOTIFY_SOCKET, WATCHDOG_USEC/WATCHDOG_PID, or what
    our own re-exec handed over in :data:`ENV`; None when none is set."""
    env = os.environ
    raw = env.pop(ENV, None)
    address = env.pop('NOTIFY_SOCKET', None)
    watchdog = _watchdog_usec(env.pop('WATCHDOG_USEC', None), env.pop('WATCHDOG_PID', None))
    if raw:
        try:
            data = json.loads(raw)
            ours = data['pid'] == os.getpid() and isinstance(data['socket'], str)
        except (ValueError, KeyError, TypeError):
            ours = False
        # Our re-exec happens after the drop: in a process that holds root the
        # variable was set by whoever started it, and nothing of it is used.
        ours = ours and 0 not in os.getresuid()
        if ours:  # our own re-exec: the same socket, the same watchdog
            address = data['socket']
            usec = data.get('watchdog_usec')
            watchdog = usec if isinstance(usec, int) and usec > 0 else None
            sock = _adopt(data.get('fd'), address)
            if sock is not None:
                return Notifier(address, sock, watchdog)
    if not address or address in ('@', '/'):
        return None
    return Notifier.open(address, watchdog)


class Watchdog:
    """WATCHDOG=1 every half interval while ``check()`` finds nothing wrong.

    A process that hangs as a whole (the GIL held, a deadlocked interpreter)
    stops the thread too; ``check`` catches a server that has stopped serving
    while the process lives. ``report(problem)`` is called when the verdict
    changes (None: healthy again).
    """

    def __init__(self, notifier: Notifier, usec: int, check: Callable[[], Optional[str]],
                 report: Callable[[Optional[str]], None]) -> None:
        self.notifier = notifier
        self.period = usec / 2e6
        self.check = check
        self.report = report
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._problem: Optional[str] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name='dropprivs watchdog', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                problem = self.check()
            except Exception as e:  # a check that breaks must not look healthy
                problem = f'the health check failed: {e!r}'
            if problem is None:
                self.notifier.send('WATCHDOG=1')
            if problem != self._problem:
                self._problem = problem
                self.report(problem)
