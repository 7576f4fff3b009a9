"""A busy site starts, restarts and stops as surely as plain CherryPy (issue 9).

The crowd (tests/crowd.py) is running before the process exists: more
clients than CherryPy's listen backlog (5) or Python's (128), each opening a
fresh connection every few milliseconds, plus connections that are open and
send nothing. The gate holds every server until the drop is verified, so the
clients wait in the backlog meanwhile; the site must still come up, within a
second of plain CherryPy measured in the same test, and no answer may come
from euid 0. Assertions are on real answers (site.py reports the serving
thread's /proc/thread-self/status) and on the kernel's socket tables.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import poller
import pytest
from conftest import (
    HERE,
    NOBODY,
    free_port,
    free_privileged_port,
    needs_root,
    nobody_can_run,
    stop_process,
    wait_for,
)
from crowd import Crowd, IdleClients
from test_restarts import assert_dropped_everywhere, listen_inode, start_daemonized, stop_daemons

from cherrypy_dropprivs.kernel import thread_creds

pytestmark = needs_root


def _first_answer_after_spawn(site, port: int, clients: int, plugin: str) -> tuple:
    """Start site.py under a crowd; (seconds from spawn to first answer, crowd, proc)."""
    conn = poller.tcp('127.0.0.1', port)
    crowd = Crowd(conn, clients, interval=0.005).start()
    time.sleep(0.3)  # the crowd is refused (nothing listens yet) before the process exists
    t0 = time.monotonic()
    proc = site(ports=[port], extra=['--plugin', plugin], wait=False)
    try:
        wait_for(lambda: crowd.first_answer() or not proc.alive(), 15, what='a first answer')
    except AssertionError:
        crowd.stop()
        raise AssertionError(f'{plugin}: no answer within 15 s under {clients} clients:\n{proc.log()}')
    first = crowd.first_answer()
    if first is None:
        crowd.stop()
        raise AssertionError(f'{plugin}: exited {proc.popen.returncode} under {clients} clients:\n'
                             f'{proc.log()}')
    return first - t0, crowd, proc


@pytest.mark.parametrize('clients', [16, 64, 160])
def test_start_under_a_crowd(site, clients):
    """Plain CherryPy and then ours start while ``clients`` clients hammer the
    port: ours answers within a second of plain, keeps serving under the
    load, and not one answer comes from euid 0."""
    port = free_privileged_port()
    plain_s, crowd, plain = _first_answer_after_spawn(site, port, clients, 'none')
    crowd.stop()
    plain.popen.terminate()
    plain.wait_exit(timeout=10)
    wait_for(lambda: _port_free(port), 10, what=f'port {port} free after plain CherryPy')

    ours_s, crowd, proc = _first_answer_after_spawn(site, port, clients, 'ours')
    try:
        first = crowd.first_answer()
        time.sleep(1.5)  # keeps serving under the same load
        assert proc.alive(), proc.log()
        later = crowd.answered_since(first + 1.0)
    finally:
        crowd.stop()
    by_root = crowd.by_root()
    print(f'{clients} clients: first answer plain {plain_s * 1000:.0f} ms, ours {ours_s * 1000:.0f} ms; '
          f'ours answered {len(crowd.answered())}, {later} after its first second')
    assert not by_root, f'{len(by_root)} answers from euid 0, first {by_root[0].body}'
    assert later > 0, 'no answer after the first second: the site stopped serving'
    assert ours_s <= plain_s + 1.0, f'first answer: ours {ours_s:.2f} s, plain {plain_s:.2f} s'
    assert 'exiting with status' not in proc.log(), proc.log()
    for o in crowd.answered():
        assert tuple(o.body['uids']) == (NOBODY,) * 4, o.body
    assert_dropped_everywhere(proc.pid)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


def _restart_under_load(site, extra, trigger, prefix) -> tuple:
    """Start ours, then restart it with 2 idle connections and 16 pollers; (proc, crowd, seconds)."""
    port = free_privileged_port()
    proc = site(ports=[port], extra=extra, prefix=prefix, wait=False)
    conn = poller.tcp('127.0.0.1', port)
    boot = poller.wait_started(conn, alive=proc.alive, timeout=20)['boot']
    inode = listen_inode(port)
    time.sleep(0.5)  # the Autoreloader's first scans record the mtimes a touch must beat
    idle = IdleClients('127.0.0.1', port, 2).open()
    crowd = Crowd(conn, 16, path='/boot', interval=0.01).start()
    try:
        t0 = time.monotonic()
        trigger(proc, conn)
        try:
            back = poller.wait_started(conn, not_boot=boot, timeout=30, alive=proc.alive)
        except AssertionError as e:
            engine = [ln for ln in proc.log().splitlines() if 'GET /boot' not in ln]
            raise AssertionError(f'{e}; its log without the access lines:\n' + '\n'.join(engine[-60:]))
        took = time.monotonic() - t0
        time.sleep(0.5)
    finally:
        crowd.stop()
        idle.close()
    assert proc.alive(), proc.log()
    assert listen_inode(port) == inode, 'not the same listening socket'
    return proc, crowd, took, back


def _via_restart_url(proc, conn):
    assert poller.request(conn, '/restart').kind == poller.OK


@needs_root
def test_restart_with_idle_keepalive_and_a_crowd(site):
    """engine.restart() with 2 idle connections (each holds a worker until its
    read times out) and 16 clients polling: the site comes back on the same
    socket, dropped, and never exits; no client is refused or reset."""
    proc, crowd, took, back = _restart_under_load(site, [], _via_restart_url, nobody_can_run())
    assert back['uids'] == [NOBODY] * 4
    kinds = {o.kind for o in crowd.outcomes()}
    assert kinds <= {poller.OK, 'timeout'}, crowd.pollers[0].counts()
    assert not crowd.by_root()
    assert_dropped_everywhere(proc.pid)
    print(f'restart with idle keep-alive clients: back after {took:.2f} s')


def test_autoreload_restart_with_idle_keepalive_and_a_crowd(site, tmp_path):
    """The same restart triggered by the Autoreloader."""
    d = tmp_path / 'app'
    d.mkdir(mode=0o755)
    watched = d / 'watched.py'
    watched.write_text('X = 1\n')
    watched.chmod(0o644)

    def touch(proc, conn):
        future = time.time() + 5
        os.utime(watched, (future, future))

    proc, crowd, took, back = _restart_under_load(
        site, ['--autoreload', '--watch', str(watched)], touch, nobody_can_run(str(d)))
    assert 'Restarting because' in proc.log()
    assert not crowd.by_root() and back['uids'] == [NOBODY] * 4
    assert_dropped_everywhere(proc.pid)


def test_sighup_restart_daemonized_with_idle_keepalive_and_a_crowd(spawn, tmp_path):
    """Daemonized, SIGHUP restarts with idle connections and a crowd: back on
    the same socket as nobody, and the daemon is still there."""
    log, pid_file, port, launcher = start_daemonized(spawn, tmp_path)
    conn = poller.tcp('127.0.0.1', port)
    pids = set()
    try:
        first = poller.wait_started(conn, timeout=20)
        pids.add(first['pid'])
        assert launcher.wait_exit(timeout=10) == 0
        inode = listen_inode(port)
        idle = IdleClients('127.0.0.1', port, 2).open()
        crowd = Crowd(conn, 16, path='/boot', interval=0.01).start()
        try:
            os.kill(first['pid'], signal.SIGHUP)
            back = poller.wait_started(conn, not_boot=first['boot'], timeout=30)
            pids.add(back['pid'])
        finally:
            crowd.stop()
            idle.close()
        assert 'SIGHUP caught while daemonized. Restarting.' in log.read_text()
        assert back['uids'] == [NOBODY] * 4
        assert back['pid'] == first['pid']  # a re-executed daemon does not fork again
        assert listen_inode(port) == inode
        assert not crowd.by_root()
        assert_dropped_everywhere(back['pid'])
    finally:
        stop_daemons(pids, pid_file)


# -- stop means stop ---------------------------------------------------------------


STOP_THEN = '''
import sys, threading, cherrypy
from cherrypy_dropprivs import DropPrivileges
cherrypy.config.update({{'log.screen': True, 'checker.on': False, 'engine.autoreload.on': False}})
cherrypy.server.socket_host, cherrypy.server.socket_port = '127.0.0.1', {port}
HUNG = threading.Event()
class Root:
    @cherrypy.expose
    def index(self):
        import os
        return str(os.geteuid())
    @cherrypy.expose
    def hang(self):
        HUNG.wait(3)  # a busy worker: stop() waits for it (up to shutdown_timeout, 5 s)
        return 'released'
cherrypy.tree.mount(Root(), '/')
DropPrivileges(cherrypy.engine, uid={uid!r}).subscribe()
cherrypy.engine.start()
print('STARTED', flush=True)
if sys.stdin.readline().strip() == 'stop while busy':
    print('STOPPING', flush=True)
cherrypy.engine.stop()
HUNG.set()
print('STOPPED', flush=True)
if sys.stdin.readline().strip() == 'restart':
    cherrypy.engine.restart()  # a re-exec: this script runs again from the top
cherrypy.engine.start()
print('STARTED AGAIN', flush=True)
cherrypy.engine.block()
'''


def _say(p, line: str) -> None:
    p.stdin.write(line + '\n')
    p.stdin.flush()


def _read_until(p, word: str, timeout: float = 20) -> str:
    """The process's output up to the line ``word``; bounded (a reader thread
    holds the pipe, so a process that prints nothing more cannot block this)."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = p.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:  # the pipe closed: the process ended
            break
        seen.append(line)
        if line.strip() == word:
            return ''.join(seen)
    raise AssertionError(f'no {word!r} line within {timeout}s:\n{"".join(seen)}')


