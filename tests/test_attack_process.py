"""Attacks on root through the process itself, each played for real (issue 10, items 4, 5, 8, 9, 11).

A real pseudo-terminal with TIOCSTI, real ``setpriv --inh-caps``, a real
child started as root before the drop, real gid 0 without root, and a real
``prlimit --nproc``. Every process is stopped by pid; every wait is bounded.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    NOBODY,
    SITE,
    free_port,
    free_privileged_port,
    needs_root,
    nobody_can_run,
    stop_process,
    wait_for,
    yama_blocks_same_user,
)
from dropcheck import only_line

from cherrypy_dropprivs.kernel import tty_nr

ATTACK_SITE = Path(__file__).resolve().parent / 'sites' / 'attack_site.py'

# What a shell does for a foreground job (or, with 'leader', what `exec site`
# from a login shell gives): the terminal becomes the controlling terminal of
# a new session; the job gets its own process group, made the foreground one.
LAUNCHER = r'''
import os, signal, sys, fcntl, termios
mode, slave, pidfile, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
if os.getsid(0) != os.getpid():
    os.setsid()
fd = os.open(slave, os.O_RDWR | os.O_NOCTTY)
fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
if mode == 'leader':
    with open(pidfile, 'w') as f:
        f.write(f'{os.getpid()}\n')
    for i in (0, 1, 2, 3):  # and 3, as a shell's `3<>/dev/tty` would
        os.dup2(fd, i)
    os.set_inheritable(3, True)  # fd itself may be 3
    os.execv(argv[0], argv)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.read(r, 1)
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    for i in (0, 1, 2, 3):  # and 3, as a shell's `3<>/dev/tty` would
        os.dup2(fd, i)
    os.set_inheritable(3, True)  # fd itself may be 3
    os.execv(argv[0], argv)
os.setpgid(pid, pid)
os.tcsetpgrp(fd, pid)
os.write(w, b'x')
with open(pidfile, 'w') as f:
    f.write(f'{pid}\n')
_, status = os.waitpid(pid, 0)
print('EXIT', os.waitstatus_to_exitcode(status), flush=True)
'''


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _gone(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X')
    except FileNotFoundError:
        return True


class _Drain(threading.Thread):
    """Collects everything written to the terminal (the pty master), so writers never block."""

    def __init__(self, fd: int):
        super().__init__(daemon=True)
        self.fd, self.data, self.stop = fd, bytearray(), threading.Event()

    def run(self):
        while not self.stop.is_set():
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    return
                if not chunk:
                    return
                self.data += chunk

    def text(self) -> str:
        return self.data.decode(errors='replace')


def _pending_input(slave: int) -> bytes:
    """Whatever sits in the terminal's input queue (what root's shell would read next)."""
    flags = fcntl.fcntl(slave, fcntl.F_GETFL)
    fcntl.fcntl(slave, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        return os.read(slave, 4096)
    except BlockingIOError:
        return b''
    finally:
        fcntl.fcntl(slave, fcntl.F_SETFL, flags)


@needs_root
@pytest.mark.parametrize('mode', ['job', 'leader'])
def test_terminal_given_up_tiocsti_fails_ctrl_c_and_screen_work(spawn, tmp_path, request, mode):
    """Root's terminal: after the drop no TIOCSTI, no keystrokes read, tty_nr 0; the screen
    log still shows; as a shell's job, Ctrl-C on the terminal still stops the site."""
    master, slave = os.openpty()
    request.addfinalizer(lambda: [os.close(fd) for fd in (master, slave)])
    attrs = termios.tcgetattr(slave)
    attrs[3] = (attrs[3] & ~(termios.ICANON | termios.ECHO)) | termios.ISIG  # raw-ish, Ctrl-C kept
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    drain = _Drain(master)
    drain.start()
    request.addfinalizer(drain.stop.set)

    port, pidfile = free_privileged_port(), tmp_path / 'site.pid'
    launcher = spawn([sys.executable, '-c', LAUNCHER, mode, os.ttyname(slave), str(pidfile),
                      sys.executable, str(ATTACK_SITE), '--port', str(port)], ports=[port])
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, what='site pid'))
    request.addfinalizer(lambda: _kill_pid(pid))
    launcher.pid = pid  # requests go to the site; the spawn fixture still stops the launcher
    wait_for(lambda: 'verified on' in drain.text(), 20, what=f'"verified" on the terminal:\n{drain.text()}')

    assert tty_nr(pid) == 0
    who = launcher.get('/whoami').json()
    assert who['uid'] == NOBODY and who['pid'] == pid
    assert 'SignalHandler' in who['sighup'], who  # CherryPy's own SIGHUP handler, restored
    tried = launcher.get('/tiocsti', params={'text': 'touch /tmp/pwned\n'}).json()
    assert tried == {'fd0': 'EPERM', 'fd1': 'EPERM', 'fd2': 'EPERM', 'fd3': 'EPERM', 'devtty': 'ENXIO'}, tried
    time.sleep(0.2)
    assert _pending_input(slave) == b''  # nothing typed for root's shell to read
    os.write(master, b'secret\n')  # root types: the site cannot read it
    keys = launcher.get('/readkeys').json()
    assert keys == {'fd0': 'EBADF', 'fd1': 'EBADF', 'fd2': 'EBADF', 'fd3': 'EBADF'}, keys
    assert _pending_input(slave) == b'secret\n'
    wait_for(lambda: 'GET /readkeys' in drain.text(), 5, what='the access log on the screen')

    if mode == 'job':
        os.write(master, b'\x03')  # Ctrl-C: SIGINT to the foreground process group
        wait_for(lambda: _gone(pid), 15, what='the site to stop on Ctrl-C')
        wait_for(lambda: 'EXIT' in launcher.log(), 5, what='the launcher to reap the site')
        assert 'Bus EXITED' in drain.text()
    else:
        # Documented limit: a session leader that gives up its terminal takes it from the
        # whole session, so Ctrl-C there reaches nobody; it survived the SIGHUP, and stops
        # on SIGTERM.
        os.write(master, b'\x03')
        time.sleep(1)
        assert not _gone(pid)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: _gone(pid), 15, what='the site to stop on SIGTERM')


