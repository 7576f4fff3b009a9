"""Operating a dropped server: log files, PID files, capabilities, no_new_privs, dumpable.

Real processes on free privileged ports; assertions on files' owners as the
kernel reports them (stat), on /proc/<pid>/task/*/status for every thread,
and on real requests with bounded timeouts. Log lines are asserted only as
messages, never as proof.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import needs_root, nobody_can_run, wait_for

NOBODY = 65534
CAP_START = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups',
             '--inh-caps=+net_bind_service', '--ambient-caps=+net_bind_service']


@pytest.fixture
def open_dir():
    """A root-owned 0755 directory whose parents nobody can search (tmp_path's cannot)."""
    d = Path(tempfile.mkdtemp(prefix='dropprivs-op-', dir='/tmp'))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _log_config(d: Path, **extra) -> Path:
    conf = d / 'site.conf'
    lines = ['[global]', f"log.error_file: '{d / 'error.log'}'", f"log.access_file: '{d / 'access.log'}'"]
    lines += [f'{k}: {v!r}' for k, v in extra.items()]
    conf.write_text('\n'.join(lines) + '\n')
    return conf


@needs_root
def test_graceful_reopens_logs_after_drop_and_pidfile_warning(site, open_dir):
    """Logs opened as root in a root-owned dir are handed over; after /graceful both grow."""
    conf = _log_config(open_dir)
    for name in ('error.log', 'access.log'):
        (open_dir / name).touch(mode=0o640)
        os.chmod(open_dir / name, 0o640)
    pid_path = open_dir / 'site.pid'
    proc = site(extra=['--config', str(conf), '--pidfile', str(pid_path)])
    for name in ('error.log', 'access.log'):
        st = os.stat(open_dir / name)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), name
        assert stat.S_IMODE(st.st_mode) == 0o640, name
    # the root-owned directory: the PID file cannot be removed; said at start, with the fix
    log = proc.wait_log(f'PID file {pid_path} cannot be removed by nobody at exit')
    assert f'ExecStopPost=-/bin/rm -f {pid_path}' in log and 'RuntimeDirectory=' not in log
    st = os.stat(pid_path)  # root's, never handed over: root's tools trust what it says
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)

    proc.get('/note?text=before', timeout=3)
    sizes = [os.path.getsize(open_dir / n) for n in ('error.log', 'access.log')]
    assert proc.get('/graceful', timeout=3).status_code == 200
    wait_for(lambda: 'Bus graceful' in (open_dir / 'error.log').read_text(), 5, what='graceful')
    assert proc.get('/note?text=after', timeout=3).text == 'noted'
    assert proc.get('/whoami', timeout=3).json()['uids'] == [NOBODY] * 4
    assert 'site note: after' in (open_dir / 'error.log').read_text()
    wait_for(lambda: '/note?text=after' in (open_dir / 'access.log').read_text(), 3, what='access log')
    assert [os.path.getsize(open_dir / n) for n in ('error.log', 'access.log')] > sizes

    os.kill(proc.pid, signal.SIGTERM)
    proc.wait_exit(10)
    assert 'a stale PID file is left behind' in proc.log()


@needs_root
def test_no_handover_warns_and_graceful_does_not_hang(site, open_dir):
    """chown_logs=False: warned at start; the failed reopen neither hangs nor loses the log."""
    sessions = open_dir / 'sessions'
    sessions.mkdir(mode=0o700)
    conf = _log_config(open_dir, **{'tools.sessions.storage_path': str(sessions)})
    proc = site(options={'chown_logs': False}, extra=['--config', str(conf)])
    err = open_dir / 'error.log'
    assert os.stat(err).st_uid == 0
    proc.wait_log(f'log file {err} cannot be reopened by nobody after the drop')
    proc.wait_log(f'session storage path {sessions} (tools.sessions.storage_path) is not '
                  f'writable by nobody')
    assert proc.get('/graceful', timeout=3).status_code == 200
    wait_for(lambda: 'Bus graceful' in proc.log(), 5, what='graceful')
    # CherryPy's own reopen would leave the handler's lock held: this request would hang
    assert proc.get('/note?text=after', timeout=3).text == 'noted'
    proc.wait_log(f'could not reopen log file {err}', timeout=5)
    assert 'site note: after' in err.read_text()


@needs_root
def test_pidfile_in_root_owned_dir_stays_root_and_chown_path_is_handed_over(site, open_dir):
    """A PID file root writes stays root's (0644; a directory the user could write is
    refused: see test_attack_files.py); a chown= path is handed over, mode kept."""
    run_dir = open_dir / 'run'
    run_dir.mkdir(mode=0o755)
    pid_path = run_dir / 'site.pid'
    uploads = open_dir / 'uploads'
    uploads.mkdir(mode=0o750)
    proc = site(extra=['--pidfile', str(pid_path)], options={'chown': [str(uploads)]})
    assert int(pid_path.read_text()) == proc.pid
    st = os.stat(pid_path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)
    st = os.stat(uploads)  # the chown= option: owner and group, mode kept
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o750)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait_exit(10) == 0
    assert 'a stale PID file is left behind' in proc.log()


