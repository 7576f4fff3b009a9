"""Not started as root: no identity change and one WARNING; require_root makes it fatal.

The site runs as nobody (setpriv, no groups, no capabilities) on an
unprivileged port. The interpreter lives under a 0700 directory here, so the
run happens in a private mount namespace that exposes it (tests/namespaces.py);
the host's files are untouched.
"""

from __future__ import annotations

import sys

import pytest
from conftest import SITE, free_port, needs_root
from dropcheck import dropprivs_lines, only_line
from namespaces import in_namespace


def _as_nobody(spawn, options: str, groups=()):
    port = free_port()
    argv = [sys.executable, str(SITE), '--port', str(port), '--options', options, '--log-levels']
    return spawn(in_namespace(argv, run_as=65534, run_groups=groups), ports=[port])


@needs_root  # root is needed to become nobody; the site itself never has root
@pytest.mark.parametrize('groups, message', [
    ((), 'no identity change, running as uid=65534(nobody)'),
    ((65534,), 'no identity change, already running as the target uid=65534(nobody)'),
], ids=['not-the-target', 'exactly-the-target'])
def test_not_root_changes_nothing_and_warns_once(spawn, groups, message):
    """Started as nobody (not the target's groups, or exactly the target): one WARNING, no change."""
    proc = _as_nobody(spawn, '{"uid": "nobody"}', groups)
    served = proc.wait_http().json()
    assert served['uids'] == [65534] * 4 and served['gids'] == [65534] * 4
    assert served['groups'] == list(groups)
    for t in proc.threads():
        assert t.uids == (65534,) * 4 and t.gids == (65534,) * 4 and t.groups == groups, t
        assert (t.cap_prm, t.cap_eff, t.cap_amb) == (0, 0, 0), t
    # With nothing to drop the servers are not held: they may answer before the
    # plugin's start listener has logged, as in plain CherryPy.
    log = proc.wait_log('Bus STARTED', timeout=10)
    warnings = [ln for ln in log.splitlines() if ln.startswith('WARNING|')]
    assert len(warnings) == 1, log
    assert f'dropprivs: not started as root: {message}' in warnings[0]
    assert not any(ln.startswith(('ERROR|', 'CRITICAL|')) for ln in log.splitlines()), log
    assert not any('dropping privileges' in ln for ln in dropprivs_lines(log)), log


@needs_root
def test_require_root_refuses_to_serve(spawn):
    proc = _as_nobody(spawn, '{"require_root": true}')
    status = proc.wait_exit(timeout=10)
    log = proc.log()
    assert status == 77, log
    only_line(log, r'^CRITICAL\|.*dropprivs: FAILED: require_root: not started as root \(uid=65534\)')
    assert 'Serving on' not in log and 'Bus STARTED' not in log, log
