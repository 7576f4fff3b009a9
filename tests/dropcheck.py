"""Assertions on the kernel's view of every thread, shared by the drop tests."""

from __future__ import annotations

import grp
import os
import pwd
import re
from typing import Iterable, List, Optional

from cherrypy_dropprivs.kernel import ThreadCreds, thread_creds


def every_thread(pid: int, uid: int, gid: int, groups: Iterable[int],
                 umask: Optional[int] = 0o077, min_threads: int = 5) -> List[ThreadCreds]:
    """Assert the exact credentials on every thread of ``pid``; return the threads."""
    threads = thread_creds(pid)
    assert len(threads) >= min_threads, threads
    want_groups = sorted(set(groups))
    for t in threads:
        assert t.uids == (uid,) * 4, t
        assert t.gids == (gid,) * 4, t
        assert sorted(t.groups) == want_groups, t
        assert len(t.groups) == len(set(t.groups)), t
        assert (t.cap_prm, t.cap_eff, t.cap_amb) == (0, 0, 0), t
        if umask is not None:
            assert t.umask == umask, t
    return threads


def status_lines(pid: int) -> str:
    """The identity lines of every thread, as the kernel prints them (for reports)."""
    out = []
    for tid in sorted(os.listdir(f'/proc/{pid}/task'), key=int):
        with open(f'/proc/{pid}/task/{tid}/status') as f:
            keep = [ln.rstrip('\n') for ln in f
                    if ln.split(':')[0] in ('Uid', 'Gid', 'Groups', 'CapPrm', 'CapEff', 'CapAmb', 'Umask')]
        out.append(f'task {tid}: ' + ' | '.join(keep))
    return '\n'.join(out)


def user_groups(name: str) -> List[int]:
    """What ``id NAME`` shows as groups, from the host's databases."""
    entry = pwd.getpwnam(name)
    return sorted(set(os.getgrouplist(name, entry.pw_gid)))


def named(num: int, group: bool = True) -> str:
    """``4(adm)`` as the plugin's log lines (and id(1)) write it."""
    try:
        name = grp.getgrgid(num).gr_name if group else pwd.getpwuid(num).pw_name
    except KeyError:
        return str(num)
    return f'{num}({name})'


def dropprivs_lines(log: str) -> List[str]:
    return [ln for ln in log.splitlines() if 'dropprivs:' in ln]


def only_line(log: str, pattern: str) -> re.Match:
    """The one log line matching ``pattern`` (a regex); fails on none or several."""
    hits = [m for m in (re.search(pattern, ln) for ln in log.splitlines()) if m]
    assert len(hits) == 1, f'{len(hits)} lines match {pattern!r}:\n{log}'
    return hits[0]


def unused_id(start: int = 4242) -> int:
    """A number that is neither a uid nor a gid, nor a user or group name, on this host."""
    for n in range(start, start + 1000):
        lookups = ((pwd.getpwuid, n), (grp.getgrgid, n), (pwd.getpwnam, str(n)), (grp.getgrnam, str(n)))
        if not any(_exists(f, v) for f, v in lookups):
            return n
    raise RuntimeError('no unused id')


def _exists(lookup, value) -> bool:
    try:
        lookup(value)
    except KeyError:
        return False
    return True
