"""``confine``: Landlock after the drop (issue 14).

Real sites (tests/sites/site.py) started as root on a free privileged port,
dropped to nobody and confined. Every denial and every allowance is asked of
the kernel from inside the site: ``/probe`` opens, writes, binds and connects
in the worker thread that serves it and reports the errno it got. Several
probes run at once (each holds its worker for a moment), so several workers
answer, each with its own thread id, checked against /proc/<pid>/task. The
control is the same site with ``confine`` off: there every probe succeeds,
so the denials come from Landlock and not from file modes.

Only one thing is faked, and it says so: a kernel without Landlock
(tests/sites/no_landlock.py makes the syscall fail with ENOSYS), which this
machine cannot provide for real.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import poller
import pytest
import requests
from conftest import (
    NOBODY,
    REPO,
    SITE,
    free_port,
    free_privileged_port,
    needs_root,
    nobody_can_run,
    wait_for,
)

pytestmark = needs_root

NO_LANDLOCK = Path(__file__).resolve().parent / 'sites' / 'no_landlock.py'


@pytest.fixture
def world(request):
    """A directory tree every user can traverse (pytest's tmp_path is root's, mode 700):

    outside/secret.txt   world-readable, outside every rule
    outside/drop/        world-writable, outside every rule
    readable/page.txt    in confine_read
    writable/            in confine_write, nobody's
    static/hello.txt     a staticdir
    sessions/            session storage (handed over by the chown option)
    logs/                error and access logs
    """
    top = Path(tempfile.mkdtemp(prefix='dropprivs-confine-', dir='/tmp'))
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    os.chmod(top, 0o755)
    for d in ('outside', 'outside/drop', 'readable', 'writable', 'static', 'sessions', 'logs'):
        (top / d).mkdir()
        os.chmod(top / d, 0o755)
    os.chmod(top / 'outside' / 'drop', 0o777)
    os.chown(top / 'writable', NOBODY, NOBODY)
    (top / 'outside' / 'secret.txt').write_text('secret\n')
    (top / 'readable' / 'page.txt').write_text('page\n')
    (top / 'static' / 'hello.txt').write_text('hello static\n')
    for f in ('outside/secret.txt', 'readable/page.txt', 'static/hello.txt'):
        os.chmod(top / f, 0o644)
    return top


@pytest.fixture
def listeners():
    """Two TCP listeners on 127.0.0.1: (allowed port, other port); closed afterwards."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        s.listen(64)
        socks.append(s)
    yield tuple(s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()


def probe_params(world: Path, ports) -> dict:
    return {
        'read': [str(world / 'outside' / 'secret.txt'), '/etc/hostname',
                 str(world / 'readable' / 'page.txt'), str(SITE)],
        'write': [str(world / 'outside' / 'drop' / 'x.txt'), str(world / 'writable' / 'y.txt')],
        'bind': str(free_port()),
        'connect': [str(ports[0]), str(ports[1])],
    }


def concurrent_probes(proc, params: dict, n: int = 8) -> list:
    """``n`` probes at once, each holding its worker 0.3 s: several workers answer."""
    def one(_):
        r = proc.get('/probe', params=dict(params, delay='0.3'), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def confined_options(world: Path, ports, **extra) -> dict:
    return dict({'confine': True, 'confine_read': [str(world / 'readable')],
                 'confine_write': [str(world / 'writable')], 'confine_connect': [ports[0]]}, **extra)


def assert_confined_answers(proc, answers, world: Path, ports) -> None:
    tids = {a['tid'] for a in answers}
    assert len(tids) >= 3, f'probes should land on several workers: {tids}'
    assert tids <= {t.tid for t in proc.threads()}, 'every answering thread is one of the site'
    for a in answers:
        assert a['read'] == {
            str(world / 'outside' / 'secret.txt'): 'EACCES',   # world-readable, outside the rules
            '/etc/hostname': 'EACCES',
            str(world / 'readable' / 'page.txt'): 'ok',         # confine_read
            str(SITE): 'ok',                                    # the application's own directory
        }, a
        assert a['write'] == {str(world / 'outside' / 'drop' / 'x.txt'): 'EACCES',  # mode 777 dir
                              str(world / 'writable' / 'y.txt'): 'ok'}, a           # confine_write
        assert set(a['bind'].values()) == {'EACCES'}, a          # port 0 and a free port
        assert a['connect'] == {str(ports[0]): 'ok', str(ports[1]): 'EACCES'}, a


def test_confined_site_denies_outside_the_rules_on_every_worker(site, world, listeners):
    proc = site(options=confined_options(world, listeners))
    answers = concurrent_probes(proc, probe_params(world, listeners))
    assert_confined_answers(proc, answers, world, listeners)
    for t in proc.threads():  # confine implies no_new_privs, on every thread
        assert t.no_new_privs and t.uids == (NOBODY,) * 4, t
    assert not (world / 'outside' / 'drop' / 'x.txt').exists()
    assert 'confined (Landlock ABI' in proc.log()


def test_confine_off_changes_nothing(site, world, listeners):
    """The control: the same probes, confine off: every one succeeds (so the
    denials above are Landlock's, not the file modes')."""
    proc = site(options={})
    for a in concurrent_probes(proc, probe_params(world, listeners), n=4):
        assert set(a['read'].values()) == {'ok'}, a
        assert set(a['write'].values()) == {'ok'}, a
        assert set(a['connect'].values()) == {'ok'}, a
        assert a['bind']['0'] == 'ok', a
    assert 'dropprivs: confine' not in proc.log() and 'dropprivs: confined' not in proc.log()
    assert not any(t.no_new_privs for t in proc.threads())


def test_twenty_restarts_stay_confined_without_stacking(site, world, listeners):
    """engine.restart() 20 times: each re-executed process inherits the domain
    and adds no layer (Landlock allows 16: stacking would fail by the 16th),
    the interpreter and script stay executable, and it keeps serving, confined."""
    port = free_privileged_port()
    proc = site(ports=[port], options=confined_options(world, listeners),
                prefix=nobody_can_run(str(world)), wait=False)
    connect = poller.tcp('127.0.0.1', port)
    boot = poller.wait_started(connect, alive=proc.alive)['boot']
    for _ in range(20):
        poller.request(connect, '/restart')
        boot = poller.wait_started(connect, not_boot=boot, timeout=15, alive=proc.alive)['boot']
    assert proc.alive()
    assert proc.log().count('already confined (the Landlock domain is inherited') == 20
    answers = concurrent_probes(proc, probe_params(world, listeners))
    assert_confined_answers(proc, answers, world, listeners)


def test_static_files_sessions_and_logs_keep_working(site, world, tmp_path):
    app_conf = tmp_path / 'app.conf'
    app_conf.write_text(
        "[/]\n"
        "tools.sessions.on: True\n"
        "tools.sessions.storage_class: cherrypy.lib.sessions.FileSession\n"
        f"tools.sessions.storage_path: {str(world / 'sessions')!r}\n"
        "[/static]\n"
        "tools.staticdir.on: True\n"
        f"tools.staticdir.dir: {str(world / 'static')!r}\n")
    conf = tmp_path / 'global.conf'
    conf.write_text("[global]\n"
                    f"log.error_file: {str(world / 'logs' / 'error.log')!r}\n"
                    f"log.access_file: {str(world / 'logs' / 'access.log')!r}\n")
    proc = site(options={'confine': True, 'chown': [str(world / 'sessions')]},
                extra=['--app-config', str(app_conf), '--config', str(conf)])
    r = proc.get('/static/hello.txt')
    assert r.status_code == 200 and r.text == 'hello static\n'
    with requests.Session() as s:
        url = f'http://127.0.0.1:{proc.port}/counter'
        assert [s.get(url, timeout=5).text for _ in range(3)] == ['1', '2', '3']
    assert any(f.name.startswith('session-') for f in (world / 'sessions').iterdir())
    assert proc.get('/note', params={'text': 'confined-note'}).text == 'noted'
    proc.get('/whoami')
    assert 'confined-note' in (world / 'logs' / 'error.log').read_text()
    assert '/static/hello.txt' in (world / 'logs' / 'access.log').read_text()
    # Outside the rules, the same handler is still denied.
    answers = concurrent_probes(proc, {'read': str(world / 'outside' / 'secret.txt')}, n=2)
    assert {a['read'][str(world / 'outside' / 'secret.txt')] for a in answers} == {'EACCES'}


def test_missing_confine_path_is_a_clear_error_before_binding(site, world):
    proc = site(options={'confine': True, 'confine_read': [str(world / 'nope')]}, wait=False)
    assert proc.wait_exit(10) == 78
    assert f'confine_read: {world / "nope"} does not exist' in proc.log()


def test_missing_configured_path_exits_78_before_binding(site, world, tmp_path):
    app_conf = tmp_path / 'app.conf'
    app_conf.write_text("[/static]\ntools.staticdir.on: True\n"
                        f"tools.staticdir.dir: {str(world / 'gone')!r}\n")
    proc = site(options={'confine': True}, extra=['--app-config', str(app_conf)], wait=False)
    assert proc.wait_exit(10) == 78
    log = proc.log()
    assert f'{world / "gone"} (tools.staticdir.dir) does not exist' in log
    assert 'Serving on' not in log  # failed at the arm, before anything was bound


def test_thread_out_of_reach_fails_closed(site):
    """A plain thread started before engine.start() cannot confine itself: exit 77, named."""
    proc = site(options={'confine': True}, extra=['--early-thread', 'stray-thread'], wait=False)
    assert proc.wait_exit(15) == 77
    assert 'stray-thread' in proc.log()


@pytest.mark.parametrize('confine', [True, 'require'])
def test_kernel_without_landlock(site, confine):
    """FAKED: tests/sites/no_landlock.py makes the Landlock syscall fail with
    ENOSYS (this kernel has Landlock; no other way to take it away)."""
    proc = site(options={'confine': confine}, prefix=[sys.executable, str(NO_LANDLOCK)],
                wait=confine is True)
    if confine is True:
        assert 'WARNING: confine: the kernel has no Landlock' in proc.log()
        assert 'nothing is confined' in proc.log()
        assert proc.get('/whoami').json()['uids'] == [NOBODY] * 4
    else:
        assert proc.wait_exit(10) == 77
        assert "confine='require'" in proc.log() and 'ENOSYS' in proc.log()
        assert 'Serving on' not in proc.log()


def test_bad_confine_values_are_refused():
    import cherrypy

    from cherrypy_dropprivs import DropPrivileges
    for kwargs, text in (({'confine': 'yes'}, "confine must be False, True or 'require'"),
                         ({'confine_connect': [0]}, 'not a TCP port'),
                         ({'confine_read': '/srv'}, 'must be a list of paths'),
                         ({'confine_write': ['/']}, 'the root directory')):
        with pytest.raises((ValueError, TypeError), match=text):
            DropPrivileges(cherrypy.engine, **kwargs)


def test_check_prints_the_rules(world, tmp_path):
    conf = tmp_path / 'site.conf'
    conf.write_text("[global]\nengine.autoreload.on: False\nengine.dropprivs.on: True\n"
                    "engine.dropprivs.confine: True\n"
                    f"engine.dropprivs.confine_read: [{str(world / 'readable')!r}]\n"
                    "engine.dropprivs.confine_connect: [5432]\n"
                    "[/static]\ntools.staticdir.on: True\n"
                    f"tools.staticdir.dir: {str(world / 'static')!r}\n")
    out = subprocess.run([sys.executable, '-m', 'cherrypy_dropprivs', 'check', str(conf)],
                         capture_output=True, text=True, timeout=30, cwd=str(REPO))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f'read       {world / "static"}  (tools.staticdir.dir)' in out.stdout
    assert f'read+exec  {world / "readable"}  (confine_read)' in out.stdout
    assert 'connect only to TCP ports: 5432' in out.stdout
    assert 'read+write /dev/null' in out.stdout


def test_check_confine_with_log_files_not_created_yet(world, tmp_path):
    """A fresh install: the log files do not exist yet. The start creates them
    as root when the config is applied, before the rules are built, so the
    check rules them as the start will (exit 0); it also grants the config
    file (a restart reads it again). A log directory that is missing stays a
    problem (exit 1)."""
    logs = world / 'logs'
    conf = tmp_path / 'site.conf'
    conf.write_text("[global]\nengine.autoreload.on: False\nengine.dropprivs.on: True\n"
                    "engine.dropprivs.uid: 'nobody'\n"
                    f"log.error_file: {str(logs / 'error.log')!r}\n"
                    f"log.access_file: {str(logs / 'access.log')!r}\n")
    cmd = [sys.executable, '-m', 'cherrypy_dropprivs', 'check', '--confine', str(conf)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=str(REPO))
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ('error.log', 'access.log'):
        assert f'read+write {logs / name}  (log file (created by root at start))' in out.stdout
        assert not (logs / name).exists()  # the check creates nothing
    assert f'read       {conf}  (config file (read again by a restart))' in out.stdout
    shutil.rmtree(logs)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=str(REPO))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f'PROBLEM: log file {logs / "error.log"}: directory {logs} does not exist' in out.stdout


def test_demo_shows_confinement(spawn):
    port = free_privileged_port()
    proc = spawn([sys.executable, '-m', 'demo_app', '--port', str(port), '--confine'], ports=[port])
    proc.wait_http('/identity.json')
    d = proc.get('/identity.json').json()['confinement']
    assert d['confined'] is True, d
    assert d['probes']['read /etc/hostname'].startswith('denied'), d
    assert d['probes']['read this demo\'s own code'] == 'allowed', d
    page = proc.get('/').text
    assert 'Confined.' in page and '/etc/hostname' in page


def test_stop_then_start_in_the_same_process_stays_confined(site, world, listeners):
    """engine.stop() then engine.start(): new server and worker threads, created by
    the confined main thread, are confined and probed again; ports are not re-bound."""
    proc = site(options=confined_options(world, listeners), extra=['--stop-start'])
    # The first start answers too, before the stop: wait for the second one.
    wait_for(lambda: proc.log().count('dropprivs: confined (') == 2 and 'Bus STARTED' in
             proc.log().split('Bus STOPPED')[-1], 20, what='the second start, confined')
    assert_confined_answers(proc, concurrent_probes(proc, probe_params(world, listeners)),
                            world, listeners)


def test_a_forged_marker_under_a_loose_domain_does_not_skip_confinement(site, world, listeners):
    """Whoever starts the process as root controls its environment and wrapper:
    a foreign domain that hides only ``/`` (so a probe of ``/`` says confined)
    plus CHERRYPY_DROPPRIVS_CONFINED=<pid> must not make the start skip its own
    rules (tests/sites/loose_domain.py is that wrapper)."""
    wrapper = [sys.executable, str(REPO / 'tests' / 'sites' / 'loose_domain.py')]
    proc = site(options=confined_options(world, listeners), prefix=wrapper)
    answers = concurrent_probes(proc, probe_params(world, listeners))
    assert_confined_answers(proc, answers, world, listeners)
    assert 'already confined' not in proc.log()


def test_a_link_the_target_planted_does_not_widen_the_next_start(site, world):
    """The site's own directory (``writable/``) is nobody's. Between two starts
    nobody, for real, swaps ``writable/sessions`` for a link to a directory
    outside the rules: the next root start refuses (78) before binding,
    naming the link, instead of granting what it points at."""
    sessions = world / 'writable' / 'sessions'
    as_nobody = ['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups', '--']
    subprocess.run([*as_nobody, 'mkdir', str(sessions)], check=True, timeout=10)
    first = site(options={'confine': True, 'confine_write': [str(sessions)]})
    assert first.get('/probe', params={'read': str(world / 'outside' / 'secret.txt')}).json()['read'] \
        == {str(world / 'outside' / 'secret.txt'): 'EACCES'}
    first.popen.terminate()
    first.wait_exit(10)

    subprocess.run([*as_nobody, 'sh', '-c', f'mv {sessions} {sessions}.old && '
                    f'ln -s {world / "outside"} {sessions}'], check=True, timeout=10)
    second = site(options={'confine': True, 'confine_write': [str(sessions)]}, wait=False)
    assert second.wait_exit(10) == 78
    log = second.log()
    assert f'is reached through the symbolic link {sessions} -> {world / "outside"}' in log, log
    assert 'Serving on' not in log


CHERRYD = os.path.join(os.path.dirname(sys.executable), 'cherryd')


def _config_file(world: Path, *lines: str) -> Path:
    """A config file that switches the drop and confine on, world-readable (so
    only Landlock, not its mode, could keep the re-executed nobody from it)."""
    (world / 'etc').mkdir(mode=0o755)
    conf = world / 'etc' / 'site.conf'
    conf.write_text('\n'.join(['[global]', 'engine.autoreload.on: False', 'checker.on: False',
                               'engine.dropprivs.on: True', "engine.dropprivs.uid: 'nobody'",
                               'engine.dropprivs.confine: True', *lines]) + '\n')
    os.chmod(conf, 0o644)
    return conf


def _restart_twice(proc, port: int, conf: Path, world: Path) -> None:
    connect = poller.tcp('127.0.0.1', port)
    boot = poller.wait_started(connect, alive=proc.alive)['boot']
    for _ in range(2):
        poller.request(connect, '/restart')
        boot = poller.wait_started(connect, not_boot=boot, timeout=15, alive=proc.alive)['boot']
    log = proc.log()
    assert proc.alive() and 'PermissionError' not in log, log
    assert log.count('already confined (the Landlock domain is inherited') == 2, log
    # Still confined, and the config file is granted for reading only.
    secret, drop = str(world / 'outside' / 'secret.txt'), str(conf)
    a = proc.get('/probe', params={'read': [secret, drop], 'write': drop}, port=port).json()
    assert a['read'] == {secret: 'EACCES', drop: 'ok'} and a['write'] == {drop: 'EACCES'}, a


def test_confined_by_config_file_survives_restart(site, world):
    """site.py applies the file with cherrypy.config.update(path); the file
    itself switches confine on. The re-executed process reads it again, as
    nobody, confined by the rules of the first start: they must grant it."""
    port = free_privileged_port()
    conf = _config_file(world)
    proc = site(ports=[port], extra=['--plugin', 'config', '--config', str(conf)],
                prefix=nobody_can_run(str(world)), wait=False)
    _restart_twice(proc, port, conf, world)


def test_confined_cherryd_with_relative_config_survives_restart(spawn, world):
    """cherryd -c ../etc/site.conf, from another directory (cherryd grants its
    working directory, on sys.path, anyway): cherryd applies each -c file with
    cherrypy.config.update; the restart re-runs it."""
    assert os.path.exists(CHERRYD), CHERRYD
    port = free_privileged_port()
    conf = _config_file(world, "server.socket_host: '127.0.0.1'", f'server.socket_port: {port}',
                        'server.thread_pool: 4')
    (world / 'app').mkdir(mode=0o755)
    proc = spawn([*nobody_can_run(str(world)), sys.executable, CHERRYD,
                  '-P', str(REPO / 'tests' / 'sites'), '-i', 'cherrypy_dropprivs',
                  '-i', 'cherryd_site', '-c', '../etc/site.conf'], cwd=str(world / 'app'),
                 ports=[port])
    _restart_twice(proc, port, conf, world)


def test_confined_workers_survive_cheroot_statistics(site, world, listeners, tmp_path):
    """With ``server.statistics`` on, a cheroot worker adds up each job's byte
    counts: the probe jobs run in the workers before the gate opens must not
    kill them (a fatal AttributeError stopped the server before)."""
    conf = tmp_path / 'stats.conf'
    conf.write_text('[global]\nserver.statistics: True\n')
    proc = site(options=confined_options(world, listeners), extra=['--config', str(conf)])
    answers = concurrent_probes(proc, probe_params(world, listeners))
    assert_confined_answers(proc, answers, world, listeners)
    assert 'fatal exception' not in proc.log()
