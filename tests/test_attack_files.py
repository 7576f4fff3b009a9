"""Root never acts on a path the dropped user could have changed (issue 10, items 1-3, 12).

Each attack is played for real, as root, by the target user itself (``nobody``,
65534): it plants symlinks in a directory it owns, or races a directory swap
(``renameat2(RENAME_EXCHANGE)``) in a loop while the site starts. The site
then starts as root and must refuse before serving (exit 77, no HTTP answer)
with one CRITICAL line naming the path and the fix, and the root-only file the
attack aimed at must be unchanged (owner, content, mtime). Files live in fresh
directories under /tmp (root-owned 0755, so that nobody can reach them); the
host's user database is never changed. Every process is stopped by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import cherrypy
import pytest
import requests
from conftest import NOBODY, REPO, free_privileged_port, needs_root, nobody_can_run, stop_process, wait_for

from cherrypy_dropprivs import files
from cherrypy_dropprivs.files import UnsafePath
from cherrypy_dropprivs.identity import check_chown

AS_NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--']
CHERRYD = os.path.join(os.path.dirname(sys.executable), 'cherryd')


@pytest.fixture
def base():
    """A root-owned 0755 directory under /tmp (nobody can reach it), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix='dropprivs-attack-', dir='/tmp'))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pids():
    """Pids of processes that left the test's session (a daemon): stopped by pid."""
    seen: List[int] = []
    yield seen
    for pid in seen:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and os.path.exists(f'/proc/{pid}'):
                time.sleep(0.05)
            if not os.path.exists(f'/proc/{pid}'):
                break


def pids_running(text: str) -> List[int]:
    """Pids of processes whose command line contains ``text``."""
    out = []
    for p in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{p}/cmdline', 'rb') as f:
                if text.encode() in f.read():
                    out.append(int(p))
        except OSError:
            pass
    return out


def as_nobody(script: str) -> None:
    """Run a shell script as nobody (the attacker), bounded in time."""
    subprocess.run([*AS_NOBODY, 'sh', '-ec', script], check=True, timeout=10,
                   stdin=subprocess.DEVNULL, capture_output=True)


def root_only_file(base: Path, name: str = 'shadow') -> Path:
    """A file only root can read or write: in a root 0700 directory, mode 0600."""
    secret = base / f'secret-{name}'
    secret.mkdir(mode=0o700)
    f = secret / name
    f.write_text('root:$6$only-root-may-read-this:19000:0:99999:7:::\n')
    os.chmod(f, 0o600)
    os.utime(f, (1_000_000_000, 1_000_000_000))
    return f


def fingerprint(path: Path):
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime, path.read_bytes()


def user_dir(base: Path, name: str) -> Path:
    """A directory the target owns: the unsafe layout (e.g. /var/log/myapp owned by www-data)."""
    d = base / name
    d.mkdir(mode=0o755)
    os.chown(d, NOBODY, NOBODY)
    return d


def refused_before_serving(proc, timeout: float = 20) -> int:
    """Wait for the exit, asking for a page all along; no answer may come. The exit status."""
    answers = []
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        try:
            answers.append(proc.get('/whoami', timeout=0.3).status_code)
        except requests.RequestException:
            pass
    status = proc.wait_exit(timeout=5)
    assert not answers, (answers, proc.log())
    return status


def critical_line(log: str) -> str:
    lines = [line for line in log.splitlines() if 'dropprivs: FAILED:' in line]
    assert len(lines) == 1, log
    return lines[0]


# -- item 1: log files through planted symlinks ---------------------------------


