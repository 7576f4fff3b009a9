"""What the plugin does around the drop so that the dropped server keeps working.

Before the drop (as root): check that every file root opened or would act on
is safe (:mod:`.safe_paths`; else fail closed), hand the log files and the
``chown`` paths to the target, and log a WARNING for each thing the target
still will not be able to do (:mod:`.preflight`). Right after the
drop: apply the per-thread settings to the threads that already existed
(:mod:`.thread_sweep`). Kept out of plugin.py, which stays thin wiring.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence

from . import capabilities, preflight, safe_paths, thread_sweep
from .drop import ALREADY_TARGET, DROPPED, NOT_ROOT, Plan, target_of


def check_chown(value: Optional[Sequence[str]]) -> List[str]:
    """Validate the ``chown`` option: a list of path strings, none a system directory.

    TypeError for a wrong type, ValueError for a system directory (``/``,
    ``/etc``, ``/var/log``, anything under ``/usr``... see
    :data:`.safe_paths.SYSTEM_DIRS` and :data:`.safe_paths.SYSTEM_TREES`).
    """
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f'chown must be a list of paths (e.g. [\'/var/lib/app/sessions\']); got {value!r}')
    for p in value:
        if not isinstance(p, str) or not p:
            raise TypeError(f'chown entries must be non-empty path strings; got {p!r}')
    paths = [safe_paths.normalize(p) for p in value]
    for p in paths:
        reason = safe_paths.system_path_reason(p)
        if reason:
            raise ValueError(
                f'chown: {reason}; handing it to the target user would give the site a '
                f'directory the system or root relies on. Accepted: the site\'s own paths '
                f'below the shared ones, e.g. /var/lib/mysite/sessions or /srv/mysite/uploads'
            )
    return paths


def before_drop(plugin, plan: Plan, outcome: str) -> None:
    """Hand files over and warn; only a drop from root changes ownership."""
    if outcome != DROPPED:
        for lm in preflight.log_managers():
            preflight.make_reopen_safe(plugin.bus, lm)
        return
    target = target_of(plan)
    report = preflight.prepare(plugin.bus, target, plugin.chown_logs, plugin.chown)
    user = target.user or str(target.uid)
    if report.handed_over:
        plugin._log(f'handed to {user} (owner and group; mode kept): {", ".join(report.handed_over)}')
    for finding in report.findings:
        if finding.severity == 'note':
            plugin._log(f'note: {finding}')
        else:
            plugin._log(f'WARNING: {finding}', level=logging.WARNING)


def after_drop(plugin, plan: Plan, outcome: str) -> None:
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
