"""The set*id sequence: groups, then gid, then uid, all three ids at once.

Order matters: once the uid is no longer 0 the process may not change its
groups. setresgid/setresuid set real, effective and saved ids together, so
no saved root id is left to regain. glibc applies each call to every thread.
"""

from __future__ import annotations

import os

from .errors import PrivilegeDropError
from .identity import Identity


def holds_root() -> bool:
    """True if any of the real, effective or saved uids is 0."""
    return 0 in os.getresuid()


def root_groups_held() -> list:
    """Where this process holds group 0 (real/effective/saved gid, supplementary); [] if nowhere."""
    held = [f'{name} gid 0' for name, g in zip(('real', 'effective', 'saved'), os.getresgid()) if g == 0]
    if 0 in os.getgroups():
        held.append('supplementary group 0')
    return held


def switch_credentials(target: Identity) -> None:
    """Permanently become ``target``. Raises PrivilegeDropError naming the step."""
    if os.geteuid() != 0 and holds_root():
        # A saved or real uid of 0 with another euid: take euid 0 back first,
        # so the calls below are allowed to set every id.
        _step('seteuid(0)', os.seteuid, 0)
    _step(f'setgroups({list(target.groups)})', os.setgroups, list(target.groups))
    _step(f'setresgid({target.gid})', os.setresgid, target.gid, target.gid, target.gid)
    _step(f'setresuid({target.uid})', os.setresuid, target.uid, target.uid, target.uid)


def _step(name: str, func, *args) -> None:
    try:
        func(*args)
    except OSError as e:
        raise PrivilegeDropError(name, 'the kernel refused', e) from e
