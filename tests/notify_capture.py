"""A systemd notify socket for tests: every datagram with the kernel's word on who sent it.

The receiver binds a SOCK_DGRAM UNIX socket (a path, or ``@name`` in the
abstract namespace) with SO_PASSCRED, so each message arrives with the
sender's pid, uid and gid as the kernel attached them (SCM_CREDENTIALS),
never as the sender claims. Used by tests/test_notify.py; run as a script
(as root) it captures the sequences for a start, a graceful, a restart and a
failed start and prints them (docs for issue 13).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List


@dataclass
class Message:
    at: float  # time.monotonic() when received
    pid: int
    uid: int
    gid: int
    fields: Dict[str, str]

    def line(self) -> str:
        body = ' '.join(f'{k}={v}' for k, v in self.fields.items())
        return f'pid={self.pid} uid={self.uid} gid={self.gid}: {body}'


class Receiver:
    """Collects notify messages in a background thread until close()."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: List[Message] = []
        self._cond = threading.Condition()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(b'\0' + address[1:].encode() if address.startswith('@') else address)
        self.sock.settimeout(0.2)
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        space = socket.CMSG_SPACE(struct.calcsize('iII'))
        while self._open:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65536, space)
            except socket.timeout:
                continue
            except OSError:
                return
            pid = uid = gid = -1
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, gid = struct.unpack('iII', cdata[:struct.calcsize('iII')])
            fields = dict(line.split('=', 1) for line in data.decode().split('\n') if '=' in line)
            with self._cond:
                self.messages.append(Message(time.monotonic(), pid, uid, gid, fields))
                self._cond.notify_all()

    def wait_for(self, pred: Callable[[Message], bool], timeout: float = 15,
                 start: int = 0, what: str = '') -> Message:
        """The first message from index ``start`` on that satisfies ``pred`` (bounded wait)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[start:]:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f'no notify message {what} within {timeout}s; got: '
                                         + '\n'.join(m.line() for m in self.messages))
                self._cond.wait(left)

    def wait_field(self, key: str, value: str = '1', timeout: float = 15, start: int = 0) -> Message:
        return self.wait_for(lambda m: m.fields.get(key) == value, timeout, start, f'{key}={value}')

    def index(self, message: Message) -> int:
        return next(i for i, m in enumerate(self.messages) if m is message)

    def with_field(self, key: str) -> List[Message]:
        return [m for m in list(self.messages) if key in m.fields]

    def close(self) -> None:
        self._open = False
        self.sock.close()
        self._thread.join(2)
        if not self.address.startswith('@'):
            try:
                os.unlink(self.address)
            except OSError:
                pass


def _main() -> None:  # pragma: no cover - a documentation helper
    """Capture the four sequences for the issue-13 note (as root)."""
    import signal
    import subprocess
    import sys
    import tempfile

    import requests
    from conftest import SITE, free_privileged_port, nobody_can_run, start_process

    def show(title: str, rx: Receiver, since: int, t0: float) -> None:
        print(f'## {title}')
        for m in rx.messages[since:]:
            print(f'  +{(m.at - t0) * 1000:7.1f} ms  {m.line()}')

    tmp = tempfile.mkdtemp()
    os.chmod(tmp, 0o755)
    rx = Receiver(f'@dropprivs-capture-{os.getpid()}')
    port = free_privileged_port()
    env = {'NOTIFY_SOCKET': rx.address}
    t0 = time.monotonic()
    popen = start_process([*nobody_can_run(), sys.executable, str(SITE), '--port', str(port)],
                          os.path.join(tmp, 'site.log'), env=env)
    try:
        ready = rx.wait_field('READY')
        r = requests.get(f'http://127.0.0.1:{port}/whoami', timeout=5)
        print(f'site pid {popen.pid}; READY=1 {(ready.at - t0) * 1000:.0f} ms after the spawn; '
              f'request at READY: {r.status_code} uid {r.json()["uids"]} '
              f'{(time.monotonic() - ready.at) * 1000:.1f} ms after READY')
        show('start', rx, 0, t0)
        n, t1 = len(rx.messages), time.monotonic()
        requests.get(f'http://127.0.0.1:{port}/graceful', timeout=5)
        rx.wait_field('READY', start=n + 1)
        show('graceful (engine.graceful())', rx, n, t1)
        n, t1 = len(rx.messages), time.monotonic()
        requests.get(f'http://127.0.0.1:{port}/restart', timeout=5)
        rx.wait_field('READY', start=n + 1)
        show('restart (engine.restart())', rx, n, t1)
        n, t1 = len(rx.messages), time.monotonic()
        os.kill(popen.pid, signal.SIGTERM)
        popen.wait(15)
        show('stop (SIGTERM)', rx, n, t1)
    finally:
        if popen.poll() is None:
            popen.kill()
    n, t1 = len(rx.messages), time.monotonic()
    port = free_privileged_port()
    failed = start_process(['setpriv', '--bounding-set=-setuid', '--inh-caps=-setuid',
                            sys.executable, str(SITE), '--port', str(port)],
                           os.path.join(tmp, 'failed.log'), env=env)
    status = failed.wait(15)
    time.sleep(0.2)
    print(f'failed start: pid {failed.pid}, exit status {status}')
    show('failed start (setpriv --bounding-set=-setuid)', rx, n, t1)
    rx.close()
    subprocess.run(['rm', '-rf', tmp], check=False)


if __name__ == '__main__':
    _main()