def _assert_every_thread(proc, no_new_privs: bool, uid: int = NOBODY, at_least: int = 7):
    threads = proc.threads()
    assert len(threads) >= at_least  # main, Autoreloader, HTTPServer, 4 workers
    for t in threads:
        assert t.uids == (uid,) * 4, t
        assert t.cap_prm == t.cap_eff == t.cap_amb == 0, t
        assert t.no_new_privs == no_new_privs, t


@needs_root
def test_nonroot_start_with_ambient_caps_holds_none_on_any_thread(site):
    """systemd's User= + AmbientCapabilities= (via setpriv): binds a privileged port, then no
    thread (Autoreloader's included) keeps a capability, and no_new_privs is on every thread."""
    proc = site(prefix=nobody_can_run() + CAP_START, extra=['--autoreload'],
                options={'no_new_privs': True})
    body = proc.get('/whoami', timeout=3).json()
    assert proc.port < 1024 and body['cap_eff'] == '0' * 16
    _assert_every_thread(proc, no_new_privs=True)
    assert 'in 1 thread(s) started before the drop' in proc.log()
    assert proc.alive()


@needs_root
def test_thread_started_before_the_drop_fails_closed_by_name(site):
    """A plain thread made while the process held capabilities cannot be cleared: exit 77."""
    proc = site(prefix=nobody_can_run() + CAP_START, extra=['--early-thread', 'early-bird'],
                wait=False)
    assert proc.wait_exit(20) == 77
    log = proc.log()
    assert "'early-bird'" in log and 'CapPrm' in log and 'start it after the drop' in log


@needs_root
def test_no_new_privs_and_dumpable_after_drop_from_root(site, spawn):
    """As root, with the Autoreloader on: NoNewPrivs on every thread; dumpable is 0.

    Dumpable is read from the kernel's side: for a non-dumpable process the
    kernel makes /proc/<pid>/status owned by root (proc(5), task_dump_owner),
    whereas a dumpable process running as nobody owns its own (the contrast).
    """
    proc = site(prefix=nobody_can_run(), extra=['--autoreload'], options={'no_new_privs': True})
    _assert_every_thread(proc, no_new_privs=True)
    st = os.stat(f'/proc/{proc.pid}/status')
    assert st.st_uid == 0 and proc.threads()[0].uids[0] == NOBODY
    dumpable = spawn(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'sleep', '30'])
    wait_for(lambda: os.stat(f'/proc/{dumpable.pid}/status').st_uid == NOBODY, 5, what='contrast')


# -- the check command ---------------------------------------------------------


def _check(spawn, *args, prefix=()):
    proc = spawn([*prefix, sys.executable, '-m', 'cherrypy_dropprivs', 'check', *args])
    return proc.wait_exit(30), proc.log()


def test_check_good_plan_exits_0_and_prints_the_plan(spawn, open_dir):
    conf = _log_config(open_dir, **{'engine.dropprivs.on': True, 'engine.dropprivs.uid': 'nobody',
                                    'engine.dropprivs.umask': 0o027, 'environment': 'production'})
    rc, out = _check(spawn, str(conf))
    assert rc == 0, out
    assert 'to:   uid=65534(nobody) gid=65534(nogroup)' in out
    assert 'umask: 0027' in out and 'HOME=' in out and 'all sound' in out


def test_check_bad_plan_names_each_problem(spawn, open_dir):
    key = open_dir / 'key.pem'
    key.touch(mode=0o600)
    sessions = open_dir / 'sessions'
    sessions.mkdir(mode=0o700)
    conf = _log_config(open_dir, **{'engine.dropprivs.chown_logs': False,
                                    'server.ssl_private_key': str(key),
                                    'engine.autoreload.on': False})
    with open(conf, 'a') as f:
        f.write(f"[/]\ntools.sessions.on: True\ntools.sessions.storage_path: '{sessions}'\n")
    rc, out = _check(spawn, str(conf), '--uid', 'nobody', '--pidfile', '/run/site.pid',
                     '--chown', str(open_dir / 'missing'))
    assert rc == 1, out
    problems = [line for line in out.splitlines() if line.startswith('PROBLEM: ')]
    for needle in (f'log file {open_dir / "error.log"} cannot be reopened by nobody',
                   f'session storage path {sessions}', f'TLS private key {key}',
                   f'chown path {open_dir / "missing"}'):
        assert any(needle in p for p in problems), (needle, out)
    assert len(problems) == 5, out  # the access log too
    # root writes it in a root-only directory: safe, but left behind after a stop
    assert 'ok: PID file /run/site.pid would be written by root, mode 0644; nobody cannot ' \
           'remove it at exit' in out


