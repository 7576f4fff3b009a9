"""Child processes that still hold root after the drop.

set*id calls change only the calling process (every thread of it, through
glibc), never its children: a helper forked by a start listener between the
bind and the drop stays uid 0 with every capability and outlives the drop.
Verification therefore reads every descendant of this process from /proc
(children, their children, and so on, by parent pid) and fails closed on
any that holds root: a uid or gid 0, group 0, or a capability.

Limit: a double-forked daemon is reparented to init (or to a subreaper)
and is no longer a descendant; nothing here can tell it apart from any
other process. :func:`adopt_orphans` makes this process a child subreaper
so that such orphans are reparented to it instead, and found.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from .errors import VerificationError
from .kernel_view import thread_creds

PR_SET_CHILD_SUBREAPER = 36


def _stat(pid: str) -> Optional[Tuple[int, str, str]]:
    """(ppid, state, comm) of ``pid``, or None if it is gone."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            data = f.read()
    except OSError:
        return None
    comm = data[data.index(b'(') + 1:data.rindex(b')')].decode(errors='replace')
    fields = data[data.rindex(b')') + 2:].split()
    return int(fields[1]), fields[0].decode(), comm


def descendants(pid: Optional[int] = None) -> Dict[int, Tuple[int, str, str]]:
    """Every live descendant of ``pid`` (default: this process): {pid: (ppid, state, comm)}."""
    root = os.getpid() if pid is None else pid
    table = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            info = _stat(entry)
            if info is not None:
                table[int(entry)] = info
    found: Dict[int, Tuple[int, str, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for child, info in table.items():
            if info[0] == parent and child not in found and child != root:
                found[child] = info
                frontier.append(child)
    return found


def root_held(pid: int) -> List[str]:
    """What of root ``pid`` holds, over all its threads; [] if nothing (or gone)."""
    try:
        threads = thread_creds(pid)
    except OSError:
        return []
    held = []
    for t in threads:
        for label, ids in (('Uid', t.uids), ('Gid', t.gids)):
            if 0 in ids and f'{label} {" ".join(map(str, ids))}' not in held:
                held.append(f'{label} {" ".join(map(str, ids))}')
        if 0 in t.groups and 'group 0' not in held:
            held.append('group 0')
        for label, value in (('CapPrm', t.cap_prm), ('CapEff', t.cap_eff), ('CapAmb', t.cap_amb),
                             ('CapInh', t.cap_inh)):
            if value and not any(h.startswith(label) for h in held):
                held.append(f'{label} {value:016x}')
    return held


def problems() -> List[str]:
    """One line per live descendant that still holds root."""
    out = []
    for pid, (ppid, state, comm) in sorted(descendants().items()):
        if state in ('Z', 'X'):  # exited, not yet reaped: holds nothing
            continue
        held = root_held(pid)
        if held:
            rel = 'child' if ppid == os.getpid() else f'descendant (parent {ppid})'
            out.append(f'{rel} process {pid} ({comm}) holds {", ".join(held)}')
    return out


def verify_no_root_children() -> None:
    """Fail closed (VerificationError) naming every descendant that still holds root."""
    found = problems()
    if found:
        raise VerificationError(
            'child processes',
            '; '.join(found) + '; set*id changes only this process, never its children: start '
            'helpers after the drop (a start listener above the drop\'s priority), or stop them '
            'before it')


def adopt_orphans() -> None:
    """Become a child subreaper: descendants orphaned from now on are reparented here.

    Call before anything forks (the plugin's arm, priority 10), so a
    double-forked helper is still found by :func:`verify_no_root_children`.
    """
    from .capabilities import prctl
    prctl(PR_SET_CHILD_SUBREAPER, 1)
