"""Shared harness: real processes, real ports, the kernel's view.

Every process a test starts goes through ``spawn`` and is stopped by its pid
in the fixture's finalizer. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import shlex
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
from cherrypy_dropprivs.kernel import ThreadCreds, thread_creds  # noqa: E402


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


def start_process(argv: Sequence[str], log: Path, env: Optional[dict] = None,
                  cwd=None, pass_fds: Sequence[int] = ()) -> subprocess.Popen:
    """Start ``argv`` in its own session, output to ``log``, the repo importable."""
    full_env = dict(os.environ)
    full_env['PYTHONUNBUFFERED'] = '1'
    full_env['PYTHONPATH'] = os.pathsep.join(
        p for p in (str(REPO), full_env.get('PYTHONPATH')) if p)
    if env:
        full_env.update(env)
    with open(log, 'wb') as out:
        return subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=full_env, cwd=cwd or str(REPO), start_new_session=True, pass_fds=tuple(pass_fds),
        )


@pytest.fixture
def spawn(tmp_path):
    """spawn(argv, env=..., cwd=..., ports=...) -> Proc; stopped by pid afterwards."""
    started: List[subprocess.Popen] = []

    def _spawn(argv: Sequence[str], env: Optional[dict] = None, cwd=None, ports=(),
               pass_fds: Sequence[int] = ()) -> Proc:
        log = tmp_path / f'proc{len(started)}.log'
        popen = start_process(argv, log, env=env, cwd=cwd, pass_fds=pass_fds)
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


def yama_blocks_same_user() -> bool:
    """Whether Yama's ptrace_scope (1 or more) keeps a user's processes from tracing each other."""
    from cherrypy_dropprivs.kernel import ptrace_scope

    return ptrace_scope() >= 1


@pytest.fixture
def suid_dumpable_1(request):
    """fs.suid_dumpable=1 (a process that changed its ids stays dumpable) for
    this test only; returns a function that puts the old value back early.
    The sysctl is global: the finalizer puts it back in any case."""
    knob = '/proc/sys/fs/suid_dumpable'
    try:
        with open(knob) as f:
            old = f.read().strip()
        with open(knob, 'w') as f:
            f.write('1')
    except OSError as e:
        pytest.skip(f'{knob} cannot be set here ({e.strerror})')

    def restore() -> None:
        with open(knob, 'w') as f:
            f.write(old)
    request.addfinalizer(restore)
    return restore


# -- running a process that re-execs itself after dropping to nobody --------

NOBODY = 65534


def _can_search(path: str, uid: int, gids: Sequence[int]) -> bool:
    """Mode bits only: may ``uid`` (with ``gids``) traverse directory ``path``?"""
    st = os.stat(path)
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in gids:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _ancestors(path: str) -> List[str]:
    """Proper ancestors of ``path``, outermost first, without '/'."""
    out, parent = [], os.path.dirname(path)
    while parent not in ('/', ''):
        out.append(parent)
        parent = os.path.dirname(parent)
    return out[::-1]


def _blocked(path: str, uid: int, gids: Sequence[int]) -> List[str]:
    return [a for a in _ancestors(path) if not _can_search(a, uid, gids)]


def _is_under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip('/') + '/')


_MOUNT_NS_OK: list = []  # [ok, reason]: probed once


def _check_mount_namespaces(blocked: Sequence[str]) -> None:
    """Fail with the reason (not a mount error deep in a site's log) when this
    machine cannot give a process a private mount namespace."""
    if not _MOUNT_NS_OK:
        probe = subprocess.run(['unshare', '-m', '--propagation', 'private', 'true'],
                               capture_output=True, text=True, timeout=10)
        _MOUNT_NS_OK.append(probe.returncode == 0)
        if not _MOUNT_NS_OK[0]:
            _MOUNT_NS_OK.append(probe.stderr.strip())
    if not _MOUNT_NS_OK[0]:
        pytest.fail(f'nobody cannot search {", ".join(blocked)}, so a process dropped to nobody '
                    f'cannot re-execute the interpreter; making that possible without changing '
                    f'host modes needs a private mount namespace, and `unshare -m` failed: '
                    f'{_MOUNT_NS_OK[1]}', pytrace=False)


def nobody_can_run(*paths: str, uid: int = NOBODY, gids: Sequence[int] = (NOBODY,)) -> List[str]:
    """argv prefix under which ``uid`` can reach the interpreter, the repo and ``paths``.

    A process that drops to nobody and then re-execs itself (engine.restart(),
    the autoreloader, SIGHUP) needs to execute sys.executable and read the
    repo again as nobody. On these machines the interpreter lives under /root
    (mode 700), in CI the clone may too. Host modes must not change, so the
    process runs in a private mount namespace instead: each ancestor directory
    nobody cannot traverse is covered by a tmpfs (mode 755) into which the
    needed paths are bind-mounted back. The originals are bind-mounted aside
    first, because the cover hides them. ``unshare`` (no --fork) and the
    final ``exec`` keep one pid, so the pid the test sees is the server's.
    Returns [] when nothing blocks. The needed paths keep their own modes (a
    key nobody may not read stays unreadable).
    """
    wanted = [sys.executable, os.path.dirname(os.path.realpath(sys.executable)), sys.prefix,
              sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(REPO), *paths]
    needed: List[str] = []
    for p in wanted:
        for q in {os.path.abspath(p), os.path.realpath(p)}:
            if q not in needed:
                needed.append(q)
    # Mount points, shallow first: a tmpfs over each blocking ancestor, the
    # needed path bound back. A cover under another cover (with no bind in
    # between) is already a tmpfs directory; a bind under a bind is exposed.
    ops: List[tuple] = []
    for p in needed:
        for b in _blocked(p, uid, gids):
            ops.append((b, 'cover'))
        if _blocked(p, uid, gids):
            ops.append((p, 'bind'))
    ops = sorted(set(ops), key=lambda o: (o[0].count('/'), o[0], o[1] == 'bind'))
    kept: List[tuple] = []
    for path, kind in ops:
        enclosing = [k for k in kept if k[0] != path and _is_under(path, k[0])]
        nearest = max(enclosing, key=lambda k: k[0].count('/'), default=None)
        if nearest is not None and nearest[1] == kind:
            continue
        kept.append((path, kind))
    if not kept:
        return []
    _check_mount_namespaces([p for p, k in kept if k == 'cover'])
    tops = {p for p, _ in kept}
    stage = next(d for d in ('/mnt', '/media', '/srv', '/opt', '/var/tmp')
                 if os.path.isdir(d) and not any(_is_under(t, d) or _is_under(d, t) for t in tops))
    q = shlex.quote
    lines = ['set -e', f'mount -t tmpfs -o mode=0700 dropprivs-stage {q(stage)}']
    binds = [p for p, k in kept if k == 'bind']
    for i, p in enumerate(binds):
        aside = f'{stage}/{i}'
        lines.append(f'mkdir {q(aside)}' if os.path.isdir(p) else f': > {q(aside)}')
        lines.append(f'mount --rbind {q(p)} {q(aside)}')
    for path, kind in kept:
        if kind == 'cover':
            lines.append(f'mkdir -p {q(path)}')
            lines.append(f'mount -t tmpfs -o mode=0755 dropprivs-cover {q(path)}')
        else:
            i = binds.index(path)
            if os.path.isdir(path):
                lines.append(f'mkdir -p {q(path)}')
            else:
                lines.append(f'mkdir -p {q(os.path.dirname(path))}; [ -e {q(path)} ] || : > {q(path)}')
            lines.append(f'mount --move {q(stage)}/{i} {q(path)}')
    lines.append(f'umount {q(stage)}')
    lines.append('exec "$@"')
    return ['unshare', '-m', '--propagation', 'private', 'sh', '-c', '\n'.join(lines), 'nobody-can-run']
