"""Shared helpers for the benchmark scripts (stdlib only).

Tiny API, used by every script in benchmarks/:

- ``start_site(argv, env=None, log=None) -> Popen``: start a server as its own
  process (own session, output to a log file, ``PYTHONPATH`` includes the
  repository); ``popen.log_path`` is that file.
- ``wait_http(url, timeout) -> float``: poll until the URL answers 200; returns
  ``time.monotonic()`` of the first 200. Bounded; raises on timeout.
- ``stop(popen)``: stop by pid (SIGTERM, then SIGKILL) and its process group.
- ``machine_header() -> str``: date, machine, kernel and versions, for the top
  of every benchmark's output; ``load_footer() -> str`` for its last line.

Plus small conveniences: ``free_port()``, ``free_privileged_port()``,
``median()``, ``SITE``/``REPO``/``PYTHON``.
"""

from __future__ import annotations

import datetime
import http.client
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / 'tests'))

import conftest  # noqa: E402

#: Stop by pid (SIGTERM, then SIGKILL), then its process group: the tests' own.
stop = conftest.stop_process
#: The configurable test site (``--plugin ours|builtin|none``, ``--port``, ...).
SITE = REPO / 'tests' / 'sites' / 'site.py'
PYTHON = sys.executable
LOG_DIR = Path(tempfile.mkdtemp(prefix='dropprivs-bench-'))


#: Free ports on 127.0.0.1, as the tests pick them (never assumes 80 is free).
free_port = conftest.free_port
free_privileged_port = conftest.free_privileged_port


_counter = 0


def start_site(argv: Sequence[str], env: Optional[Dict[str, str]] = None,
               log: Optional[Path] = None) -> subprocess.Popen:
    """Start ``argv`` as a server process; stop it with ``stop()`` in a finally block."""
    global _counter
    _counter += 1
    log = Path(log) if log else LOG_DIR / f'site{_counter}.log'
    popen = conftest.start_process(argv, log, env=env)
    popen.log_path = log  # type: ignore[attr-defined]
    return popen


def site_argv(port: int, plugin: str, *extra: str) -> list:
    """argv for tests/sites/site.py on one port with ``--plugin ours|builtin|none``."""
    return [PYTHON, str(SITE), '--port', str(port), '--plugin', plugin, *extra]


def _split(url: str):
    assert url.startswith('http://'), url
    hostport, _, path = url[len('http://'):].partition('/')
    host, _, port = hostport.partition(':')
    return host, int(port or 80), '/' + path


def get(url: str, timeout: float = 2.0):
    """One GET on a new connection: (status, body bytes)."""
    host, port, path = _split(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request('GET', path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_http(url: str, timeout: float = 20.0, popen: Optional[subprocess.Popen] = None,
              interval: float = 0.002) -> float:
    """Poll until ``url`` answers 200; return the monotonic time of that answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            raise RuntimeError(f'server exited with {popen.returncode}; log: '
                               f'{getattr(popen, "log_path", "?")}')
        try:
            status, _ = get(url, timeout=1.0)
            if status == 200:
                return time.monotonic()
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(interval)
    raise RuntimeError(f'timed out after {timeout}s waiting for 200 from {url}')


def vm_rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/<pid>/status."""
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError(f'no VmRSS for pid {pid}')


def median(values):
    return statistics.median(values) if values else float('nan')


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:
        return 'not installed'


def versions() -> Dict[str, str]:
    return {
        'python': platform.python_version(),
        'cherrypy': _version('cherrypy'),
        'cheroot': _version('cheroot'),
        'cherrypy-dropprivs': _version('cherrypy-dropprivs'),
    }


def machine_header() -> str:
    """Date, machine and versions: printed at the top of every benchmark."""
    v = versions()
    now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
    return '\n'.join([
        f'date:     {now}',
        f'machine:  nproc={os.cpu_count()} cpu="{_cpu_model()}" kernel={platform.release()} '
        f'({platform.system()} {platform.machine()})',
        f'versions: Python {v["python"]}, CherryPy {v["cherrypy"]}, cheroot {v["cheroot"]}, '
        f'cherrypy-dropprivs {v["cherrypy-dropprivs"]}',
        f'load:     {_loadavg()} (1/5/15-min load average when this run started; other work on '
        f'the machine adds noise)',
        f'euid:     {os.geteuid()}',
    ])


def load_footer() -> str:
    """The load average at the end of a run, to print last."""
    return f'load at end: {_loadavg()} (1/5/15-min load average)'


def _loadavg() -> str:
    try:
        return ' '.join(f'{x:.2f}' for x in os.getloadavg())
    except OSError:
        return 'unknown'


if __name__ == '__main__':
    print(machine_header())
