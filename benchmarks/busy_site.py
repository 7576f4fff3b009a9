"""A busy site: start, restart and stop under a crowd, this package vs plain CherryPy.

Run as root from the repository root (one command):

    .venv/bin/python benchmarks/busy_site.py [--clients 4 16 64] [--package-root DIR]

Prints, for plain CherryPy (no drop plugin) and for this package, measured in
the same run on a free privileged port:

- start while N clients hammer the port (each a fresh connection every 5 ms,
  running before the process exists): time from spawn to the first answer,
  whether the process is still serving 2 s later, answers from euid 0;
- engine.restart() with 2 idle connections (connected, sending nothing) and
  16 polling clients: time until a new process image answers, or its exit;
- engine.stop() (no start after it): whether a new connection is refused, and
  whether another process can bind the port (an unprivileged one; for a
  privileged port only this process could bind it again).

``--package-root`` puts another checkout of the package first on the path
(e.g. a ``git worktree`` of an older commit), for a before/after table.
Not a test: numbers for the issue note.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'tests'))
sys.path.insert(0, str(REPO / 'benchmarks'))

import conftest  # noqa: E402
import poller  # noqa: E402
from _harness import LOG_DIR, load_footer, machine_header  # noqa: E402
from crowd import Crowd, IdleClients  # noqa: E402

ROOT = None  # set from --package-root


def spawn(argv, name: str) -> subprocess.Popen:
    env = {'PYTHONPATH': os.pathsep.join(str(p) for p in (ROOT, REPO) if p)}
    popen = conftest.start_process(argv, LOG_DIR / f'{name}.log', env=env)
    popen.log_path = LOG_DIR / f'{name}.log'  # type: ignore[attr-defined]
    return popen


def start_under_crowd(plugin: str, clients: int) -> str:
    port = conftest.free_privileged_port()
    crowd = Crowd(poller.tcp('127.0.0.1', port), clients).start()
    time.sleep(0.3)
    t0 = time.monotonic()
    p = spawn([sys.executable, str(conftest.SITE), '--port', str(port), '--plugin', plugin],
              f'start-{plugin}-{clients}')
    try:
        deadline = time.monotonic() + 20
        while crowd.first_answer() is None and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first = crowd.first_answer()
        time.sleep(2)
        serving = p.poll() is None and first is not None and crowd.answered_since(first + 1.5) > 0
    finally:
        crowd.stop()
        conftest.stop_process(p)
    by_root = len(crowd.by_root())
    if first is None:
        return f'never answers; exit {p.returncode}'
    return (f'first answer {(first - t0) * 1000:.0f} ms, '
            f'{"keeps serving" if serving else f"stopped serving (exit {p.returncode})"}, '
            f'{by_root} answers from euid 0')


def restart_with_idle(plugin: str) -> str:
    port = conftest.free_privileged_port()
    prefix = conftest.nobody_can_run() if plugin == 'ours' else []
    p = spawn([*prefix, sys.executable, str(conftest.SITE), '--port', str(port), '--plugin', plugin],
              f'restart-{plugin}')
    conn = poller.tcp('127.0.0.1', port)
    try:
        boot = poller.wait_started(conn, timeout=20, alive=lambda: p.poll() is None)['boot']
        time.sleep(0.3)
        idle = IdleClients('127.0.0.1', port, 2).open()
        crowd = Crowd(conn, 16, path='/boot', interval=0.01).start()
        try:
            t0 = time.monotonic()
            poller.request(conn, '/restart')
            try:
                poller.wait_started(conn, not_boot=boot, timeout=40, alive=lambda: p.poll() is None)
                result = f'back after {time.monotonic() - t0:.1f} s'
            except AssertionError:
                result = f'not back (exit {p.poll()})'
        finally:
            crowd.stop()
            idle.close()
        refused = sum(1 for o in crowd.outcomes() if o.kind == 'refused')
        return f'{result}; {refused} connections refused meanwhile'
    finally:
        conftest.stop_process(p)


STOP_SCRIPT = '''
import sys, cherrypy
cherrypy.config.update({{'log.screen': True, 'checker.on': False, 'engine.autoreload.on': False}})
cherrypy.server.socket_host, cherrypy.server.socket_port = '127.0.0.1', {port}
cherrypy.tree.mount(None, '/')
if {ours}:
    from cherrypy_dropprivs import DropPrivileges
    DropPrivileges(cherrypy.engine, uid='nobody').subscribe()
cherrypy.engine.start()
cherrypy.engine.stop()
print('STOPPED', flush=True)
sys.stdin.readline()
'''


def stop_then_probe(plugin: str, privileged: bool) -> str:
    port = conftest.free_privileged_port() if privileged else conftest.free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (ROOT, REPO) if p))
    p = subprocess.Popen([sys.executable, '-c', STOP_SCRIPT.format(port=port, ours=plugin == 'ours')],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, start_new_session=True, cwd=str(LOG_DIR))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (p.stdout.readline() or 'STOPPED').strip() != 'STOPPED':
            pass
        try:
            socket.create_connection(('127.0.0.1', port), timeout=2).close()
            conn = 'a new connection is accepted by the kernel and never served'
        except ConnectionRefusedError:
            conn = 'new connections refused'
        except OSError as e:
            conn = f'new connection: {e}'
        s = socket.socket()
        try:
            s.bind(('127.0.0.1', port))
            bind = 'another process can bind it'
        except OSError as e:
            bind = f'another process gets {e.strerror}'
        finally:
            s.close()
        return f'{conn}; {bind}'
    finally:
        conftest.stop_process(p)


def main() -> None:
    global ROOT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--clients', type=int, nargs='+', default=[4, 16, 64])
    ap.add_argument('--package-root', default=None)
    args = ap.parse_args()
    ROOT = Path(args.package_root).resolve() if args.package_root else None
    print(machine_header())
    print(f'package:  {ROOT or REPO}')
    rows = []
    for n in args.clients:
        rows.append((f'start while {n} clients hammer the port',
                     start_under_crowd('none', n), start_under_crowd('ours', n)))
    rows.append(('engine.restart() with 2 idle connections and 16 pollers',
                 restart_with_idle('none'), restart_with_idle('ours')))
    rows.append(('engine.stop(), unprivileged port', stop_then_probe('none', False),
                 stop_then_probe('ours', False)))
    rows.append(('engine.stop(), privileged port (after the drop for ours)',
                 stop_then_probe('none', True), stop_then_probe('ours', True)))
    print('\n| case | plain CherryPy | this package |\n|---|---|---|')
    for case, plain, ours in rows:
        print(f'| {case} | {plain} | {ours} |')
    print(load_footer())


if __name__ == '__main__':
    main()