@needs_root
def test_planted_log_symlinks_stop_the_start_before_root_opens_them(site, base):
    logs = user_dir(base, 'log')
    shadow = root_only_file(base)
    before = fingerprint(shadow)
    planted = base / 'planted-by-nobody'
    conf = base / 'site.conf'
    conf.write_text(f"[global]\nlog.error_file: '{logs / 'error.log'}'\n"
                    f"log.access_file: '{logs / 'access.log'}'\n")

    # Run 1, the unsafe layout itself: refused already (nobody owns the log directory).
    first = site(extra=['--config', str(conf)], wait=False)
    assert refused_before_serving(first) == 77
    assert f'log file {logs / "error.log"} is not safe for root to open' in critical_line(first.log())

    # The attacker: log files as an older start left them, then swapped for symlinks.
    as_nobody(f'cd {logs}; : > error.log; : > access.log; rm error.log access.log; '
              f'ln -s {shadow} error.log; ln -s {planted} access.log')
    assert os.lstat(logs / 'error.log').st_uid == NOBODY

    second = site(extra=['--config', str(conf)], wait=False)
    assert refused_before_serving(second) == 77
    line = critical_line(second.log())
    for name in ('error.log', 'access.log'):
        assert f'log file {logs / name} is not safe for root to open' in line, line
    assert f'directory {logs} (owner 65534' in line
    assert 'LogsDirectory=' in line and 'only root can write' in line
    assert 'exiting with status 77 before serving' in line
    assert fingerprint(shadow) == before  # never opened: no line appended, no chown
    assert not os.path.lexists(planted)  # root created nothing where nobody pointed


@needs_root
def test_a_second_name_for_a_handed_over_log_stops_the_next_start_with_its_own_fix(site, base):
    """Root's log directory, the log file handed to nobody by a first start.
    nobody gives its file a second name elsewhere (a hard link, which it may
    make for a file it owns): the next root start stops before serving (root
    would write to a file that also lives elsewhere), and the line says what
    to remove, not to move a directory that is sound."""
    logs = base / 'rootlog'
    logs.mkdir(mode=0o755)
    conf = base / 'site.conf'
    conf.write_text(f"[global]\nlog.error_file: '{logs / 'error.log'}'\n")
    first = site(extra=['--config', str(conf)])
    stop_process(first.popen)
    assert os.stat(logs / 'error.log').st_uid == NOBODY  # handed over (chown_logs)
    attacker = base / 'nobody-home'
    attacker.mkdir(mode=0o755)
    os.chown(attacker, NOBODY, NOBODY)
    as_nobody(f'ln {logs / "error.log"} {attacker / "second-name"}')

    second = site(extra=['--config', str(conf)], wait=False)
    assert refused_before_serving(second) == 77
    line = critical_line(second.log())
    assert f'log file {logs / "error.log"} is not safe for root to act on' in line, line
    assert 'has 2 hard links' in line and f'find / -xdev -samefile {logs / "error.log"}' in line
    assert 'LogsDirectory=' not in line, line  # the directory is root's: no advice to move it


def _self_signed(d: Path, name: str):
    cert, key = d / f'{name}.crt', d / f'{name}.key'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
                    '-nodes', '-keyout', str(key), '-out', str(cert), '-days', '2',
                    '-subj', f'/CN={name}'], check=True, capture_output=True, timeout=30)
    return cert, key


@needs_root
@pytest.mark.parametrize('planted', ['symlinks', 'fifo', 'dotdot'])
def test_tls_files_through_a_path_the_target_can_change_are_refused(site, base, planted):
    """CherryPy reads the certificate and key by name, as root, when the server
    starts. With them in a directory nobody owns, nobody points them at
    another site's key only root may read (root would load it into the
    process nobody then runs), or makes one a FIFO (root's start would hang).
    The arm listener refuses such a path before any server starts: exit 77,
    nothing served, the file named."""
    other = base / 'other-site'
    other.mkdir(mode=0o700)
    other_cert, other_key = _self_signed(other, 'other-root-only')
    os.chmod(other_key, 0o600)
    tls = user_dir(base, 'tls')
    cert, key = tls / 'site.crt', tls / 'site.key'
    if planted == 'symlinks':
        as_nobody(f'ln -s {other_cert} {cert}; ln -s {other_key} {key}')
    elif planted == 'fifo':
        as_nobody(f'mkfifo {cert}; mkfifo {key}')
    else:
        # A root directory with the site's own pair, where the path looks, as
        # text, to end: site/u/l/../../site.crt. The kernel follows nobody's
        # link l first, to other-site/a/b, and '..' twice from there.
        own = base / 'site'
        own.mkdir(mode=0o755)
        _self_signed(own, 'site')
        (other / 'a' / 'b').mkdir(parents=True)
        shutil.copy(other_cert, other / 'site.crt')
        shutil.copy(other_key, other / 'site.key')
        os.chmod(other / 'site.key', 0o600)
        u = user_dir(own, 'u')
        as_nobody(f'ln -s {other / "a" / "b"} {u / "l"}')
        cert, key = u / 'l' / '..' / '..' / 'site.crt', u / 'l' / '..' / '..' / 'site.key'
    proc = site(extra=['--ssl', str(cert), str(key)], wait=False)
    assert refused_before_serving(proc) == 77
    line = critical_line(proc.log())
    assert f'TLS certificate {cert}' in line and 'not safe for root to read' in line, line
    assert f'TLS private key {key}' in line, line
    if planted == 'dotdot':
        assert "'..' component" in line, line


