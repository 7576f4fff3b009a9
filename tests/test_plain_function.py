"""``drop_privileges()`` outside the bus, in a real process started as root with extra groups."""

from __future__ import annotations

import json
import os
import shutil
import sys

import cherrypy
from conftest import REPO, needs_root, wait_for
from dropcheck import every_thread, user_groups

SCRIPT = r'''
import json, os, sys, threading, time
from cherrypy_dropprivs import drop_privileges
record = drop_privileges('nobody', umask='027')
worker = threading.Thread(target=time.sleep, args=(30,), daemon=True)  # a thread made after the drop
worker.start()
print('RECORD ' + json.dumps({
    'outcome': record.outcome, 'threads_checked': record.threads_checked,
    'before': [record.before.uids, record.before.gids, record.before.groups, record.before.umask],
    'after': [record.after.uids, record.after.gids, record.after.groups, record.after.umask],
    'env': [os.environ.get(k) for k in ('HOME', 'USER', 'LOGNAME', 'SHELL')],
}), flush=True)
time.sleep(30)  # stays alive for the kernel's view; the fixture stops it by pid
'''


@needs_root
def test_drop_privileges_plain_function(spawn):
    proc = spawn(['setpriv', '--groups=4,27', '--', sys.executable, '-c', SCRIPT])
    line = wait_for(lambda: next((ln for ln in proc.log().splitlines() if ln.startswith('RECORD ')), None)
                    or (not proc.alive() and AssertionError(proc.log())), 10, what='the record')
    assert isinstance(line, str), line
    rec = json.loads(line[len('RECORD '):])
    groups = user_groups('nobody')
    assert rec['outcome'] == 'dropped' and rec['threads_checked'] >= 1
    assert rec['before'][:3] == [[0, 0, 0], [0, 0, 0], [4, 27]]
    assert rec['after'] == [[65534] * 3, [65534] * 3, groups, 0o027]
    assert rec['env'][:3] == ['/nonexistent', 'nobody', 'nobody']
    every_thread(proc.pid, 65534, 65534, groups, umask=0o027, min_threads=2)


INHERITABLE = r'''
import os, sys, threading, time
import cherrypy_dropprivs
from cherrypy_dropprivs import drop_privileges
print('PACKAGE ' + os.path.dirname(cherrypy_dropprivs.__file__), flush=True)
drop_privileges('nobody')
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
print('DROPPED', flush=True)
time.sleep(30)  # stays alive for the kernel's view; the fixture stops it by pid
'''


@needs_root
def test_drop_privileges_from_a_package_the_target_cannot_read_clears_inheritable_caps(
        spawn, tmp_path):
    """CapInh (setpriv --inh-caps) survives setresuid, and clearing it needs
    libc.py: from a copy of the package only root can read, it is cleared
    while root. The drop completes, and every thread is nobody with no
    capability in any set."""
    private = tmp_path / 'private'
    private.mkdir(mode=0o700)
    shutil.copytree(REPO / 'cherrypy_dropprivs', private / 'cherrypy_dropprivs',
                    ignore=shutil.ignore_patterns('__pycache__'))
    packages = os.path.dirname(os.path.dirname(cherrypy.__file__))
    proc = spawn(['setpriv', '--inh-caps=+net_bind_service', '--', sys.executable, '-S', '-c',
                  INHERITABLE], env={'PYTHONPATH': os.pathsep.join([str(private), packages])},
                 cwd=str(tmp_path))
    wait_for(lambda: 'DROPPED' in proc.log() or (not proc.alive() and AssertionError(proc.log())),
             10, what='the drop')
    assert f'PACKAGE {private}/cherrypy_dropprivs' in proc.log()  # the copy ran
    every_thread(proc.pid, 65534, 65534, user_groups('nobody'), min_threads=2)
    for t in proc.threads():
        assert (t.cap_inh, t.cap_prm, t.cap_eff, t.cap_amb) == (0, 0, 0, 0), t
