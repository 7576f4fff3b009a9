"""An attacker who is the target user, around a restart's re-exec and the children check.

Found by a review of this package's own fixes (each failed before its fix):
a tracer attached in the window between the exec and the package's import;
the target's user site-packages whatever the interpreter flags; a non-root
site's own user site kept; a non-root process with a stray hand-over variable
left as it is; a root grandchild, and a zombie, where /proc hides processes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    NOBODY,
    REPO,
    SITE,
    free_port,
    free_privileged_port,
    needs_root,
    nobody_can_run,
    yama_blocks_same_user,
)

pytestmark = needs_root
CHILDREN_SITE = Path(__file__).resolve().parent / 'sites' / 'children_site.py'
VERSION = f'python{sys.version_info[0]}.{sys.version_info[1]}'


#: As nobody: PTRACE_SEIZE pid argv[1] as soon as it can (the exec window of a restart), then
#: report the tracee's TracerPid once it serves again; detach.
SEIZE = r'''
import ctypes, os, sys, time
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
deadline = time.time() + 15
while time.time() < deadline:
    if libc.ptrace(0x4206, pid, None, None) == 0:  # PTRACE_SEIZE
        print('SEIZED', flush=True)
        break
else:
    sys.exit('no seize')
time.sleep(float(sys.argv[3]))
libc.ptrace(17, pid, None, None)
'''


@pytest.mark.skipif(yama_blocks_same_user(), reason='Yama ptrace_scope >= 1 closes the window')
def test_a_tracer_attached_in_the_exec_window_is_refused(spawn, tmp_path):
    """F1: a process of the target PTRACE_SEIZEs the re-executed image between
    execve and the package's import (documented window). PR_SET_DUMPABLE 0 does
    not detach a tracer, so reexec.adopt's 'not dumpable' check passes and the
    site serves the privileged port under the attacker's ptrace control
    (registers, memory). Expected: adoption also requires TracerPid 0 (exit 77)."""
    import poller

    port = free_privileged_port()
    proc = spawn([*nobody_can_run(), sys.executable, str(SITE), '--port', str(port)], ports=[port])
    conn = poller.tcp('127.0.0.1', port)
    boot = poller.wait_started(conn, alive=proc.alive)['boot']
    tracer = spawn(['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups',
                    sys.executable, '-c', SEIZE, str(proc.pid), '-', '8'])
    time.sleep(1.0)  # the tracer is polling (PTRACE_SEIZE fails with EPERM until the exec)
    assert tracer.alive(), tracer.log()
    poller.request(conn, '/restart')
    try:
        poller.wait_started(conn, not_boot=boot, timeout=15, alive=proc.alive)
    except AssertionError:
        return  # refused (the fix): the site did not serve under a tracer
    time.sleep(0.5)
    if 'SEIZED' not in tracer.log():
        pytest.skip(f'the tracer did not win the race this time: {tracer.log()}')
    status = Path(f'/proc/{proc.pid}/status').read_text()
    tracer_pid = int(status.split('TracerPid:')[1].split()[0])
    assert tracer_pid == 0, (f'the re-executed site serves port {port} while pid {tracer_pid} '
                             f'(nobody) ptraces it:\n{tracer.log()}')


def _user_site_home(base: Path, pth_text: str, owner: int) -> Path:
    home = base / 'home'
    sp = home / '.local' / 'lib' / VERSION / 'site-packages'
    sp.mkdir(parents=True)
    (sp / 'planted.pth').write_text(pth_text)
    for d, _, names in os.walk(base):
        os.chown(d, owner, owner)
        os.chmod(d, 0o755)
        for n in names:
            os.chown(os.path.join(d, n), owner, owner)
    return home


@pytest.mark.parametrize('how', ['python -E', "PYTHONNOUSERSITE=''"])
def test_the_targets_user_site_stays_off_whatever_the_interpreter_flags(spawn, tmp_path, how):
    """F4 bypass: started with `python -E` (the restart keeps the interpreter's
    flags, so the new image ignores PYTHONNOUSERSITE) or with PYTHONNOUSERSITE=''
    in the operator's environment (Python treats empty as unset; the plugin treats
    it as the operator's and sets nothing), the image a restart re-executes with
    the target's HOME runs the target's ~/.local/.../site-packages/*.pth, inside
    the process holding port 80."""
    import cherrypy
    import poller
    from namespaces import in_namespace, user_db

    os.chmod(tmp_path, 0o755)
    planted = tmp_path / 'us' / 'home' / 'pwned'
    home = _user_site_home(tmp_path / 'us', f"import os; open({str(planted)!r}, 'a').write("
                                            f"'pid %d uid %d\\n' % (os.getpid(), os.geteuid()))\n", 4242)
    files = user_db(tmp_path / 'db', [f'app:x:4242:4242::{home}:/usr/sbin/nologin'], ['app:x:4242:'])
    packages = os.path.dirname(os.path.dirname(cherrypy.__file__))
    port = free_privileged_port()
    py = os.path.realpath(sys.executable)  # no virtualenv: the user site is on
    prefix = in_namespace(nobody_can_run(str(tmp_path), uid=4242, gids=(4242,)), files=files)
    site_args = [str(SITE), '--port', str(port), '--options', '{"uid": "app"}']
    env = {'PYTHONPATH': os.pathsep.join([str(REPO), packages])}
    if how == 'python -E':  # -E ignores PYTHONPATH: a wrapper puts the paths on sys.path
        wrapper = tmp_path / 'run.py'
        wrapper.write_text(f'import runpy, sys; sys.path[:0] = {[str(REPO), packages]!r}; '
                           f"sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')\n")
        wrapper.chmod(0o644)
        argv = [*prefix, py, '-E', str(wrapper), *site_args]
    else:
        env['PYTHONNOUSERSITE'] = ''
        argv = [*prefix, py, *site_args]
    proc = spawn(argv, env=env, ports=[port])
    conn = poller.tcp('127.0.0.1', port)
    boot = poller.wait_started(conn, alive=proc.alive, timeout=20)['boot']
    poller.request(conn, '/restart')
    poller.wait_started(conn, not_boot=boot, timeout=15, alive=proc.alive)
    assert not planted.exists(), f'the target\'s .pth ran in the re-executed site: {planted.read_text()}'


def test_a_non_root_restart_keeps_its_own_user_site(spawn, tmp_path):
    """F4 where nothing was dropped: a site started as its own user (HOME its
    own) with no_new_privs (or confine, or socket activation) has CherryPy from
    `pip install --user`. The restart's exec sets PYTHONNOUSERSITE anyway, and
    the new image dies: ModuleNotFoundError: No module named 'cherrypy'."""
    import cherrypy
    import poller
    from namespaces import in_namespace

    os.chmod(tmp_path, 0o755)
    packages = os.path.dirname(os.path.dirname(cherrypy.__file__))
    home = _user_site_home(tmp_path / 'nr', packages + '\n', 4242)  # CherryPy as if pip install --user
    port = free_port()
    py = os.path.realpath(sys.executable)
    argv = in_namespace([py, str(SITE), '--port', str(port), '--options', '{"no_new_privs": true}'],
                        run_as=4242, extra_paths=(str(tmp_path),))
    proc = spawn(argv, env={'PYTHONPATH': str(REPO), 'HOME': str(home)}, ports=[port])
    conn = poller.tcp('127.0.0.1', port)
    boot = poller.wait_started(conn, alive=proc.alive, timeout=20)['boot']
    poller.request(conn, '/restart')
    try:
        poller.wait_started(conn, not_boot=boot, timeout=15, alive=proc.alive)
    except AssertionError:
        pytest.fail(f'the restart of a non-root site lost its user site:\n{proc.log()[-600:]}')


def test_a_non_root_process_that_inherited_the_variable_stays_dumpable(spawn):
    """F1 where nothing is dropped: a non-root process whose environment merely
    carries CHERRYPY_DROPPRIVS_SOCKETS for another pid (not our re-exec) is
    made non-dumpable at import (no core dumps, no same-user debugger). The pid
    in the variable says it is not ours."""
    import poller
    from namespaces import in_namespace

    port = free_port()
    argv = in_namespace([sys.executable, str(SITE), '--port', str(port)], run_as=4242)
    proc = spawn(argv, env={'CHERRYPY_DROPPRIVS_SOCKETS': json.dumps({'pid': 1, 'sockets': {}})},
                 ports=[port])
    conn = poller.tcp('127.0.0.1', port)
    poller.wait_started(conn, alive=proc.alive, timeout=20)
    assert os.stat(f'/proc/{proc.pid}/status').st_uid == 4242, 'made non-dumpable'


def _children_site(spawn, tmp_path, kind, hidepid):
    port, pidfile = free_privileged_port(), tmp_path / 'child.pid'
    script = f'mount -t proc -o hidepid={hidepid} proc /proc && exec "$@"'
    proc = spawn(['unshare', '-m', '--propagation', 'private', 'sh', '-c', script, 'sh',
                  sys.executable, str(CHILDREN_SITE), kind, str(port), str(pidfile)], ports=[port])
    return proc, pidfile


def _kill_children(pidfile):
    for f in (pidfile, Path(str(pidfile) + '.g')):
        try:
            os.kill(int(f.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.mark.parametrize('hidepid', ['invisible', 'noaccess'])
def test_a_root_grandchild_under_a_visible_child_fails_the_start(spawn, tmp_path, request, hidepid):
    """F2 fail-open: only direct children are compared with the kernel's list.
    A child forks a root grandchild, drops itself to nobody and execs (dumpable
    again, so visible to the dropped site); under hidepid the root grandchild is
    invisible and the site starts. Without hidepid the same start exits 77."""
    proc, pidfile = _children_site(spawn, tmp_path, 'grandchild_exec', hidepid)
    request.addfinalizer(lambda: _kill_children(pidfile))
    deadline = time.monotonic() + 15
    while proc.alive() and 'Bus STARTED' not in proc.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 'Bus STARTED' not in proc.log(), 'started with a root grandchild it could not see'


def test_an_unreaped_root_zombie_does_not_fail_the_start(spawn, tmp_path, request):
    """F2 false positive: a child that already exited (a zombie, holds nothing)
    is invisible under hidepid=invisible and fails the start with 'cannot be
    seen'; waitid(P_PID, pid, WEXITED|WNOHANG|WNOWAIT) would tell it is a zombie."""
    proc, pidfile = _children_site(spawn, tmp_path, 'zombie', 'invisible')
    request.addfinalizer(lambda: _kill_children(pidfile))
    deadline = time.monotonic() + 15
    while proc.alive() and 'Bus STARTED' not in proc.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 'Bus STARTED' in proc.log(), proc.log()[-800:]
