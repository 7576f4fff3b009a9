"""RLIMIT_NPROC against the tasks the dropped user will have.

RLIMIT_NPROC counts tasks (threads included) per real uid, system-wide, and
does not apply to root. After setresuid every thread of this process counts
against the target user, together with everything else that user runs. Over
the limit, the next thread creation fails (cheroot's accept loop starts one
when the gate opens: "can't start new thread", after "verified") and a
re-exec fails with EAGAIN. So the drop checks first and fails closed.
"""

from __future__ import annotations

import os
import resource
import threading
from typing import Tuple

from .errors import PrivilegeDropError

#: Threads started lazily after the gate opens besides cheroot's one per
#: server: e.g. the session-cleanup Monitor on the first request with
#: sessions on, or a Timer a handler uses to call engine.restart().
RESERVE = 2


def tasks_of_uid(uid: int, exclude_pid: int) -> int:
    """Tasks (threads) of processes whose real uid is ``uid``, from /proc, but ``exclude_pid``'s."""
    n = 0
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == exclude_pid:
            continue
        try:
            with open(f'/proc/{entry}/status') as f:
                real = threads = None
                for line in f:
                    if line.startswith('Uid:'):
                        real = int(line.split()[1])
                    elif line.startswith('Threads:'):
                        threads = int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue  # gone meanwhile, or a kernel thread without these lines
        if real == uid and threads:
            n += threads
    return n


def later_threads() -> int:
    """Threads this process will still start: one per held cheroot server, plus RESERVE."""
    servers = sum(1 for t in threading.enumerate() if t.name.startswith('HTTPServer '))
    return servers + RESERVE


def needed(uid: int) -> Tuple[int, int, int, int]:
    """(total, other tasks of uid, this process's threads, later threads)."""
    me = os.getpid()
    others = tasks_of_uid(uid, me)
    mine = len(os.listdir('/proc/self/task'))
    later = later_threads()
    return others + mine + later, others, mine, later


def check_nproc(uid: int) -> None:
    """Fail closed (PrivilegeDropError) unless ``uid``'s tasks will fit under RLIMIT_NPROC."""
    if uid == 0:
        return
    soft, _hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft == resource.RLIM_INFINITY:
        return
    total, others, mine, later = needed(uid)
    if total > soft:
        raise PrivilegeDropError(
            'RLIMIT_NPROC',
            f'the limit is {soft} tasks for uid {uid}, which will need {total}: {mine} threads of '
            f'this process, {later} it starts later, {others} of other processes of uid {uid}; '
            f'raise it (systemd LimitNPROC=, limits.conf nproc, ulimit -u) or use fewer threads '
            f'(server.thread_pool)',
        )