@needs_root
def test_a_tls_file_with_a_second_name_in_a_root_directory_starts(site, base):
    """Another name for a file root only reads changes nothing it reads: a
    certificate with a backup hard link, in a root directory, starts."""
    own = base / 'tls-root'
    own.mkdir(mode=0o755)
    cert, key = _self_signed(own, 'site')
    os.link(cert, own / 'site-backup.crt')
    proc = site(extra=['--ssl', str(cert), str(key)], wait=False)
    proc.wait_log('Bus STARTED')
    assert proc.alive() and all(t.uids == (NOBODY,) * 4 for t in proc.threads())


UNIX_FORMS = r'''
import sys, cherrypy
from cherrypy_dropprivs import DropPrivileges
form, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
cherrypy.config.update({'log.screen': True, 'checker.on': False, 'engine.autoreload.on': False})
cherrypy.server.socket_host, cherrypy.server.socket_port = '127.0.0.1', port
class Root:
    @cherrypy.expose
    def index(self):
        return 'hello'
cherrypy.tree.mount(Root(), '/')
if form == 'adapter':  # a ready-made cheroot server: the adapter has no bind_addr of its own
    from cheroot import wsgi
    from cherrypy.process.servers import ServerAdapter
    ServerAdapter(cherrypy.engine, wsgi.Server(path, cherrypy.tree)).subscribe()
else:
    s = cherrypy._cpserver.Server()
    s.socket_file = path.encode() if form == 'bytes' else path
    s.subscribe()
DropPrivileges(cherrypy.engine, uid='nobody').subscribe()
cherrypy.engine.start()
cherrypy.engine.block()
'''


@needs_root
@pytest.mark.parametrize('form', ['dotdot', 'bytes', 'relative', 'adapter'])
def test_every_form_of_a_unix_socket_path_is_checked(spawn, base, form):
    """The same attack as below through each way a path reaches cheroot: with
    '..' after nobody's link, as bytes, relative to the start directory, and
    as a ready-made cheroot server's own address. Each is refused (exit 77);
    the root-only file stays."""
    victim = base / 'victim'
    (victim / 'a' / 'b').mkdir(parents=True)
    os.chmod(victim, 0o700)
    (victim / 'app.sock').write_text('root only\n')
    before = fingerprint(victim / 'app.sock')
    run = user_dir(base, 'run')
    if form == 'dotdot':
        as_nobody(f'ln -s {victim / "a" / "b"} {run / "l"}')
        path = f'{run}/l/../../app.sock'
    else:
        as_nobody(f'ln -s {victim} {run / "s"}')
        path = 'run/s/app.sock' if form == 'relative' else f'{run}/s/app.sock'
    port = free_privileged_port()
    proc = spawn([sys.executable, '-c', UNIX_FORMS, form, path, str(port)], ports=[port],
                 cwd=str(base))
    assert refused_before_serving(proc) == 77
    line = critical_line(proc.log())
    assert 'not safe for root to bind' in line, line
    assert fingerprint(victim / 'app.sock') == before


@needs_root
def test_a_unix_socket_path_the_target_can_change_is_refused(site, base):
    """cheroot removes whatever is at a UNIX socket's path and binds there, as
    root. With the socket's directory under one nobody owns, nobody swaps it
    for a link to a root-only directory: root would remove the file there and
    listen where no client can reach. Refused at the arm listener (exit 77);
    the file stays."""
    run = user_dir(base, 'run')
    victim = base / 'victim'
    victim.mkdir(mode=0o700)
    (victim / 'site.sock').write_text('root only\n')
    before = fingerprint(victim / 'site.sock')
    as_nobody(f'ln -s {victim} {run / "s"}')
    path = run / 's' / 'site.sock'
    proc = site(extra=['--unix', str(path)], wait=False)
    assert refused_before_serving(proc) == 77
    line = critical_line(proc.log())
    assert f'UNIX socket {path}' in line and 'not safe for root to bind' in line, line
    assert fingerprint(victim / 'site.sock') == before


