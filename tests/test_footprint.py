"""What a start loads: only the common path (issue 12, memory on small boxes).

Code needed in one case only (a re-executed image, PID files, log files to
hand over, a terminal, caps or no_new_privs to set, threads to reach, a child
to name, confine, systemd) lives in modules loaded in that case. A real site
started as root and dropped to nobody reports which of this package's modules
its process holds; the kernel's view confirms the drop. benchmarks/memory.py
measures what the loaded code costs.
"""

from __future__ import annotations

import poller
from conftest import NOBODY, free_privileged_port, needs_root, nobody_can_run

pytestmark = needs_root

#: Modules a plain root start (no logs, PID file, terminal, confine or systemd) must not load.
CASE_ONLY = {
    'reexec', 'pidfile', 'handover', 'files', 'terminal', 'processes', 'older_threads', 'libc',
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
    assert 'reexec' in loaded(proc)
    assert not loaded(proc) & (CASE_ONLY - {'reexec'}), sorted(loaded(proc) & CASE_ONLY)