@needs_root
def test_inheritable_capabilities_cleared_on_every_thread(site):
    """setpriv --inh-caps: after the drop CapInh is 0 on every thread, as CapPrm/CapEff/CapAmb."""
    prefix = ['setpriv', '--inh-caps=+net_bind_service,+sys_admin', '--']
    proc = site(prefix=prefix, extra=['--log-levels', '--autoreload'])
    proc.wait_log('verified on')
    threads = proc.threads()
    assert len(threads) >= 6, threads
    for t in threads:
        assert (t.cap_inh, t.cap_prm, t.cap_eff, t.cap_amb) == (0, 0, 0, 0), t
        assert t.uids == (NOBODY,) * 4, t


@needs_root
@pytest.mark.parametrize('hidepid', [None, 'invisible', 'noaccess'])
def test_child_started_before_the_drop_fails_closed(spawn, tmp_path, request, hidepid):
    """A start listener at 76 starts `sleep 30` as root: exit 77 naming the child's pid.

    Also where /proc is mounted with hidepid (a common hardening, here in a
    private mount namespace): after the drop the site cannot see (invisible)
    or read (noaccess) its own root child. Unseen is not harmless."""
    port, pidfile = free_privileged_port(), tmp_path / 'child.pid'
    argv = [sys.executable, str(ATTACK_SITE), '--port', str(port), '--child-at-76', str(pidfile)]
    if hidepid:
        script = f'mount -t proc -o hidepid={hidepid} proc /proc && exec "$@"'
        argv = ['unshare', '-m', '--propagation', 'private', 'sh', '-c', script, 'sh', *argv]
    proc = spawn(argv, ports=[port])
    request.addfinalizer(lambda: pidfile.exists() and _kill_pid(int(pidfile.read_text())))
    status = proc.wait_exit(timeout=15)
    log = proc.log()
    assert status == 77, log
    child = int(pidfile.read_text())
    held = (r'\(sleep\) holds Uid 0 0 0 0, Gid 0 0 0 0, CapPrm [0-9a-f]+, CapEff [0-9a-f]+' if not hidepid
            else r'.*cannot be .*hidepid')
    only_line(log, rf'dropprivs: FAILED: child processes: child process {child} {held}.*'
                   r'exiting with status 77')
    assert 'Bus STARTED' not in log


def _nobody_with(groups_args, port):
    argv = [sys.executable, str(ATTACK_SITE), '--port', str(port), '--options', '{"uid": "nobody"}']
    return [*nobody_can_run(uid=NOBODY, gids=(0,)), 'setpriv', f'--reuid={NOBODY}', *groups_args,
            '--', *argv]