@needs_root
def test_log_file_opened_elsewhere_is_compared_with_its_safe_path(base):
    """A FileHandler opened as root by name (not by the guard) through a link:
    the open stream is not what the path safely resolves to: refused."""
    from cherrypy_dropprivs import handover
    from cherrypy_dropprivs.identity import resolve_identity

    logs = user_dir(base, 'applog')
    shadow = root_only_file(base, 'secret')
    os.symlink(shadow, logs / 'app.log')
    os.lchown(logs / 'app.log', NOBODY, NOBODY)
    handler = __import__('logging').FileHandler(str(logs / 'app.log'))  # follows the link
    cherrypy.log.error_log.addHandler(handler)
    try:
        problems = handover.log_stream_problems(resolve_identity('nobody'))
    finally:
        cherrypy.log.error_log.removeHandler(handler)
        handler.close()
    assert len(problems) == 1 and f'log file {logs / "app.log"} is not safe' in problems[0]


@needs_root
@pytest.mark.parametrize('target', ['existing', 'missing', 'devnull'])
def test_daemonizer_output_through_a_planted_symlink_is_refused(site, base, target, pids, request):
    """CherryPy's Daemonizer opens its stdout/stderr file as root (umask 0): a
    symlink nobody planted in its own log directory would hand the dropped
    process a descriptor on a root-only file, or make root create a 0666
    file where nobody points. The arm listener opens it through the safe walk
    first: refused, exit 77, before anything is opened or created. A link to
    /dev/null too: nobody can turn it elsewhere between the check and
    CherryPy's open (a race a reviewer won in a few starts)."""
    logs = user_dir(base, 'daemonlog')
    shadow = root_only_file(base, 'daemon-secret')
    before = fingerprint(shadow)
    planted = {'existing': shadow, 'missing': shadow.parent / 'created-by-root',
               'devnull': Path(os.devnull)}[target]
    as_nobody(f'ln -s {planted} {logs / "out.log"}')
    # Had it daemonized after all, the daemon left the session: stopped by pid.
    request.addfinalizer(lambda: pids.extend(pids_running(str(logs))))
    proc = site(extra=['--daemonize', str(logs / 'out.log')], wait=False)
    assert refused_before_serving(proc) == 77
    line = critical_line(proc.log())
    assert f'Daemonizer stdout {logs / "out.log"}' in line, line
    assert fingerprint(shadow) == before
    assert target != 'missing' or not os.path.lexists(planted)


