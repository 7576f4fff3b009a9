"""Users and groups are looked up from a short-lived child: the site maps no NSS module.

glibc loads one module per nsswitch.conf source (here ``files systemd``:
libnss_systemd, with libcap and libm) into the process that asks, for good.
The dropped site must not carry them (nor a connection to sssd or LDAP) for
a lookup made once at start. Where fork is not safe (other threads) or fails,
the lookup runs in the process itself, with the same answer.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import needs_root
from dropcheck import every_thread, user_groups
from namespaces import in_namespace, user_db

REPO = Path(__file__).resolve().parent.parent


def _children(pid: int):
    out = []
    for p in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{p}/stat', 'rb') as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rindex(b')') + 2:].split()[1]) == pid:
            out.append(int(p))
    return out


def _nss_modules(pid: int):
    with open(f'/proc/{pid}/maps') as f:
        return sorted({line.split()[-1] for line in f if '/libnss_' in line})


@needs_root
def test_the_dropped_site_maps_no_name_service_module_and_leaves_no_child(site, tmp_path):
    """A made-up user with supplementary groups (private mount namespace): the
    groups come out right, and neither the NSS modules nor the lookup's child remain.

    On this machine nsswitch.conf lists ``systemd`` for passwd and group, so a
    lookup made in the site would map libnss_systemd.so.2 into it.
    """
    files = user_db(tmp_path / 'db', ['ns-user:x:4242:4242::/nonexistent:/usr/sbin/nologin'],
                    ['ns-user:x:4242:', 'ns-extra:x:4243:ns-user'])
    proc = site(prefix=in_namespace([], files=files), options={'uid': 'ns-user'})
    every_thread(proc.pid, 4242, 4242, [4242, 4243])
    assert _nss_modules(proc.pid) == []
    assert _children(proc.pid) == []


def _lookup_script(threads: bool) -> str:
    return f'''
import json, os, threading
import cherrypy_dropprivs.nameservice as ns
from cherrypy_dropprivs.identity import resolve_identity
forks = []
real_fork = os.fork
def counting_fork():  # a spy, not a fake: the real fork runs
    forks.append(1)
    return real_fork()
os.fork = counting_fork
stop = threading.Event()
if {threads!r}:
    threading.Thread(target=stop.wait, daemon=True).start()
ident = resolve_identity('nobody')
stop.set()
ns.reap()
print(json.dumps({{'groups': list(ident.groups), 'uid': ident.uid, 'home': ident.home,
                  'forks': len(forks)}}))
'''


def _run(argv, timeout=20):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_process_with_other_threads_looks_up_in_itself_with_the_same_answer():
    nobody = pwd.getpwnam('nobody')
    alone = _run([sys.executable, '-c', _lookup_script(threads=False)])
    threaded = _run([sys.executable, '-c', _lookup_script(threads=True)])
    assert alone['forks'] == 1 and threaded['forks'] == 0  # fork only while single-threaded
    for answer in (alone, threaded):
        assert answer['uid'] == nobody.pw_uid and answer['home'] == nobody.pw_dir
        assert sorted(answer['groups']) == user_groups('nobody')


@needs_root
def test_a_fork_that_fails_falls_back_to_a_lookup_in_the_process():
    """RLIMIT_NPROC 1 for a non-root user makes fork fail with EAGAIN, for real."""
    argv = in_namespace(['prlimit', '--nproc=1', '--', sys.executable, '-c',
                         _lookup_script(threads=False)], run_as=65534)
    answer = _run(argv)
    assert answer['forks'] == 1  # tried, refused by the kernel
    assert answer['uid'] == 65534 and sorted(answer['groups']) == user_groups('nobody')


@needs_root
def test_the_lookup_child_runs_none_of_the_sites_signal_handlers(spawn, tmp_path):
    """The child is a copy of the site, as root: a SIGTERM sent to it while the
    name service is slow (for real: a FIFO bind-mounted over /etc/passwd in a
    private mount namespace) must not stop a root copy of the bus. The site
    then starts normally once the name service answers."""
    import threading

    from conftest import SITE, free_privileged_port

    fifo = tmp_path / 'passwd.fifo'
    os.mkfifo(fifo)
    port = free_privileged_port()
    inner = [sys.executable, str(SITE), '--port', str(port)]
    proc = spawn(['unshare', '-m', '--propagation', 'private', 'sh', '-c',
                  f'mount --bind {fifo} /etc/passwd && exec "$@"', 'sh', *inner], ports=[port])
    deadline = time.monotonic() + 10
    kids = []
    while not kids and time.monotonic() < deadline:
        time.sleep(0.05)
        kids = _children(proc.pid)
    assert kids, proc.log()
    os.kill(kids[0], signal.SIGTERM)
    time.sleep(0.3)
    assert os.path.exists(f'/proc/{kids[0]}')  # blocked, not handled: still waiting

    stop = threading.Event()

    def serve_passwd():  # each reader that opens the FIFO gets the real file
        content = Path('/etc/passwd').read_bytes()
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.01)
                continue
            try:
                os.set_blocking(fd, True)
                os.write(fd, content)
            except OSError:
                pass
            finally:
                os.close(fd)
            time.sleep(0.05)  # the reader sees the end before the next writer comes

    writer = threading.Thread(target=serve_passwd, daemon=True)
    writer.start()
    try:
        proc.wait_http()
        log = proc.log()
        assert 'Caught signal SIGTERM' not in log and 'Bus STOPPING' not in log, log
        every_thread(proc.pid, 65534, 65534, user_groups('nobody'))
    finally:
        stop.set()
        writer.join(5)



# -- restarts: the re-executed image takes the old image's answers -----------


def _restart(proc, port: int) -> dict:
    import poller

    connect = poller.tcp('127.0.0.1', port)
    boot = poller.wait_started(connect, alive=proc.alive)['boot']
    poller.request(connect, '/restart')
    return poller.wait_started(connect, not_boot=boot, timeout=15, alive=proc.alive)


@needs_root
def test_a_restart_asks_the_name_service_nothing_and_comes_back_as_the_same_user(site, tmp_path):
    """After the drop the user is taken out of the user database (the files
    bind-mounted over /etc/passwd and /etc/group in the site's private mount
    namespace are rewritten in place). engine.restart() still comes back as
    that user, with its groups: the re-executed image used what the old one
    looked up, and forked no lookup of its own (which would now fail)."""
    from conftest import nobody_can_run

    files = user_db(tmp_path / 'db', ['ns-user:x:4242:4242::/nonexistent:/usr/sbin/nologin'],
                    ['ns-user:x:4242:', 'ns-extra:x:4243:ns-user'])
    prefix = in_namespace(nobody_can_run(uid=4242, gids=(4242, 4243)), files=files)
    proc = site(prefix=prefix, options={'uid': 'ns-user'})
    every_thread(proc.pid, 4242, 4242, [4242, 4243])
    for name in ('passwd', 'group'):  # same inode: the bind mount shows the new content
        Path(files[f'/etc/{name}']).write_text(Path(f'/etc/{name}').read_text())
    after = _restart(proc, proc.port)
    assert after['pid'] == proc.pid and after['uids'] == [4242] * 4, after
    every_thread(proc.pid, 4242, 4242, [4242, 4243])
    assert _children(proc.pid) == []
    assert proc.get('/child_env').json() == {}


@needs_root
def test_forged_answers_at_a_root_start_are_ignored_and_no_child_sees_them(site):
    """An attacker who is the target user may plant the hand-over variables in
    the environment of the next root start, claiming that nobody is uid 12345
    with group 0. The root start looks up for itself: every thread ends as the
    real nobody, before and after a restart, and no child of the site ever
    sees the variables."""
    import marshal

    from conftest import nobody_can_run

    from cherrypy_dropprivs import nameservice

    handed_env = 'CHERRYPY_DROPPRIVS_NAMES'
    shown = (tuple(os.getresuid()), tuple(os.getresgid()), tuple(os.getgroups()))
    lookup = nameservice.key_of('lookup_identity')
    forged = {
        lookup + ('nobody', None, None, shown): (
            (12345, 0, (0,), 'nobody', 'root', '/root', '/bin/sh'),
            {('u', 12345): 'nobody', ('u', 0): 'root', ('g', 0): 'root'}),
        nameservice.key_of('lookup_uid') + ('nobody',): (12345, ('nobody', 12345, 0, '/root', '/bin/sh')),
    }
    script = (f'export {handed_env}="$$:{marshal.dumps(forged).hex()}" '
              f'CHERRYPY_DROPPRIVS_SOCKETS="{{\\"pid\\": $$, \\"sockets\\": {{}}}}"; exec "$@"')
    proc = site(prefix=['sh', '-c', script, 'sh', *nobody_can_run()])
    nobody = pwd.getpwnam('nobody')
    groups = user_groups('nobody')
    with open(f'/proc/{proc.pid}/environ', 'rb') as f:
        assert handed_env.encode() in f.read()  # it was there, for real
    every_thread(proc.pid, nobody.pw_uid, nobody.pw_gid, groups)
    assert proc.get('/child_env').json() == {}
    after = _restart(proc, proc.port)
    assert after['pid'] == proc.pid and after['uids'] == [nobody.pw_uid] * 4, after
    every_thread(proc.pid, nobody.pw_uid, nobody.pw_gid, groups)
    assert proc.get('/child_env').json() == {}
