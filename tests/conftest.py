"""Shared harness: real processes, real ports, the kernel's view.

Every process a test starts goes through ``spawn`` and is stopped by its pid
in the fixture's finalizer. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pytest
import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SITE = HERE / 'sites' / 'site.py'
IS_ROOT = os.geteuid() == 0

needs_root = pytest.mark.skipif(
    not IS_ROOT, reason='needs root: these tests start a real server as root and drop it'
)

sys.path.insert(0, str(REPO))
from cherrypy_dropprivs.kernel_view import ThreadCreds, thread_creds  # noqa: E402


def _port_free(port: int, host: str = '127.0.0.1') -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_privileged_port() -> int:
    """A currently free port in 100..1023 on 127.0.0.1 (never assumes 80)."""
    for _ in range(200):
        port = random.randint(100, 1023)
        if _port_free(port):
            return port
    raise RuntimeError('no free privileged port found')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.05, what: str = ''):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout}s waiting for {what or pred}')
        time.sleep(interval)


class Proc:
    """A started process: its pid, its combined output, and bounded waits."""

    def __init__(self, popen: subprocess.Popen, log: Path, ports: Sequence[int] = ()):
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log
        self.ports = list(ports)

    @property
    def port(self) -> int:
        return self.ports[0]

    def log(self) -> str:
        return self.log_path.read_text(errors='replace')

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_exit(self, timeout: float = 10) -> int:
        return self.popen.wait(timeout=timeout)

    def threads(self) -> List[ThreadCreds]:
        return thread_creds(self.pid)

    def get(self, path: str = '/whoami', port: Optional[int] = None, timeout: float = 5, **kw):
        return requests.get(f'http://127.0.0.1:{port or self.port}{path}', timeout=timeout, **kw)

    def wait_http(self, path: str = '/whoami', port: Optional[int] = None, timeout: float = 20):
        def ok():
            if not self.alive():
                raise AssertionError(f'process exited with {self.popen.returncode}:\n{self.log()}')
            try:
                r = self.get(path, port=port, timeout=1)
            except requests.RequestException:
                return None
            return r if r.status_code == 200 else None
        return wait_for(ok, timeout, interval=0.1, what=f'HTTP {path} on pid {self.pid}')

    def wait_log(self, text: str, timeout: float = 20) -> str:
        return wait_for(lambda: text in self.log() and self.log(), timeout, what=f'log line {text!r}')


def stop_process(popen: subprocess.Popen, timeout: float = 5) -> None:
    """Stop by pid: SIGTERM, then SIGKILL after ``timeout``; also its process group."""
    if popen.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.kill(popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            popen.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture
def spawn(tmp_path):
    """spawn(argv, env=..., cwd=..., ports=...) -> Proc; stopped by pid afterwards."""
    started: List[subprocess.Popen] = []

    def _spawn(argv: Sequence[str], env: Optional[dict] = None, cwd=None, ports=()) -> Proc:
        log = tmp_path / f'proc{len(started)}.log'
        full_env = dict(os.environ)
        full_env['PYTHONUNBUFFERED'] = '1'
        full_env['PYTHONPATH'] = os.pathsep.join(
            p for p in (str(REPO), full_env.get('PYTHONPATH')) if p)
        if env:
            full_env.update(env)
        with open(log, 'wb') as out:
            popen = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=full_env, cwd=cwd or str(REPO), start_new_session=True,
            )
        started.append(popen)
        return Proc(popen, log, ports)

    yield _spawn
    for popen in started:
        stop_process(popen)


@pytest.fixture
def site(spawn):
    """site(ports=[...], options={...}, extra=[...], prefix=[...]) -> Proc running tests/sites/site.py."""

    def _site(ports: Optional[Sequence[int]] = None, options: Optional[dict] = None,
              extra: Sequence[str] = (), prefix: Sequence[str] = (), env=None,
              wait: bool = True) -> Proc:
        ports = list(ports) if ports is not None else [free_privileged_port()]
        argv = [*prefix, sys.executable, str(SITE)]
        for p in ports:
            argv += ['--port', str(p)]
        if options is not None:
            argv += ['--options', json.dumps(options)]
        argv += list(extra)
        proc = spawn(argv, env=env, ports=ports)
        if wait and ports:
            proc.wait_http()
        return proc

    return _site
