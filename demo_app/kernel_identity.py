"""What the kernel says this process is, as one JSON-ready dict.

Everything is read from /proc (the serving thread's own status, then every
thread's), not from the plugin's report of itself: the point of the demo is
that anyone can check the drop independently.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from cherrypy_dropprivs.identity import group_name, user_name
from cherrypy_dropprivs.kernel import ThreadCreds, current_thread_creds, get_dumpable, thread_creds

from .capability_names import cap_names

ENV_VARS = ('HOME', 'USER', 'LOGNAME', 'SHELL')
CAP_SETS = ('CapPrm', 'CapEff', 'CapAmb', 'CapBnd')


@dataclass(frozen=True)
class StartInfo:
    """Who the process was when it started, and where it listens."""

    uids: Tuple[int, int, int]
    gids: Tuple[int, int, int]
    groups: Tuple[int, ...]
    host: str
    port: int
    activated_by: str
    target: Optional[str]
    confine: bool = False

    @classmethod
    def now(cls, host: str, port: int, activated_by: str, target: Optional[str],
            confine: bool = False) -> StartInfo:
        return cls(os.getresuid(), os.getresgid(), tuple(os.getgroups()), host, port, activated_by,
                   target, confine)


def outcome(start: StartInfo, uids_now: Tuple[int, ...]) -> Tuple[str, Optional[str]]:
    """('dropped' | 'not-root' | 'root', why nothing was dropped or None)."""
    if start.uids[1] == 0:
        if 0 in uids_now:
            return 'root', f'Started as root and uid 0 is still held (uids {uids_now}): NOT dropped.'
        return 'dropped', None
    who = _named(start.uids[1], user_name(start.uids[1]))
    return 'not-root', (
        f'Nothing was dropped: this process was started as {who}, not as root, so it had no '
        f'root privileges to give up. The plugin kept the user and groups as they were (it '
        f'only set the umask and cleared any capabilities). Without root it cannot bind a port '
        f'below 1024, so the demo defaults to port 8080 instead of 80 (it listens on '
        f'{start.port}). Start it as root to see the drop: it then binds port 80 on 127.0.0.1 '
        f'and becomes nobody.'
    )


def collect(start: StartInfo) -> Dict[str, Any]:
    """The identity of the serving thread and a summary of every thread."""
    me = current_thread_creds()
    status, why = outcome(start, me.uids)
    return {
        'pid': os.getpid(),
        'status': status,
        'why_not_dropped': why,
        'served_by_thread': me.tid,
        'uid': _four(me.uids),
        'user': user_name(me.uids[1]),
        'gid': _four(me.gids),
        'group': group_name(me.gids[1]),
        'groups': [{'id': g, 'name': group_name(g)} for g in me.groups],
        'capabilities': _caps(me),
        'umask': f'{me.umask:04o}',
        'no_new_privs': me.no_new_privs,
        'dumpable': get_dumpable(),
        'environment': {k: os.environ.get(k) for k in ENV_VARS},
        'threads': _thread_summary(thread_creds('self')),
        'started_as': {
            'uid': list(start.uids), 'user': user_name(start.uids[1]),
            'gid': list(start.gids), 'groups': list(start.groups),
        },
        'listening': {'host': start.host, 'port': start.port},
        'plugin': {'activated_by': start.activated_by, 'target': start.target},
        'confinement': confinement(start),
    }


def _attempt(path: str) -> str:
    try:
        with open(path, 'rb') as f:
            f.read(1)
        return 'allowed'
    except OSError as e:
        return f'denied ({errno.errorcode.get(e.errno, e.errno)}: {e.strerror})'


def confinement(start: StartInfo) -> Dict[str, Any]:
    """Whether the serving thread is confined, asked of the kernel: opening ``/``
    for reading fails with EACCES only under Landlock; then two real reads."""
    try:
        os.close(os.open('/', os.O_RDONLY | os.O_DIRECTORY))
        confined = False
    except PermissionError:
        confined = True
    abi = None
    if start.confine:
        from cherrypy_dropprivs.landlock import abi_version
        abi = abi_version()[0]
    return {
        'requested': start.confine,
        'confined': confined,
        'landlock_abi': abi,
        'probes': {
            'read /etc/hostname': _attempt('/etc/hostname'),
            "read this demo's own code": _attempt(__file__),
        },
    }


def _named(num: int, name: Optional[str]) -> str:
    return f'uid {num} ({name})' if name else f'uid {num}'


def _four(ids: Tuple[int, int, int, int]) -> Dict[str, int]:
    return dict(zip(('real', 'effective', 'saved', 'fs'), ids))


def _caps(t: ThreadCreds) -> Dict[str, Dict[str, Any]]:
    masks = {'CapPrm': t.cap_prm, 'CapEff': t.cap_eff, 'CapAmb': t.cap_amb, 'CapBnd': t.cap_bnd}
    return {k: {'hex': f'{m:016x}', 'names': cap_names(m)} for k, m in masks.items()}


def _thread_summary(threads: List[ThreadCreds]) -> Dict[str, Any]:
    """Threads grouped by identical credentials: one kind means all agree."""
    py_names = {t.native_id: t.name for t in threading.enumerate()}
    kinds: Dict[tuple, Dict[str, Any]] = {}
    for t in threads:
        key = (t.uids, t.gids, t.groups, t.cap_prm, t.cap_eff, t.cap_amb, t.cap_bnd, t.no_new_privs)
        kind = kinds.setdefault(key, {
            'count': 0, 'threads': [],
            'uid': list(t.uids), 'gid': list(t.gids), 'groups': list(t.groups),
            'CapPrm': f'{t.cap_prm:016x}', 'CapEff': f'{t.cap_eff:016x}',
            'CapAmb': f'{t.cap_amb:016x}', 'CapBnd': f'{t.cap_bnd:016x}',
            'no_new_privs': t.no_new_privs,
        })
        kind['count'] += 1
        kind['threads'].append({'tid': t.tid, 'name': py_names.get(t.tid, t.name)})
    return {'count': len(threads), 'all_identical': len(kinds) == 1, 'kinds': list(kinds.values())}
