"""``drop_privileges()`` outside the bus, in a real process started as root with extra groups."""

from __future__ import annotations

import json
import sys

from conftest import needs_root, wait_for
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
