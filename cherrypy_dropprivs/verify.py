"""Checking a drop against the kernel's view, after OpenSSH's permanently_set_uid.

Nothing here trusts the calls that made the drop: it re-reads every id, tries
to get root back (which must fail), and reads every thread from /proc.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional

from .errors import VerificationError
from .identity import Identity
from .kernel_view import ThreadCreds, thread_creds


def _must_fail(what: str, func: Callable, *args) -> None:
    try:
        func(*args)
    except PermissionError:
        return
    except OSError as e:
        raise VerificationError('regain', f'{what} failed oddly, not with EPERM', e) from e
    raise VerificationError('regain', f'{what} succeeded: root can be regained')


def verify_ids(target: Identity) -> None:
    """getres[ug]id and getgroups equal the target exactly."""
    resuid = os.getresuid()
    if resuid != (target.uid,) * 3:
        raise VerificationError('getresuid', f'is {resuid}, expected {(target.uid,) * 3}')
    resgid = os.getresgid()
    if resgid != (target.gid,) * 3:
        raise VerificationError('getresgid', f'is {resgid}, expected {(target.gid,) * 3}')
    groups = sorted(set(os.getgroups()))
    if groups != sorted(set(target.groups)):
        raise VerificationError('getgroups', f'is {groups}, expected {sorted(set(target.groups))}')


def verify_cannot_regain_root() -> None:
    _must_fail('setuid(0)', os.setuid, 0)
    _must_fail('seteuid(0)', os.seteuid, 0)
    _must_fail('setgid(0)', os.setgid, 0)
    _must_fail('setegid(0)', os.setegid, 0)
    _must_fail('setgroups([0])', os.setgroups, [0])


def thread_problems(
    threads: List[ThreadCreds],
    target: Optional[Identity],
    no_new_privs: bool = False,
) -> List[str]:
    """Every way a thread differs from the target; [] when all is well.

    ``target`` None checks capabilities (and no_new_privs) only: the case of
    a non-root process that keeps its user.
    """
    problems = []
    for t in threads:
        where = f'thread {t.tid} ({t.name})'
        if target is not None:
            if t.uids != (target.uid,) * 4:
                problems.append(f'{where}: Uid {t.uids}, expected {target.uid} x4')
            if t.gids != (target.gid,) * 4:
                problems.append(f'{where}: Gid {t.gids}, expected {target.gid} x4')
            if sorted(set(t.groups)) != sorted(set(target.groups)):
                problems.append(f'{where}: Groups {list(t.groups)}, expected {list(target.groups)}')
        for label, value in (('CapPrm', t.cap_prm), ('CapEff', t.cap_eff), ('CapAmb', t.cap_amb),
                             ('CapInh', t.cap_inh)):
            if value:
                problems.append(f'{where}: {label} {value:016x}, expected 0')
        if no_new_privs and not t.no_new_privs:
            problems.append(f'{where}: NoNewPrivs 0, expected 1')
    return problems


def verify_threads(target: Optional[Identity], no_new_privs: bool = False) -> int:
    """Check every thread in /proc/self/task; return how many were checked."""
    if not sys.platform.startswith('linux'):
        return 0
    threads = thread_creds('self')
    problems = thread_problems(threads, target, no_new_privs)
    if problems:
        raise VerificationError('/proc/self/task', '; '.join(problems))
    return len(threads)


def verify_no_terminal() -> None:
    """No controlling terminal: /proc/self/stat field 7 (tty_nr) is 0."""
    if not sys.platform.startswith('linux'):
        return
    from .terminal import tty_nr
    nr = tty_nr()
    if nr:
        raise VerificationError(
            'terminal', f'still has a controlling terminal (tty_nr {nr:#x}): it could type '
            f'into that terminal (TIOCSTI)')


def verify_dropped(target: Identity, no_new_privs: bool = False) -> int:
    """The full check after a drop from root; returns the thread count."""
    verify_ids(target)
    verify_cannot_regain_root()
    verify_ids(target)  # checked twice, as OpenSSH does: the attempts must not have changed anything
    return verify_threads(target, no_new_privs)