@needs_root
def test_check_names_a_tls_file_root_would_refuse_to_read(spawn, open_dir):
    """The check says what the start would refuse (exit 77 there): a key
    reached through a link the target planted in its own directory."""
    secret = open_dir / 'secret'
    secret.mkdir(mode=0o700)
    (secret / 'other.key').touch(mode=0o600)
    tls = open_dir / 'tls'
    tls.mkdir(mode=0o755)
    os.chown(tls, NOBODY, NOBODY)
    os.symlink(secret / 'other.key', tls / 'site.key')
    os.lchown(tls / 'site.key', NOBODY, NOBODY)
    conf = _log_config(open_dir, **{'server.ssl_private_key': str(tls / 'site.key'),
                                    'engine.autoreload.on': False})
    rc, out = _check(spawn, str(conf), '--uid', 'nobody')
    assert rc == 1, out
    assert any(line.startswith('PROBLEM: TLS private key ') and 'not safe for root to read' in line
               for line in out.splitlines()), out


def test_check_bad_identity_exits_2(spawn):
    rc, out = _check(spawn, '--uid', 'no-such-user-dropprivs')
    assert rc == 2 and "unknown user 'no-such-user-dropprivs'" in out


@pytest.mark.parametrize('argv, status', [(['--help'], 0), (['-h'], 0), ([], 2), (['chek'], 2)])
def test_top_level_help_exits_0_anything_else_2(spawn, argv, status):
    """--help prints the full help (the check's options and exit codes) and exits 0;
    no command or an unknown one is bad input (2), with the usage."""
    proc = spawn([sys.executable, '-m', 'cherrypy_dropprivs', *argv])
    rc, out = proc.wait_exit(30), proc.log()
    assert rc == status, out
    assert 'usage: python -m cherrypy_dropprivs check' in out
    if status == 0:
        assert '--confine' in out and '--pidfile PATH' in out and '0 all sound' in out, out


@needs_root
def test_check_works_without_root(spawn, open_dir):
    """Run as nobody: reports what a start as root would do, and what nobody could not do."""
    watched = open_dir / 'closed'
    watched.mkdir(mode=0o700)
    (watched / 'conf.py').touch()
    conf = open_dir / 'w.conf'
    conf.write_text(f"[global]\nengine.autoreload.files: set(['{watched / 'conf.py'}'])\n")
    prefix = nobody_can_run() + ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
    rc, out = _check(spawn, str(conf), '--uid', 'nobody', prefix=prefix)
    assert rc == 1, out
    assert 'from: uid=0(root) when started as root; this process is uid=65534(nobody)' in out
    assert 'the Autoreloader watches' in out and f'directory {watched}' in out


@pytest.mark.parametrize('text, message', [
    ('engine.dropprivs.uid: "nobody"\n', 'no section header before the first setting'),
    ('[global]\na: 1\n[global]\nb: 2\n', 'section [global] appears more than once'),
    ('[global]\nengine.dropprivs.uid: nobody\n', 'Config values must be valid Python'),
    ('[global]\nengine.dropprivs.chown: "/var/lib/site"\n', 'chown must be a list of paths'),
    ('[global]\nengine.dropprivs.umaks: 0o027\n', 'unknown option engine.dropprivs.umaks; the options are'),
], ids=['no-section', 'duplicate-section', 'not-a-literal', 'string-chown', 'misspelt-key'])
def test_check_malformed_file_exits_2_with_a_message(spawn, tmp_path, text, message):
    """Every malformed file or value: exit 2 and one line, never a traceback."""
    conf = tmp_path / 'bad.conf'
    conf.write_text(text)
    rc, out = _check(spawn, str(conf))
    assert rc == 2, out
    assert 'error: ' in out and message in out, out
    assert 'Traceback' not in out, out


@needs_root
def test_check_as_root_refuses_a_config_others_could_have_changed(spawn, tmp_path):
    """CherryPy runs the Python in a config file: as root, check never reads one
    in a directory another user can write (the attacker's own edit), nor a FIFO
    (which would block it), nor a name so long the name service aborts."""
    writable = tmp_path / 'writable'
    writable.mkdir()
    writable.chmod(0o777)
    marker = tmp_path / 'EXECUTED'
    planted = writable / 'site.conf'
    planted.write_text(f'[global]\nengine.dropprivs.uid: __import__("os").system("touch {marker}")\n')
    rc, out = _check(spawn, str(planted))
    assert rc == 2 and 'refusing to read it as root' in out and 'is writable by' in out, out
    assert not marker.exists(), 'the planted config ran as root'

    fifo = tmp_path / 'fifo.conf'
    os.mkfifo(fifo)
    rc, out = _check(spawn, str(fifo))
    assert rc == 2 and 'refusing to read it as root' in out, out

    huge = tmp_path / 'huge.conf'
    huge.write_text(f"[global]\nengine.dropprivs.uid: '{'u' * 100_000}'\n")
    rc, out = _check(spawn, str(huge))
    assert rc == 2 and 'characters long; names are at most 256' in out, out
    assert len(out) < 2000 and 'Traceback' not in out, out[:500]
