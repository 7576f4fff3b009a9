"""What a start loads: only the common path (issue 12, memory on small boxes).

Code needed in one case only (a re-executed image, PID files, log files to
hand over, a terminal, caps or no_new_privs to set, threads to reach, a child
to name, confine, systemd) lives in modules loaded in that case. A real site
started as root and dropped to nobody reports which of this package's modules
its process holds; the kernel's view confirms the drop. benchmarks/memory.py
measures what the loaded code costs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import cherrypy
import poller
from conftest import (
    NOBODY,
    REPO,
    SITE,
    free_privileged_port,
    needs_root,
    nobody_can_run,
)

pytestmark = needs_root

#: Modules a plain root start (no logs, PID file, terminal, confine or systemd) must not load.
CASE_ONLY = {
    'reexec', 'pidfile', 'handover', 'files', 'terminal', 'processes', 'older_threads', 'libc',
    'lookups',
    'confine', 'landlock', 'notify', 'readiness', 'liveness',
}


def loaded(proc) -> set:
    names = proc.get('/modules').json()
    return {n.split('.', 1)[1] for n in names if '.' in n}


def test_plain_root_start_loads_only_the_common_path(site):
    proc = site(prefix=nobody_can_run())
    assert all(t.uids == (NOBODY,) * 4 for t in proc.threads())
    assert not loaded(proc) & CASE_ONLY, sorted(loaded(proc) & CASE_ONLY)


def test_the_re_executed_image_loads_what_adopting_needs(site):
    port = free_privileged_port()
    proc = site(ports=[port], prefix=nobody_can_run(), wait=False)
    conn = poller.tcp('127.0.0.1', port)
    boot = poller.wait_started(conn, alive=proc.alive)['boot']
    poller.request(conn, '/restart')
    poller.wait_started(conn, not_boot=boot, timeout=15, alive=proc.alive)
    assert all(t.uids == (NOBODY,) * 4 for t in proc.threads())
    assert {'reexec', 'libc'} <= loaded(proc)  # adopting, and making itself non-dumpable
    assert not loaded(proc) & (CASE_ONLY - {'reexec', 'libc'}), sorted(loaded(proc) & CASE_ONLY)


def _private_copy(spawn, tmp_path, options: dict, *extra: str):
    """The site run from a copy of the package in a directory only root can read.
    ``-S`` and an explicit path keep any other copy (an editable install) out of reach."""
    private = tmp_path / 'private'
    private.mkdir(mode=0o700)
    shutil.copytree(REPO / 'cherrypy_dropprivs', private / 'cherrypy_dropprivs',
                    ignore=shutil.ignore_patterns('__pycache__'))
    packages = os.path.dirname(os.path.dirname(cherrypy.__file__))
    port = free_privileged_port()
    proc = spawn([*nobody_can_run(), sys.executable, '-S', str(SITE), '--port', str(port),
                  '--options', json.dumps(options), *extra],
                 env={'PYTHONPATH': os.pathsep.join([str(private), packages])}, ports=[port])
    return proc, private


def test_modules_loaded_after_the_drop_from_a_package_the_target_cannot_read(spawn, tmp_path):
    """The package in a directory only root can read: what the start loads
    after the drop (here: naming a thread that lacks no_new_privs) was
    loaded before it, so the start fails closed with its own message, not an
    ImportError."""
    proc, private = _private_copy(spawn, tmp_path, {'no_new_privs': True}, '--early-thread', 'early-bird')
    assert proc.wait_exit(20) == 77
    log = proc.log()
    assert f'{private}/cherrypy_dropprivs' in log, log  # the copy ran (the site prints its path)
    assert "'early-bird'" in log and 'NoNewPrivs 0' in log and 'ImportError' not in log, log


def test_a_package_the_target_cannot_read_is_named_at_start_and_at_the_restart(spawn, tmp_path):
    """It serves (read as root), warns at start that a restart would fail, and
    the restart ends with that one clear line (exit 77), not an ImportError in
    the new image."""
    proc, private = _private_copy(spawn, tmp_path, {})
    proc.wait_http()
    assert proc.threads()[0].uids == (NOBODY,) * 4
    warning = f'the package cherrypy_dropprivs in {private}/cherrypy_dropprivs is not readable'
    proc.wait_log(warning)
    proc.get('/restart')
    assert proc.wait_exit(20) == 77
    log = proc.log()
    assert 'cannot re-execute the process as' in log and log.count(warning) == 2, log
    assert 'exiting with status 77 instead of restarting' in log, log
    assert 'Error' not in log.split('cannot re-execute')[1], log


def test_a_package_the_target_cannot_read_serves_non_dumpable_with_suid_dumpable_1(
        spawn, tmp_path, suid_dumpable_1):
    """fs.suid_dumpable=1 leaves the dropped process dumpable, and making it
    non-dumpable needs libc.py after the drop: from a package only root can
    read, it was loaded before. The site serves as nobody, and the kernel's
    view says nobody else of that user can reach into it. Without Yama such a
    start stops before the drop (test_attack_process): a fake tells the site
    ptrace_scope is 1 (--pretend-yama), since this kernel has no Yama."""
    proc, private = _private_copy(spawn, tmp_path, {}, '--pretend-yama', '1')
    proc.wait_http()
    suid_dumpable_1()  # back to the machine's value once the drop is done
    assert all(t.uids == (NOBODY,) * 4 for t in proc.threads())
    assert os.stat(f'/proc/{proc.pid}/status').st_uid == 0, 'dumpable'
    assert f'{private}/cherrypy_dropprivs' in proc.log()  # the copy ran
    assert 'libc' in loaded(proc)
