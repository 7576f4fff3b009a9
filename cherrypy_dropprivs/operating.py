"""What the plugin does around the drop so that the dropped server keeps working.

Before the drop (as root): hand the log files, the ``chown`` paths and a
removable PID file to the target, and log a WARNING for each thing the
target still will not be able to do (:mod:`.preflight`). Right after the
drop: apply the per-thread settings to the threads that already existed
(:mod:`.thread_sweep`). Kept out of plugin.py, which stays thin wiring.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence

from . import capabilities, preflight, thread_sweep
from .drop import ALREADY_TARGET, DROPPED, NOT_ROOT, Plan


def check_chown(value: Optional[Sequence[str]]) -> List[str]:
    """Validate the ``chown`` option: a list of path strings."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f'chown must be a list of paths (e.g. [\'/var/lib/app/sessions\']); got {value!r}')
    for p in value:
        if not isinstance(p, str) or not p:
            raise TypeError(f'chown entries must be non-empty path strings; got {p!r}')
    return [os.path.abspath(p) for p in value]


def before_drop(plugin, plan: Plan, outcome: str) -> None:
    """Hand files over and warn; only a drop from root changes ownership."""
    if outcome != DROPPED:
        for lm in preflight.log_managers():
            preflight.make_reopen_safe(plugin.bus, lm)
        return
    report = preflight.prepare(plugin.bus, plan.target, plugin.chown_logs, plugin.chown)
    user = plan.target.user or str(plan.target.uid)
    if report.handed_over:
        plugin._log(f'handed to {user} (owner and group; mode kept): {", ".join(report.handed_over)}')
    for finding in report.findings:
        plugin._log(f'WARNING: {finding}', level=logging.WARNING)


def after_drop(plugin, plan: Plan, outcome: str) -> int:
    """Per-thread settings in threads that existed before the drop; see thread_sweep."""
    clear_caps = outcome in (NOT_ROOT, ALREADY_TARGET)
    actions = []
    if clear_caps:
        actions.append(capabilities.clear_thread_capabilities)
    if plan.no_new_privs:
        actions.append(capabilities.set_no_new_privs)
    n = thread_sweep.apply_to_existing_threads(actions, clear_caps, plan.no_new_privs)
    if n:
        what = ' and '.join(w for w, on in (('capabilities cleared', clear_caps),
                                            ('no_new_privs set', plan.no_new_privs)) if on)
        plugin._log(f'{what} in {n} thread(s) started before the drop')
    return n
