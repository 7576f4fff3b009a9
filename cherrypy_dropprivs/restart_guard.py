"""Where the plugin asks the restart checks: before serving and after the first drop.

``cannot_serve`` runs in ``arm`` of a process that is not root (typically one
re-executed by a restart after the drop): a TLS file it cannot read, or a
privileged port it has no kept socket for, ends the process with one clear
message instead of a traceback from cheroot. ``restart_warnings`` runs right
after the first drop, as the target user: what would make a later restart
fail is logged at once, while an operator is still watching the start.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from . import restart_checks, server_hooks
from .listening_sockets import KEEPER


def cannot_serve(bus) -> Optional[str]:
    """A fatal problem for a non-root process about to start its servers, or None."""
    infos = server_hooks.server_infos(server_hooks.server_adapters(bus))
    tls = restart_checks.unreadable_tls(infos)
    if tls:
        return f'cannot start the servers: {"; ".join(tls)}'
    problems = restart_checks.cannot_listen(infos, socket_activation=bool(os.environ.get('LISTEN_PID')))
    if problems:
        return restart_checks.no_socket_message(problems, KEEPER.adopted_from_exec)
    return None


def restart_warnings(bus, adapters) -> List[str]:
    """What a later restart would trip over, checked as the user just dropped to."""
    out = []
    infos = server_hooks.server_infos(adapters)
    for msg in restart_checks.unreadable_tls(infos):
        out.append(f'{msg}. Serving now works (read as root before the drop), but a later '
                   f'restart (engine.restart(), autoreload, SIGHUP) re-reads it as this user '
                   f'and would fail')
    blockers = restart_checks.reexec_blockers(sys.executable, sys.argv[0] if sys.argv else '',
                                              server_hooks.startup_cwd())
    if blockers:
        out.append(restart_checks.reexec_warning(blockers, server_hooks.autoreload_on(bus)))
    return out
