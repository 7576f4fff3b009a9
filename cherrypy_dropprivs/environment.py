"""The login environment of the target user, as su(1) and systemd's User= set it.

Leaving HOME=/root makes libraries look for config and caches in root's home.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

from .identity import Identity


def login_environment(target: Identity) -> Dict[str, str]:
    name = target.user if target.user is not None else str(target.uid)
    return {'HOME': target.home, 'USER': name, 'LOGNAME': name, 'SHELL': target.shell}


def apply_login_environment(
    target: Identity,
    old_uid: int,
    old_home: Optional[str],
) -> Dict[str, str]:
    """Set HOME, USER, LOGNAME and SHELL; unset per-user paths of the old user.

    Returns the variables set.
    """
    env = os.environ
    new = login_environment(target)
    env.update(new)
    stale = {f'/run/user/{old_uid}'}
    if old_home:
        stale.add(old_home)
    for var in ('XDG_RUNTIME_DIR', 'MAIL'):
        value = env.get(var)
        if value and (value in stale or var == 'MAIL'):
            del env[var]
    return new
