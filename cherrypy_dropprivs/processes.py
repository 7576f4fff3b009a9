"""Other processes, read from /proc: who still holds root, how many tasks a uid
runs, who listens on a port.

Each scan walks every process on the system, so it runs only where a cheap
check (a child exists, the task count might exceed RLIMIT_NPROC, a port could
not be bound) says it must; a plain start never loads this module. No CherryPy.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Set, Tuple

from .kernel import thread_creds


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
    """What of root ``pid`` holds, over all its threads; [] if nothing (or gone).

    OSError where /proc may not be read (hidepid): unseen is not harmless."""
    try:
        threads = thread_creds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return []  # gone meanwhile
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


def root_holding_descendants() -> List[str]:
    """One line per live descendant that still holds root, or that this process
    cannot see: where /proc is mounted with hidepid, a dropped process no
    longer sees root's processes, its own children included."""
    table = descendants()
    out = [f'child process {pid} cannot be seen in /proc (mounted with hidepid?), so whether it '
           f'holds root cannot be checked' for pid in sorted(direct_children() - set(table))]
    for pid, (ppid, state, comm) in sorted(table.items()):
        if state in ('Z', 'X'):  # exited, not yet reaped: holds nothing
            continue
        rel = 'child' if ppid == os.getpid() else f'descendant (parent {ppid})'
        try:
            held = root_held(pid)
        except OSError as e:
            out.append(f'{rel} process {pid} ({comm}) cannot be checked ({e.strerror}; /proc '
                       f'mounted with hidepid?)')
            continue
        if held:
            out.append(f'{rel} process {pid} ({comm}) holds {", ".join(held)}')
    return out


def direct_children() -> Set[int]:
    """This process's children, from /proc/self/task/*/children (the kernel's
    own list, which hidepid does not hide from the parent)."""
    out: Set[int] = set()
    for tid in os.listdir('/proc/self/task'):
        try:
            with open(f'/proc/self/task/{tid}/children') as f:
                out.update(int(pid) for pid in f.read().split())
        except FileNotFoundError:  # the thread is gone, or a kernel without the file
            continue
    return out


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


def listeners_on_port(port: int) -> List[Tuple[int, int, str]]:
    """(pid, uid, command) of each other process holding a TCP socket that listens
    on ``port`` (from /proc/net/tcp{,6} and /proc/*/fd; complete only as root)."""
    inodes = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(table) as f:
                next(f)
                for cols in map(str.split, f):
                    if cols[3] == '0A' and int(cols[1].rsplit(':', 1)[1], 16) == port:
                        inodes.add(f'socket:[{cols[9]}]')
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    found = []
    for pid in (p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()):
        try:
            fds = os.listdir(f'/proc/{pid}/fd')
            if not any(os.readlink(f'/proc/{pid}/fd/{fd}') in inodes for fd in fds):
                continue
            with open(f'/proc/{pid}/comm') as f:
                comm = f.read().strip()
            uid = os.stat(f'/proc/{pid}').st_uid
        except OSError:
            continue
        found.append((int(pid), uid, comm))
    return found
