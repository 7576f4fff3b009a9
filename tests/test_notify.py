"""systemd Type=notify: readiness from the dropped, verified process (issue 13).

The test is the service manager: it binds the notify socket with SO_PASSCRED
(tests/notify_capture.py) and reads each message with the credentials the
kernel attached to it, so "READY=1 from uid 65534, pid P" is the kernel's
word, not the site's. The sites are real processes started as root on a free
privileged port; the faults are real (setpriv takes CAP_SETUID away; every
worker thread really blocks in a request).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from conftest import NOBODY, REPO, SITE, free_privileged_port, needs_root, nobody_can_run
from notify_capture import Receiver
from test_restarts import stop_daemons

NOTIFY_VARS = {'NOTIFY_SOCKET', 'CHERRYPY_DROPPRIVS_NOTIFY', 'WATCHDOG_USEC', 'WATCHDOG_PID'}


@pytest.fixture(params=['path', 'abstract'])
def receiver(request, tmp_path):
    """A notify socket: a path in a root-only (0700) directory, or an abstract one."""
    if request.param == 'path':
        address = str(tmp_path / 'notify.sock')
        assert not os.stat(tmp_path.parent).st_mode & 0o001  # nobody cannot reach it
    else:
        address = f'@dropprivs-test-{os.getpid()}-{time.monotonic_ns()}'
    rx = Receiver(address)
    yield rx
    rx.close()


@pytest.fixture
def abstract_receiver():
    rx = Receiver(f'@dropprivs-test-{os.getpid()}-{time.monotonic_ns()}')
    yield rx
    rx.close()


def _env(rx: Receiver, **extra) -> dict:
    return {'NOTIFY_SOCKET': rx.address, **extra}


def _from_site(m, pid: int) -> None:
    """Sent by ``pid`` as nobody (real uid and gid), as the kernel says."""
    assert (m.pid, m.uid, m.gid) == (pid, NOBODY, NOBODY), m.line()


@needs_root
def test_ready_only_from_the_dropped_process_then_stopping(site, receiver):
    """READY=1 is the first message, from the site's pid with uid/gid nobody (the
    kernel's word), and a request sent the moment it arrives is served at once,
    by nobody. Children the site starts inherit none of the variables. A path
    socket nobody cannot open still works (connected before the drop) and is a
    WARNING; an abstract one is not. SIGTERM: STOPPING=1."""
    proc = site(env=_env(receiver), wait=False, extra=['--log-levels'])
    ready = receiver.wait_field('READY')
    r = proc.get('/whoami', timeout=1)
    assert r.status_code == 200 and r.json()['uids'] == [NOBODY] * 4
    assert receiver.index(ready) == 0, [m.line() for m in receiver.messages]
    _from_site(ready, proc.pid)
    assert ready.fields['STATUS'].startswith(f'serving as nobody (uid {NOBODY}), verified on ')
    assert 'MAINPID' not in ready.fields
    assert proc.get('/child_env').json() == {}
    warned = 'the notify socket' in proc.log() and 'cannot be opened by uid=65534(nobody)' in proc.log()
    assert warned == (receiver.address[0] != '@'), proc.log()
    n = len(receiver.messages)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait_exit(15) == 0
    stopping = receiver.wait_field('STOPPING', start=n)
    _from_site(stopping, proc.pid)
    assert not receiver.with_field('RELOADING')
    assert [m.fields.get('READY') for m in receiver.messages].count('1') == 1


@needs_root
def test_failed_drop_sends_the_reason_never_ready(site, abstract_receiver):
    """setpriv removes CAP_SETUID, so the kernel refuses setresuid: exit 77,
    one STATUS= with the reason (still uid 0: the drop failed), no READY=1."""
    rx = abstract_receiver
    proc = site(env=_env(rx), wait=False,
                prefix=['setpriv', '--bounding-set=-setuid', '--inh-caps=-setuid'])
    assert proc.wait_exit(10) == 77
    status = rx.wait_for(lambda m: 'STATUS' in m.fields, timeout=5)
    assert status.pid == proc.pid and status.uid == 0, status.line()
    assert status.fields['STATUS'].startswith('dropprivs: FAILED: setresuid(65534): the kernel refused')
    assert 'exiting with status 77 before serving' in status.fields['STATUS']
    time.sleep(0.1)
    assert not rx.with_field('READY'), [m.line() for m in rx.messages]


@needs_root
def test_graceful_then_restart_reload_and_ready_again(site, receiver):
    """engine.graceful(): RELOADING=1 (MONOTONIC_USEC on CLOCK_MONOTONIC) then
    READY=1. engine.restart(): RELOADING=1, then READY=1 from the re-executed
    image: same pid, nobody, a new boot token. The re-executed image got the
    socket through the hand-over (a path nobody cannot open: the descriptor
    connected as root) and hands none of it to its children."""
    proc = site(env=_env(receiver), wait=False, prefix=nobody_can_run())
    receiver.wait_field('READY')
    boot = proc.get('/boot').json()['boot']

    n = len(receiver.messages)
    proc.get('/graceful')
    reloading = receiver.wait_field('RELOADING', start=n)
    ready = receiver.wait_field('READY', start=receiver.index(reloading) + 1)
    for m in (reloading, ready):
        _from_site(m, proc.pid)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now - int(reloading.fields['MONOTONIC_USEC']) < 10_000_000

    n = len(receiver.messages)
    proc.get('/restart')
    reloading = receiver.wait_field('RELOADING', start=n)
    ready = receiver.wait_field('READY', start=receiver.index(reloading) + 1, timeout=20)
    for m in (reloading, ready):
        _from_site(m, proc.pid)
    assert [list(m.fields)[0] for m in receiver.messages[n:]] == ['RELOADING', 'READY']
    after = proc.get('/boot').json()
    assert after['boot'] != boot and after['pid'] == proc.pid and after['uids'] == [NOBODY] * 4
    assert ready.fields['STATUS'].startswith(f'serving as nobody (uid {NOBODY}), verified on ')
    assert proc.get('/child_env').json() == {}


def _pings_after(rx: Receiver, t: float):
    return [m.at for m in rx.with_field('WATCHDOG') if m.at >= t]


@needs_root
def test_watchdog_pings_at_half_the_interval_and_stop_when_every_worker_hangs(site, abstract_receiver):
    """WATCHDOG_USEC=0.6 s: WATCHDOG=1 every 0.3 s from the dropped site. Then
    every worker (thread_pool 4) really blocks in a request and a fifth client
    waits: no worker takes it, the pings stop, and STATUS= says why."""
    rx = abstract_receiver
    proc = site(env=_env(rx, WATCHDOG_USEC='600000'), wait=False, extra=['--log-levels'])
    rx.wait_field('READY')
    t0 = time.monotonic()
    time.sleep(1.6)
    pings = _pings_after(rx, t0)
    assert 4 <= len(pings) <= 7, pings
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(0.2 < g < 0.45 for g in gaps), gaps
    for m in rx.with_field('WATCHDOG'):
        _from_site(m, proc.pid)

    clients = []
    try:
        for _ in range(5):
            c = socket.create_connection(('127.0.0.1', proc.port), timeout=5)
            c.sendall(b'GET /hang HTTP/1.1\r\nHost: x\r\n\r\n')
            clients.append(c)
        hung = time.monotonic()
        why = rx.wait_for(lambda m: 'watchdog not pinged' in m.fields.get('STATUS', ''), timeout=3)
        assert 'no worker took one' in why.fields['STATUS'], why.line()
        assert why.at - hung < 1.0  # within two checks
        quiet_from = why.at + 0.05
        time.sleep(1.5)
        assert _pings_after(rx, quiet_from) == [], 'pings went on while every worker hung'
        assert re.search(r'^WARNING\|.*dropprivs: watchdog: not pinging systemd: server .*'
                         r'no worker took one', proc.log(), re.M), proc.log()
    finally:
        for c in clients:
            c.close()
        os.kill(proc.pid, signal.SIGKILL)  # its workers are blocked for 30 s


@needs_root
def test_watchdog_for_another_pid_is_not_ours(site, abstract_receiver):
    """WATCHDOG_PID names another process: READY=1, but no WATCHDOG=1."""
    rx = abstract_receiver
    proc = site(env=_env(rx, WATCHDOG_USEC='200000', WATCHDOG_PID='1'), wait=False)
    ready = rx.wait_field('READY')
    _from_site(ready, proc.pid)
    time.sleep(0.5)
    assert not rx.with_field('WATCHDOG')
    assert proc.get('/child_env').json() == {}


@needs_root
def test_daemonized_names_its_main_pid(spawn, tmp_path, abstract_receiver):
    """Under CherryPy's Daemonizer the process systemd started exits at the fork:
    the daemon sends MAINPID= of itself first (still root, so systemd sees its
    exit status even if the drop fails), then READY=1 with MAINPID= as nobody."""
    rx = abstract_receiver
    d = tmp_path / 'daemon'
    d.mkdir(mode=0o755)
    log, pid_file = d / 'daemon.log', d / 'daemon.pid'
    port = free_privileged_port()
    launcher = spawn([sys.executable, str(SITE), '--port', str(port), '--daemonize', str(log),
                      '--write-pid', str(pid_file)], env=_env(rx), ports=[port])
    pids = set()
    try:
        ready = rx.wait_field('READY')
        daemon = int(ready.fields['MAINPID'])
        pids.add(daemon)
        assert daemon != launcher.pid and ready.pid == daemon and ready.uid == NOBODY, ready.line()
        first = rx.messages[0]
        assert first.fields.get('MAINPID') == str(daemon) and first.pid == daemon and first.uid == 0
        assert launcher.wait_exit(10) == 0
        r = requests.get(f'http://127.0.0.1:{port}/whoami', timeout=5)
        assert r.json()['pid'] == daemon
    finally:
        stop_daemons(pids, pid_file)


def test_notify_code_not_imported_without_notify_socket(tmp_path):
    """No NOTIFY_SOCKET: the plugin arms without importing the notify code (and
    without root: nothing to drop, CherryPy's behaviour unchanged)."""
    code = (
        'import sys, cherrypy, cherrypy_dropprivs\n'
        'from cherrypy_dropprivs import plugin\n'
        'p = cherrypy_dropprivs.DropPrivileges(cherrypy.engine, uid=None)\n'
        'assert plugin._systemd_readiness() is None\n'
        'print(json.dumps(sorted(m for m in sys.modules if m.startswith("cherrypy_dropprivs"))))\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in NOTIFY_VARS}
    env['PYTHONPATH'] = str(REPO)
    out = subprocess.run([sys.executable, '-c', 'import json\n' + code], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    modules = json.loads(out)
    assert 'cherrypy_dropprivs.notify' not in modules and 'cherrypy_dropprivs.readiness' not in modules
    assert 'cherrypy_dropprivs.liveness' not in modules



@needs_root
def test_confined_site_still_reaches_the_notify_socket_across_a_restart(site, receiver):
    """With confine on, READY=1 still arrives (an abstract socket is left out of
    Landlock's scoping, a path socket was connected before the drop), and again
    from the re-executed, still confined image."""
    proc = site(env=_env(receiver), wait=False, options={'confine': True},
                prefix=nobody_can_run())
    first = receiver.wait_field('READY')
    _from_site(first, proc.pid)
    assert proc.get('/probe?read=/etc/hostname').json()['read'] == {'/etc/hostname': 'EACCES'}
    n = len(receiver.messages)
    proc.get('/restart')
    again = receiver.wait_field('READY', start=n)
    _from_site(again, proc.pid)
    assert proc.get('/probe?read=/etc/hostname').json()['read'] == {'/etc/hostname': 'EACCES'}


@needs_root
def test_a_graceful_during_the_start_sends_nothing_before_the_drop(site, abstract_receiver):
    """SIGUSR1 (logrotate, ExecReload=) while the servers are bound and the
    process is still root: no RELOADING=1 or READY=1 from root; READY=1 only
    from the dropped process."""
    rx = abstract_receiver
    port = free_privileged_port()
    proc = site(ports=[port], env=_env(rx), wait=False, extra=['--slow-start', '1.5'])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # bound (75), still root in the slow listener
        with socket.socket() as s:
            if s.connect_ex(('127.0.0.1', port)) == 0:
                break
        time.sleep(0.05)
    assert any(line.split()[1] == '0' for line in open(f'/proc/{proc.pid}/status')
               if line.startswith('Uid:'))
    os.kill(proc.pid, signal.SIGUSR1)
    ready = rx.wait_field('READY')
    _from_site(ready, proc.pid)
    assert [m.uid for m in rx.messages if 'READY' in m.fields or 'RELOADING' in m.fields] == [NOBODY]


@needs_root
def test_a_forged_hand_over_at_a_root_start_is_ignored_and_closes_nothing(spawn, abstract_receiver):
    """Whoever starts the process as root controls its environment: a forged
    CHERRYPY_DROPPRIVS_NOTIFY naming the right pid and one of the application's
    own descriptors (a datagram socket connected to the named address) must
    neither be used nor closed."""
    rx = abstract_receiver
    own = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    own.connect('\0' + rx.address[1:])
    fd = own.fileno()
    inode = os.fstat(fd).st_ino
    port = free_privileged_port()
    # The shell knows the pid the site will have ($$, kept by exec).
    script = (f'CHERRYPY_DROPPRIVS_NOTIFY="{{\\"pid\\": $$, \\"socket\\": \\"{rx.address}\\", '
              f'\\"fd\\": {fd}}}" exec "$@"')
    proc = spawn(['sh', '-c', script, 'sh', sys.executable, str(SITE), '--port', str(port)],
                 ports=[port], pass_fds=[fd])
    try:
        proc.wait_http()
        assert proc.get('/whoami').json()['uids'] == [NOBODY] * 4
        time.sleep(0.5)
        assert rx.messages == [], [m.line() for m in rx.messages]
        assert os.readlink(f'/proc/{proc.pid}/fd/{fd}') == f'socket:[{inode}]'
    finally:
        own.close()
