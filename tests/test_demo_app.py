"""demo_app: ``python -m demo_app`` drops root for real and shows the kernel's view.

As root the demo runs on a free privileged port and must end up as nobody on
every thread, as /proc/<pid>/task/*/status says (its own page is only checked
to agree). As nobody (setpriv) it serves on an unprivileged port and says why
nothing was dropped.
"""

from __future__ import annotations

import pwd
import sys

from conftest import REPO, free_port, free_privileged_port, needs_root, nobody_can_run

sys.path.insert(0, str(REPO))
from demo_app.__main__ import ROOT_PORT, USER_PORT, default_port, parse_args  # noqa: E402
from demo_app.identity_page import render  # noqa: E402
from demo_app.kernel_identity import StartInfo, collect, outcome  # noqa: E402

NOBODY = 65534
DEMO = [sys.executable, '-m', 'demo_app']
SETPRIV_NOBODY = ['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups']


def _start(start_uid: int = 0, port: int = 80) -> StartInfo:
    return StartInfo((start_uid,) * 3, (start_uid,) * 3, (), '127.0.0.1', port, 'test', None)


def test_default_port_is_80_for_root_and_8080_otherwise():
    """The choice itself, without binding 8080 (it may be in use on the host)."""
    assert (ROOT_PORT, USER_PORT) == (80, 8080)
    assert default_port(0) == 80
    assert default_port(NOBODY) == 8080
    assert default_port(1000) == 8080
    args = parse_args([])
    assert args.port is None and args.host is None and args.user is None and args.config is None


def test_outcome_explains_why_nothing_was_dropped():
    assert outcome(_start(0), (NOBODY,) * 4) == ('dropped', None)
    status, why = outcome(_start(0), (NOBODY, NOBODY, 0, NOBODY))
    assert status == 'root' and 'NOT dropped' in why
    status, why = outcome(_start(NOBODY, 8080), (NOBODY,) * 4)
    assert status == 'not-root'
    assert 'not as root' in why and 'uid 65534 (nobody)' in why and '8080' in why


def test_page_renders_and_escapes():
    data = collect(_start(0))
    data['environment']['HOME'] = '<script>'
    page = render(data)
    assert page.startswith('<!DOCTYPE html>') and '/identity.json' in page
    assert '&lt;script&gt;' in page and '<script>' not in page


def _assert_nobody_everywhere(proc, umask: int) -> dict:
    """The page's JSON and the kernel's per-thread view both say nobody."""
    body = proc.wait_http('/identity.json').json()
    assert body['status'] == 'dropped', body
    assert body['uid'] == dict.fromkeys(('real', 'effective', 'saved', 'fs'), NOBODY)
    assert body['gid'] == dict.fromkeys(('real', 'effective', 'saved', 'fs'), NOBODY)
    assert [g['id'] for g in body['groups']] == [NOBODY]
    assert body['environment']['HOME'] == pwd.getpwuid(NOBODY).pw_dir
    assert body['threads']['all_identical'], body['threads']
    threads = proc.threads()
    assert len(threads) >= 5
    for t in threads:
        assert t.uids == (NOBODY,) * 4 and t.gids == (NOBODY,) * 4 and t.groups == (NOBODY,), t
        assert (t.cap_prm, t.cap_eff, t.cap_amb) == (0, 0, 0), t
        assert t.umask == umask, t
    return body


@needs_root
def test_root_demo_drops_to_nobody_on_every_thread(spawn):
    port = free_privileged_port()
    proc = spawn([*DEMO, '--port', str(port)], ports=[port])
    body = _assert_nobody_everywhere(proc, umask=0o077)
    assert body['started_as']['uid'] == [0, 0, 0]
    assert body['plugin']['activated_by'] == 'demo_app (command line)'
    page = proc.get('/')
    assert page.status_code == 200 and 'Root dropped.' in page.text
    assert '65534(nobody)' in page.text


@needs_root
def test_config_file_activates_the_drop(spawn):
    """demo.conf sets engine.dropprivs.on/uid/umask: its umask 0o027 shows it was applied."""
    port = free_privileged_port()
    proc = spawn([*DEMO, '--port', str(port), '--config', 'demo_app/demo.conf'], ports=[port])
    body = _assert_nobody_everywhere(proc, umask=0o027)
    assert body['umask'] == '0027'
    assert body['plugin']['activated_by'] == 'config file demo_app/demo.conf (engine.dropprivs.on)'


@needs_root  # root is needed to become nobody; the demo itself never has root
def test_not_root_serves_on_given_port_and_says_why(spawn):
    port = free_port()
    proc = spawn([*nobody_can_run(), *SETPRIV_NOBODY, *DEMO, '--port', str(port)], ports=[port])
    body = proc.wait_http('/identity.json').json()
    assert body['status'] == 'not-root' and body['listening']['port'] == port
    assert 'started as uid 65534 (nobody), not as root' in body['why_not_dropped']
    for t in proc.threads():
        assert t.uids == (NOBODY,) * 4 and t.gids == (NOBODY,) * 4 and t.groups == (), t
    assert 'Nothing was dropped' in proc.get('/').text
    assert 'not started as root: no identity change' in proc.wait_log('not started as root', timeout=10)


@needs_root
def test_bad_configuration_exits_78_before_binding(spawn):
    port = free_privileged_port()
    for extra in (['--config', 'no/such.conf'], ['--user', 'no-such-user-dropprivs']):
        proc = spawn([*DEMO, '--port', str(port), *extra])
        assert proc.wait_exit(timeout=10) == 78, proc.log()
        assert 'bad configuration' in proc.log() and 'Serving on' not in proc.log()