@pytest.fixture
def stop_then_start():
    started = []

    def _run(port: int, uid):
        script = STOP_THEN.format(port=port, uid=uid)
        env = dict(os.environ, PYTHONPATH=str(HERE.parent), PYTHONUNBUFFERED='1')
        p = subprocess.Popen([sys.executable, '-c', script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, cwd=str(HERE.parent), env=env)
        started.append(p)
        p.lines = queue.Queue()

        def read() -> None:
            for line in p.stdout:
                p.lines.put(line)
            p.lines.put(None)
        threading.Thread(target=read, daemon=True).start()
        return p

    yield _run
    for p in started:
        stop_process(p)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(('127.0.0.1', port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_closes_an_unprivileged_port(stop_then_start):
    """After engine.stop() an unprivileged port is closed as in plain CherryPy:
    connections are refused and another process can bind it and serve."""
    port = free_port()
    p = stop_then_start(port, 'nobody')
    _read_until(p, 'STARTED')
    _say(p, 'stop')
    _read_until(p, 'STOPPED')
    assert _refused(port)
    other = socket.socket()
    other.bind(('127.0.0.1', port))  # no EADDRINUSE: nothing of ours is left on it
    other.listen(1)
    c = socket.create_connection(('127.0.0.1', port), timeout=2)
    a, _ = other.accept()
    c.close()  # the client closes first: a server-side TIME_WAIT would block any re-bind
    a.close()
    other.close()
    _say(p, 'start')
    _read_until(p, 'STARTED AGAIN')
    body = wait_for(lambda: _get(port), 10, what='an answer after start()')
    assert body == str(NOBODY)


def test_stop_then_start_on_a_privileged_port_after_the_drop(stop_then_start):
    """After the drop the process cannot bind a privileged port again. stop()
    refuses new clients as plain CherryPy does (nothing listens), and start()
    in the same process serves the port again, dropped."""
    port = free_privileged_port()
    p = stop_then_start(port, 'nobody')
    _read_until(p, 'STARTED')
    _say(p, 'stop')
    _read_until(p, 'STOPPED')
    assert _refused(port), 'a stopped server must not leave a listening socket nobody serves'
    _say(p, 'start')
    _read_until(p, 'STARTED AGAIN')
    body = wait_for(lambda: _get(port), 10, what='an answer after start()')
    assert body == str(NOBODY)
    for t in thread_creds(p.pid):
        assert t.uids == (NOBODY,) * 4, t


def test_stop_refuses_at_once_while_a_worker_is_busy(stop_then_start):
    """cheroot's stop() closes the server's socket, then waits up to
    shutdown_timeout (5 s) for busy workers. The socket the plugin keeps for a
    later start must stop listening at that moment too: new clients are
    refused at once, as plain CherryPy refuses them, not held 5 s and reset
    (found in review)."""
    port = free_privileged_port()
    p = stop_then_start(port, 'nobody')
    _read_until(p, 'STARTED')
    busy = socket.create_connection(('127.0.0.1', port), timeout=5)
    busy.sendall(b'GET /hang HTTP/1.1\r\nHost: x\r\n\r\n')
    time.sleep(0.3)  # a worker holds it
    _say(p, 'stop while busy')
    _read_until(p, 'STOPPING')
    wait_for(lambda: _refused(port), 1.5, what='new clients refused while the busy worker ends')
    busy.close()
    _read_until(p, 'STOPPED')
    _say(p, 'start')
    _read_until(p, 'STARTED AGAIN')
    assert wait_for(lambda: _get(port), 10, what='an answer after start()') == str(NOBODY)


@needs_root
def test_stop_then_restart_comes_back(site):
    """engine.stop() (the kept socket stops listening), then engine.restart():
    the re-executed image adopts the socket, listening again, and serves as
    nobody; it exited 77 refusing a socket that did not listen (found in review)."""
    port = free_privileged_port()
    proc = site(ports=[port], prefix=nobody_can_run(), wait=False)
    conn = poller.tcp('127.0.0.1', port)
    boot = poller.wait_started(conn, alive=proc.alive)['boot']
    poller.request(conn, '/stop_then_restart')
    back = poller.wait_started(conn, not_boot=boot, timeout=20, alive=proc.alive)
    assert back['uids'] == [NOBODY] * 4 and back['pid'] == proc.pid, back
    assert_dropped_everywhere(proc.pid)


@needs_root
def test_a_unix_socket_serves_again_after_stop_then_start(site, tmp_path):
    """A kept UNIX socket: shut down for reading it would refuse every client
    for good, whatever listen() follows (found in review). It keeps listening
    across a stop, and the next start serves on it again."""
    d = tmp_path / 'run'
    d.mkdir(mode=0o755)
    path = str(d / 'site.sock')
    proc = site(extra=['--unix', path, '--stop-start'])
    wait_for(lambda: proc.log().count('Bus STARTED') >= 2, 20, what='the second start')
    o = wait_for(lambda: (lambda r: r if r.kind == poller.OK else None)(
        poller.request(poller.unix(path), '/whoami')), 10, what='an answer on the UNIX socket')
    assert o.body['uids'] == [NOBODY] * 4, o.body


def _get(port: int):
    o = poller.request(poller.tcp('127.0.0.1', port), '/')
    if o.kind != poller.OK:
        return None
    return str(o.body) if o.body is not None else None


@needs_root
def test_confined_start_and_restart_under_a_crowd(site):
    """With ``confine`` on (a probe job runs in every worker before the gate
    opens; every socket is kept), a restart with 2 idle connections and 16
    pollers comes back on the same socket, confined, dropped, never exiting."""
    proc, crowd, took, back = _restart_under_load(
        site, ['--options', json.dumps({'confine': True})], _via_restart_url, nobody_can_run())
    assert back['uids'] == [NOBODY] * 4
    kinds = {o.kind for o in crowd.outcomes()}
    assert kinds <= {poller.OK, 'timeout'}, crowd.pollers[0].counts()
    assert not crowd.by_root()
    assert 'already confined' in proc.log()
    assert_dropped_everywhere(proc.pid)
    print(f'confined restart with idle keep-alive clients: back after {took:.2f} s')
