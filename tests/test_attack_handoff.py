"""The restart hand-over cannot be forged (issue 10, item 6).

CHERRYPY_DROPPRIVS_SOCKETS tells a re-executed process which inherited
descriptors are its listening sockets. The environment is whoever started the
process: tests/sites/forge_handoff.py plays a forger that binds a socket,
describes it with its own pid (execv keeps the pid, as an exec wrapper's
would) and execs the site, as root or as nobody. Assertions are on real
answers, the exit status and the kernel's socket table.
"""

from __future__ import annotations

import socket
import sys

import pytest
from conftest import HERE, NOBODY, free_port, free_privileged_port, needs_root, nobody_can_run

pytestmark = needs_root

FORGE = str(HERE / 'sites' / 'forge_handoff.py')


def _answers(port: int) -> bool:
    """Whether an HTTP request on ``port`` gets any answer within a second."""
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=1) as s:
            s.sendall(b'GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
            return bool(s.recv(1))
    except OSError:
        return False


def test_root_start_never_adopts_a_forged_socket(spawn):
    """A root start whose environment describes a socket on another port (on
    0.0.0.0) as the configured server's binds its own: the configured port
    serves, dropped, and the forged socket serves nothing."""
    port, other = free_privileged_port(), free_privileged_port()
    while other == port:
        other = free_privileged_port()
    proc = spawn([sys.executable, FORGE, '--bind', '0.0.0.0', str(other), '--key', '127.0.0.1', str(port),
                  '--', '--port', str(port)], ports=[port])
    body = proc.wait_http().json()
    assert body['pid'] == proc.pid and body['uids'] == [NOBODY] * 4
    assert not _answers(other), 'the forged socket was adopted and served'


def test_reexec_refuses_a_socket_on_another_address(spawn):
    """Not root, the hand-over names a socket bound elsewhere than the
    configured server: exit 77 before serving, naming the descriptor."""
    port, other = free_port(), free_port()
    proc = spawn([*nobody_can_run(), sys.executable, FORGE, '--bind', '127.0.0.1', str(other),
                  '--key', '127.0.0.1', str(port), '--as-nobody', '--', '--port', str(port)], ports=[port])
    status = proc.wait_exit(timeout=15)
    log = proc.log()
    assert status == 77, log
    assert 'refusing the listening sockets handed over in CHERRYPY_DROPPRIVS_SOCKETS' in log, log
    assert f'its socket is bound to port {other}, not {port}' in log, log
    assert 'Serving on' not in log and not _answers(other)


def test_require_root_is_not_skipped_by_a_forged_handoff(spawn):
    """Not root, require_root set, and a forged hand-over of a socket that does
    match the configured (unprivileged) address: nothing proves a root start
    (no privileged port), so require_root still refuses: exit 77."""
    port = free_port()
    proc = spawn([*nobody_can_run(), sys.executable, FORGE, '--bind', '127.0.0.1', str(port),
                  '--key', '127.0.0.1', str(port), '--as-nobody', '--',
                  '--port', str(port), '--options', '{"require_root": true}'], ports=[port])
    status = proc.wait_exit(timeout=15)
    log = proc.log()
    assert status == 77, log
    assert f'require_root: not started as root (uid={NOBODY})' in log, log


@pytest.mark.parametrize('bad', ['{not json', '{"pid": 1}'])
def test_malformed_handoff_in_a_root_start_is_ignored(spawn, bad):
    """A root start ignores the variable whatever it holds, and serves."""
    port = free_privileged_port()
    proc = spawn([sys.executable, str(HERE / 'sites' / 'site.py'), '--port', str(port)],
                 env={'CHERRYPY_DROPPRIVS_SOCKETS': bad}, ports=[port])
    assert proc.wait_http().json()['uids'] == [NOBODY] * 4


def test_a_privileged_port_bound_in_a_user_namespace_proves_nothing(spawn):
    """nobody is root of a user and network namespace of its own and binds a
    privileged port there, then hands that socket over with require_root set:
    it is in another network namespace, so it is refused (exit 77) and
    require_root is not waived."""
    port = free_privileged_port()
    proc = spawn([*nobody_can_run(), sys.executable, FORGE, '--bind', '127.0.0.1', str(port),
                  '--key', '127.0.0.1', str(port), '--as-nobody', '--userns', '--',
                  '--port', str(port), '--options', '{"require_root": true}'], ports=[port])
    status = proc.wait_exit(timeout=15)
    log = proc.log()
    assert status == 77, log
    assert 'bound in another network namespace' in log, log
    assert 'Serving on' not in log


def test_a_host_name_is_resolved_before_a_socket_is_adopted(spawn):
    """The server is configured by name (localhost); the forged socket listens
    on every address (0.0.0.0) on that port: not what the name resolves to,
    so it is refused (exit 77), as it is for a numeric host."""
    port = free_port()
    proc = spawn([*nobody_can_run(), sys.executable, FORGE, '--bind', '0.0.0.0', str(port),
                  '--key', 'localhost', str(port), '--as-nobody', '--',
                  '--host', 'localhost', '--port', str(port)], ports=[port])
    status = proc.wait_exit(timeout=15)
    log = proc.log()
    assert status == 77, log
    assert 'its socket is bound to 0.0.0.0, not localhost' in log, log


def test_a_squatter_on_the_port_is_named(spawn):
    """A process of the target user still holds a listening socket on the
    privileged port (compromised code passed the site's socket on before the
    site stopped): root's next start cannot bind it and ends before serving
    (CherryPy's own exit on a failed bind), and the error names the process
    that holds the port."""
    port = free_privileged_port()
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(('127.0.0.1', port))
    held.listen(5)
    squatter = spawn([*nobody_can_run(), 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups',
                      '--', sys.executable, '-c', 'import time; time.sleep(60)'], pass_fds=(held.fileno(),))
    held.close()  # only the squatter holds it now
    proc = spawn([sys.executable, str(HERE / 'sites' / 'site.py'), '--port', str(port)], ports=[port])
    status = proc.wait_exit(timeout=20)
    log = proc.log()
    assert status != 0 and 'Serving on' not in log, log
    assert f'port {port} is held by another process: pid {squatter.pid} (python' in log, log
    assert 'uid 65534' in log and 'KillMode=control-group' in log


def test_the_re_executed_image_runs_nothing_from_the_targets_user_site(spawn, tmp_path):
    """After the drop HOME is the target's; a restart re-executes as the target,
    and Python (outside a virtualenv) would put the target's user site-packages
    on sys.path and run its .pth files, inside the process that holds port 80.
    The target (here a made-up user 'app', 4242, in a private mount namespace)
    plants one: it runs in neither image (the restart's exec adds -s, a flag:
    nothing in the environment for children to inherit)."""
    import os

    import cherrypy
    import poller
    from conftest import REPO, SITE
    from namespaces import in_namespace, user_db

    base = tmp_path / 'us'
    base.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(base, 0o755)
    home = base / 'home'
    version = f'python{sys.version_info[0]}.{sys.version_info[1]}'
    site_packages = home / '.local' / 'lib' / version / 'site-packages'
    site_packages.mkdir(parents=True)
    planted = home / 'pwned'
    (site_packages / 'planted.pth').write_text(
        f"import os; open({str(planted)!r}, 'a').write('pid %d uid %d\\n' % (os.getpid(), os.geteuid()))\n")
    for d, _, names in os.walk(home):
        os.chown(d, 4242, 4242)
        for n in names:
            os.chown(os.path.join(d, n), 4242, 4242)
    files = user_db(base / 'db', [f'app:x:4242:4242::{home}:/usr/sbin/nologin'], ['app:x:4242:'])
    packages = os.path.dirname(os.path.dirname(cherrypy.__file__))
    port = free_privileged_port()
    base_python = os.path.realpath(sys.executable)  # no virtualenv: the user site is on
    prefix = in_namespace(nobody_can_run(str(tmp_path), uid=4242, gids=(4242,)), files=files)
    proc = spawn([*prefix, base_python, str(SITE), '--port', str(port), '--options', '{"uid": "app"}'],
                 env={'PYTHONPATH': os.pathsep.join([str(REPO), packages])}, ports=[port])
    conn = poller.tcp('127.0.0.1', port)
    boot = poller.wait_started(conn, alive=proc.alive, timeout=20)['boot']
    poller.request(conn, '/restart')
    after = poller.wait_started(conn, not_boot=boot, timeout=15, alive=proc.alive)
    assert after['pid'] == proc.pid and after['uids'] == [4242] * 4, after
    assert not planted.exists(), planted.read_text()
    with open(f'/proc/{proc.pid}/cmdline', 'rb') as f:
        assert f.read().split(b'\0')[1] == b'-s'  # the kernel's view of the new image's argv
    assert 'PYTHONNOUSERSITE' not in proc.get('/child_env', port=port).json()


#: Run as nobody: take every listening socket of pid argv[1] with pidfd_getfd (syscall 438).
STEAL = r'''
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
pfd = os.pidfd_open(int(sys.argv[1]))
for fd in range(3, 64):
    got = libc.syscall(438, pfd, fd, 0)
    if got >= 0:
        try:
            s = socket.socket(fileno=got)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                print('STOLE', s.getsockname())
        except OSError:
            os.close(got)
'''


def test_after_a_restart_another_process_of_the_target_cannot_take_the_privileged_socket(site):
    """Found in review: the set*id calls leave the site non-dumpable, so other
    processes of nobody cannot reach into it; the execve of a restart made the
    new image dumpable again, and a process nobody left running took the port's
    socket with pidfd_getfd. Now the re-executed image makes itself
    non-dumpable before anything else: the kernel owns its /proc files to root
    and the theft fails, before and after the restart."""
    import os
    import subprocess

    import poller

    port = free_privileged_port()
    proc = site(ports=[port], prefix=nobody_can_run(), wait=False)
    conn = poller.tcp('127.0.0.1', port)

    def steal() -> str:
        r = subprocess.run(['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups',
                            sys.executable, '-c', STEAL, str(proc.pid)],
                           capture_output=True, text=True, timeout=20)
        return r.stdout + r.stderr

    boot = poller.wait_started(conn, alive=proc.alive)['boot']
    assert os.stat(f'/proc/{proc.pid}/status').st_uid == 0 and 'STOLE' not in steal()
    poller.request(conn, '/restart')
    after = poller.wait_started(conn, not_boot=boot, timeout=15, alive=proc.alive)
    assert after['pid'] == proc.pid and after['uids'] == [NOBODY] * 4, after
    assert os.stat(f'/proc/{proc.pid}/status').st_uid == 0  # the kernel's view: not dumpable
    out = steal()
    assert 'STOLE' not in out, f'nobody took the site\'s listening socket after the restart: {out}'