@needs_root
@pytest.mark.parametrize('groups_args, held', [
    (['--regid=0', '--clear-groups'], 'real gid 0, effective gid 0, saved gid 0'),
    ([f'--regid={NOBODY}', '--groups=0'], 'supplementary group 0'),
], ids=['gid-0', 'group-0'])
def test_not_root_with_group_0_fails_closed(spawn, groups_args, held):
    port = free_port()
    proc = spawn(_nobody_with(groups_args, port), ports=[port])
    status = proc.wait_exit(timeout=15)
    log = proc.log()
    assert status == 77, log
    only_line(log, r'dropprivs: FAILED: root group: not started as root \(uid=65534\), but holding '
              rf'group 0: {held}; ')
    assert 'Serving on' not in log and 'Bus STARTED' not in log, log


@needs_root
def test_nproc_limit_fails_closed_before_the_drop(spawn):
    """RLIMIT_NPROC 6 for a target with no other process: the site needs 6 threads at the drop
    and one more when the gate opens (plus reserve): exit 77 naming the limit, no traceback."""
    uid = 54321
    port = free_privileged_port()
    proc = spawn(['prlimit', '--nproc=6', sys.executable, str(ATTACK_SITE), '--port', str(port),
                  '--options', f'{{"uid": {uid}, "gid": {uid}}}'], ports=[port])
    status = proc.wait_exit(timeout=15)
    log = proc.log()
    assert status == 77, log
    only_line(log, rf'dropprivs: FAILED: RLIMIT_NPROC: the limit is 6 tasks for uid {uid}, which will '
              r'need \d+: 6 threads of this process, 3 it starts later, 0 of other processes')
    assert 'Traceback' not in log and 'verified' not in log and 'Bus STARTED' not in log, log


#: Run as nobody while the site starts: try pidfd_getfd (syscall 438) on every
#: descriptor of pid argv[1], over and over, until it exits or 20 s pass.
RACE_FOR_SOCKETS = r'''
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[1])
pfd = os.pidfd_open(pid)
deadline = time.monotonic() + 20
tries = 0
while time.monotonic() < deadline and os.path.exists(f'/proc/{pid}'):
    for fd in range(3, 32):
        tries += 1
        got = libc.syscall(438, pfd, fd, 0)
        if got >= 0:
            s = socket.socket(fileno=got)
            try:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    print('STOLE', s.getsockname(), flush=True)
                    sys.exit(0)
            except OSError:
                pass
print('TRIES', tries, flush=True)
'''


@needs_root
@pytest.mark.skipif(yama_blocks_same_user(), reason='Yama (ptrace_scope >= 1) keeps the window shut here')
def test_suid_dumpable_1_without_yama_stops_the_start_before_the_drop(spawn, suid_dumpable_1):
    """With fs.suid_dumpable=1 the kernel makes the process dumpable at each
    set*id call: until it is undone, any process of nobody may take the port's
    socket with pidfd_getfd (a reviewer did, racing the drop). Without Yama to
    keep them out, the start stops before the set*id calls (exit 77, the
    sysctl named), and a process of nobody racing for the sockets all along
    gets none."""
    port = free_privileged_port()
    proc = spawn([sys.executable, str(SITE), '--port', str(port)], ports=[port])
    racer = subprocess.Popen(['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups',
                              sys.executable, '-c', RACE_FOR_SOCKETS, str(proc.pid)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.wait_exit(20) == 77
        out, _ = racer.communicate(timeout=30)
    finally:
        stop_process(racer)
    suid_dumpable_1()
    assert 'STOLE' not in out, out
    assert 'TRIES' in out, out  # it did race
    only_line(proc.log(), r'dropprivs: FAILED: fs.suid_dumpable: it is 1 and kernel.yama.ptrace_scope '
                          r'is absent \(no Yama\).*pidfd_getfd')


@needs_root
def test_not_dumpable_after_the_drop_with_suid_dumpable_1_under_yama(site, suid_dumpable_1):
    """Under Yama the target's other processes cannot reach the site anyway;
    the drop still makes it non-dumpable at once and checks the kernel's view
    (its /proc files belong to root). A fake: this kernel has no Yama, so the
    site is told ptrace_scope is 1 (--pretend-yama); the rest is real."""
    proc = site(prefix=nobody_can_run(), extra=['--pretend-yama', '1'])
    suid_dumpable_1()
    assert all(t.uids == (NOBODY,) * 4 for t in proc.threads())
    assert os.stat(f'/proc/{proc.pid}/status').st_uid == 0, 'dumpable: nobody could reach into the site'
    assert not any(t.no_new_privs for t in proc.threads())  # not asked for: not set