@needs_root
def test_a_lease_on_a_log_file_does_not_crash_the_next_start(site, base):
    """nobody owns its log file (handed over) and holds a lease on it, as a
    process left running from the compromised site can: root's open is made
    to wait for the lease to be broken (here the holder lets go at once, as
    the kernel forces after fs.lease-break-time), not to fail with a traceback."""
    logs = base / 'leaselog'
    logs.mkdir(mode=0o755)
    log = logs / 'error.log'
    log.touch()
    os.chown(log, NOBODY, NOBODY)
    conf = base / 'lease.conf'
    conf.write_text(f"[global]\nlog.error_file: '{log}'\n")
    holder = subprocess.Popen(
        [*AS_NOBODY, sys.executable, '-c', LEASE_HOLDER, str(log)],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == 'leased'
        proc = site(extra=['--config', str(conf)], wait=False)
        body = proc.wait_http(timeout=30).json()
        assert body['uids'] == [NOBODY] * 4
        assert 'Traceback' not in proc.log()
    finally:
        stop_process(holder)


#: Takes a read lease on a file (its own), gives it up when the kernel asks
#: (SIGIO), and takes it again as soon as it can, for at most 20 s.
LEASE_HOLDER = '''
import fcntl, os, signal, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
signal.signal(signal.SIGIO, lambda *a: fcntl.fcntl(fd, 1024, fcntl.F_UNLCK))
fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)
print('leased', flush=True)
end = time.monotonic() + 20
while time.monotonic() < end:
    try:
        fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)
    except OSError:
        pass
    time.sleep(0.01)
'''


# -- item 2: the PID file through a planted symlink -----------------------------


@needs_root
def test_pidfile_through_a_planted_symlink_is_refused(site, base):
    run = user_dir(base, 'run')
    shadow = root_only_file(base)
    before = fingerprint(shadow)
    as_nobody(f'ln -s {shadow} {run / "site.pid"}')
    proc = site(extra=['--pidfile', str(run / 'site.pid')], wait=False)
    assert refused_before_serving(proc) == 77
    line = critical_line(proc.log())
    assert f'PID file {run / "site.pid"} is not safe for root to write' in line, line
    assert 'only root can write' in line
    assert fingerprint(shadow) == before
    assert os.lstat(run / 'site.pid').st_uid == NOBODY  # the link is left as it was


# -- item 3: chown raced by a directory swap -------------------------------------

RACER = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
a, b, until = sys.argv[1].encode(), sys.argv[2].encode(), time.monotonic() + float(sys.argv[3])
AT_FDCWD, RENAME_EXCHANGE, n = -100, 2, 0
while time.monotonic() < until:
    if libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0:
        n += 1
print(n, flush=True)
'''


def _nobody_python() -> List[str]:
    system = '/usr/bin/python3'
    if os.path.exists(system):
        return [*AS_NOBODY, system]
    return [*nobody_can_run(), *AS_NOBODY, sys.executable]


@needs_root
def test_chown_through_a_directory_swapped_in_a_loop_never_hits_root_files(site, spawn, base):
    """nobody swaps u/a (its directory) and u/b (its symlink to a root-only
    directory) with renameat2(RENAME_EXCHANGE) while the site starts, chown=[u/a/sessions]."""
    u = user_dir(base, 'u')
    secret = base / 'root-only'
    secret.mkdir(mode=0o700)
    target = secret / 'sessions'
    target.write_text('root only\n')
    os.chmod(target, 0o600)
    before = fingerprint(target)
    as_nobody(f'mkdir {u / "a"} {u / "a" / "sessions"}; ln -s {secret} {u / "b"}')
    racer = spawn([*_nobody_python(), '-c', RACER, str(u / 'a'), str(u / 'b'), '6'])
    statuses = []
    for _ in range(3):
        proc = site(options={'chown': [str(u / 'a' / 'sessions')]}, wait=False)
        statuses.append(refused_before_serving(proc))
        assert fingerprint(target) == before
        assert f'chown path {u / "a" / "sessions"} is not safe for root' in critical_line(proc.log())
    assert racer.alive(), racer.log()  # the race ran during every start
    stop_process(racer.popen)
    assert statuses == [77, 77, 77]
    assert fingerprint(target) == before


@needs_root
def test_walker_refuses_a_user_directory_and_follows_only_roots_links(base):
    u = user_dir(base, 'u')
    (base / 'real').mkdir(mode=0o755)
    (base / 'real' / 'f').write_text('x')
    os.symlink(base / 'real', base / 'roots-link')  # root's link, as /var/run -> /run
    assert files.problem(str(base / 'roots-link' / 'f'), must_exist=True) is None
    with files.open_existing(str(base / 'roots-link' / 'f')) as opened:
        assert opened.real == str(base / 'real' / 'f')
    os.symlink(base / 'real', u / 'link')
    os.lchown(u / 'link', NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match='owned by uid 65534'):
        files.open_existing(str(u / 'link' / 'f'))
    theirs = base / 'theirs'
    theirs.symlink_to(base / 'real')
    os.lchown(theirs, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match='symlink not owned by root'):
        files.open_existing(str(theirs / 'f'))
    shared = base / 'shared'
    shared.mkdir()
    os.chmod(shared, 0o775)  # group-writable
    with pytest.raises(UnsafePath, match='writable by group 0'):
        files.resolve_parent(str(shared / 'x'))
    sticky = base / 'sticky'
    sticky.mkdir()
    os.chmod(sticky, 0o1777)  # like /tmp: a root entry is fine on the way, a user's is not
    (sticky / 'rootdir').mkdir(mode=0o755)
    files.resolve_parent(str(sticky / 'rootdir' / 'x')).close()
    (sticky / 'userdir').mkdir(mode=0o755)
    os.chown(sticky / 'userdir', NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match='sticky directory'):
        files.resolve_parent(str(sticky / 'userdir' / 'x'))
    with pytest.raises(UnsafePath, match='sticky'):  # the entry itself in a sticky directory
        files.resolve_parent(str(sticky / 'x'))


# -- item 12: cherryd -d writes a PID file any user could rewrite ----------------


@needs_root
@pytest.mark.parametrize('restart', [False, True], ids=['start', 'sighup-restart'])
def test_cherryd_daemonized_pidfile_is_root_0644(spawn, base, pids, restart):
    """cherryd -d -p: the Daemonizer sets umask 0, yet the PID file is root's,
    0644. A SIGHUP restart re-executes the daemon as nobody, which cannot
    rewrite that file: the new image does not fork again, so the pid (and
    the PID file) stay right, and it serves on, dropped."""
    assert os.path.exists(CHERRYD), CHERRYD
    port = free_privileged_port()
    pidfile = base / 'site.pid'
    conf = base / 'site.conf'
    conf.write_text('\n'.join([
        '[global]', "server.socket_host: '127.0.0.1'", f'server.socket_port: {port}',
        'server.thread_pool: 4', 'engine.autoreload.on: False', 'checker.on: False',
        'engine.dropprivs.on: True', "engine.dropprivs.uid: 'nobody'"]) + '\n')
    conf.chmod(0o644)  # a restart re-reads it as nobody
    launcher = spawn([*nobody_can_run(str(base)), sys.executable, CHERRYD, '-d', '-p', str(pidfile),
                      '-P', str(REPO / 'tests' / 'sites'), '-i', 'cherrypy_dropprivs',
                      '-i', 'cherryd_site', '-c', str(conf)], ports=[port])
    launcher.wait_exit(timeout=20)  # the Daemonizer's first parent leaves at once
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20,
                       what='the daemon writes its PID file'))
    pids.append(pid)
    body = wait_for(lambda: _answer(port), 20, what='the daemon answers')
    assert body['pid'] == pid and body['uids'] == [NOBODY] * 4
    st = os.stat(pidfile)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644), oct(st.st_mode)
    if not restart:
        return
    boot = requests.get(f'http://127.0.0.1:{port}/boot', timeout=2).json()['boot']
    os.kill(pid, signal.SIGHUP)

    def new_image():
        try:
            b = requests.get(f'http://127.0.0.1:{port}/boot', timeout=1).json()
        except (requests.RequestException, ValueError):
            return None
        return b if b['boot'] != boot and b['started'] else None
    back = wait_for(new_image, 20, what='the re-executed daemon answers')
    assert back['pid'] == pid and back['uids'] == [NOBODY] * 4, back
    assert pidfile.read_text().strip() == str(pid)
    assert os.stat(pidfile).st_uid == 0


def _answer(port: int):
    try:
        r = requests.get(f'http://127.0.0.1:{port}/whoami', timeout=1)
    except requests.RequestException:
        return None
    return json.loads(r.text) if r.status_code == 200 else None


# -- item 10's part: system directories as chown paths ---------------------------


@pytest.mark.parametrize('path', ['/', '/etc', '/etc/', '//etc', '/var/log', '/usr/lib/x', '/tmp'])
def test_chown_of_a_system_directory_is_refused_when_set(path):
    with pytest.raises(ValueError, match='is (a|under the) system directory') as e:
        check_chown([path])
    assert 'Accepted:' in str(e.value) and '/var/lib/mysite/sessions' in str(e.value)
    assert check_chown(['/var/lib/mysite/sessions']) == ['/var/lib/mysite/sessions']


def test_chown_of_a_system_directory_is_refused_by_the_plugin_and_the_check(spawn):
    from cherrypy.process.wspbus import Bus

    from cherrypy_dropprivs import DropPrivileges

    for path in ('/', '/etc'):
        with pytest.raises(ValueError, match=f'chown: {path} is a system directory'):
            DropPrivileges(Bus(), 'nobody', chown=[path])
    proc = spawn([sys.executable, '-m', 'cherrypy_dropprivs', 'check', '--uid', 'nobody',
                  '--chown', '/etc'])
    assert proc.wait_exit(30) == 2
    assert 'chown: /etc is a system directory' in proc.log()
