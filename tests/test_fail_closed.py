"""Fail closed: a real kernel refusal ends the process at once, before any later listener.

The faults are real: setpriv removes CAP_SETUID (or CAP_SETGID) from the
bounding and inheritable sets, so the root process's setresuid (or
setgroups) fails with EPERM in the kernel. Nothing is faked.
"""

from __future__ import annotations

import sys
import time

import pytest
from conftest import SITE, free_privileged_port, needs_root
from dropcheck import only_line


@needs_root
@pytest.mark.parametrize('cap, step', [
    ('setuid', r'setresuid\(65534\)'),
    ('setgid', r'setgroups\(\[65534\]\)'),
], ids=['no-setuid', 'no-setgid'])
def test_kernel_refusal_exits_nonzero_before_later_listeners(spawn, tmp_path, cap, step):
    port = free_privileged_port()
    record = tmp_path / 'listener-ran'
    started = time.monotonic()
    proc = spawn(['setpriv', f'--bounding-set=-{cap}', f'--inh-caps=-{cap}', sys.executable, str(SITE),
                  '--port', str(port), '--record-listener', str(record), '--log-levels'], ports=[port])
    status = proc.wait_exit(timeout=10)
    elapsed = time.monotonic() - started
    log = proc.log()
    assert status == 77, log
    assert elapsed < 5, elapsed
    only_line(log, r'^CRITICAL\|.*dropprivs: FAILED: ' + step
              + r': the kernel refused \(PermissionError: \[Errno 1\] Operation not permitted\); '
              r'exiting with status 77 before serving$')
    assert not record.exists(), 'a start listener at priority 90 ran after the failed drop'
    assert 'Bus STARTED' not in log


@needs_root
def test_drop_before_servers_bind_fails_closed(spawn, tmp_path):
    """A drop that would run before a server has bound (priority 74 < 75) refuses to run."""
    port = free_privileged_port()
    record = tmp_path / 'listener-ran'
    proc = spawn([sys.executable, str(SITE), '--port', str(port), '--options', '{"priority": 74}',
                  '--record-listener', str(record)], ports=[port])
    status = proc.wait_exit(timeout=10)
    log = proc.log()
    assert status == 77, log
    only_line(log, r'dropprivs: FAILED: servers: not bound when the drop ran \(priority 74\): .*'
              + str(port))
    assert 'Serving on' not in log
    assert not record.exists()


LATE_SERVER = r'''
import sys, cherrypy, cherrypy_dropprivs
from cherrypy._cpserver import Server
first, late = int(sys.argv[1]), int(sys.argv[2])
cherrypy.config.update({'engine.autoreload.on': False, 'checker.on': False})
cherrypy.server.socket_host, cherrypy.server.socket_port = '127.0.0.1', first
s2 = Server()
s2.socket_host, s2.socket_port = '127.0.0.1', late
cherrypy.engine.subscribe('start', s2.start, priority=80)  # starts after the drop (77)
cherrypy_dropprivs.DropPrivileges(cherrypy.engine).subscribe()
cherrypy.tree.mount(None, '/')
cherrypy.engine.start()
cherrypy.engine.block()
'''


@needs_root
def test_server_starting_after_the_drop_fails_closed(spawn):
    """A subscribed server whose start listener comes after the drop would bind as nobody
    (and fail on a privileged port) while the others serve: the drop refuses instead."""
    first, late = free_privileged_port(), free_privileged_port()
    proc = spawn([sys.executable, '-c', LATE_SERVER, str(first), str(late)], ports=[first, late])
    status = proc.wait_exit(timeout=10)
    log = proc.log()
    assert status == 77, log
    only_line(log, r'dropprivs: FAILED: servers: not bound when the drop ran \(priority 77\): '
              rf'.*{late}.*every server must start before the drop')
    assert 'Bus STARTED' not in log
