"""Other processes, read from /proc: who still holds root, how many tasks a uid
runs, who listens on a port.

Each scan walks every process on the system, so it runs only where a cheap
check (a child exists, the task count might exceed RLIMIT_NPROC, a port could
not be bound) says it must; a plain start never loads this module. No CherryPy.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Set, Tuple

from .kernel import read_proc, thread_creds


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
    longer sees root's processes, its own children included. The kernel's own
    lists of children (/proc/<pid>/task/*/children), walked down from this
    process, are compared with what /proc shows; unseen is not harmless."""
    table = descendants()
    me = os.getpid()
    out = []
    frontier, seen = [me], {me}
    while frontier:
        parent = frontier.pop()
        kids = children_of(parent)
        if kids is None:
            if parent == me and _proc_hides_processes():
                out.append('this kernel keeps no list of children (/proc/self/task/*/children) '
                           'and /proc is mounted with hidepid, so children cannot be checked')
            continue
        for pid in sorted(kids - seen):
            seen.add(pid)
            if pid in table:
                frontier.append(pid)
            elif not (parent == me and _exited_child(pid)):
                rel = 'child' if parent == me else f'descendant (parent {parent})'
                out.append(f'{rel} process {pid} cannot be seen in /proc (mounted with hidepid?), so '
                           f'whether it holds root cannot be checked')
    for pid, (ppid, state, comm) in sorted(table.items()):
        if state in ('Z', 'X'):  # exited, not yet reaped: holds nothing
            continue
        rel = 'child' if ppid == me else f'descendant (parent {ppid})'
        try:
            held = root_held(pid)
        except OSError as e:
            out.append(f'{rel} process {pid} ({comm}) cannot be checked ({e.strerror}; /proc '
                       f'mounted with hidepid?)')
            continue
        if held:
            out.append(f'{rel} process {pid} ({comm}) holds {", ".join(held)}')
    return out


def children_of(pid: int) -> Optional[Set[int]]:
    """``pid``'s children from the kernel's list (which hidepid does not hide
    from the process that may read it); None where it cannot be read, or the
    kernel keeps none (no CONFIG_PROC_CHILDREN)."""
    try:
        tids = os.listdir(f'/proc/{pid}/task')
    except OSError:
        return None
    out: Set[int] = set()
    listed = False
    for tid in tids:
        try:
            out.update(int(child) for child in read_proc(f'/proc/{pid}/task/{tid}/children').split())
            listed = True
        except FileNotFoundError:  # the thread is gone, or a kernel without the list
            continue
        except OSError:
            return None
    return out if listed else None


def _exited_child(pid: int) -> bool:
    """Whether child ``pid`` has exited (a zombie: holds nothing); reaps nothing."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # reaped meanwhile


def _proc_hides_processes() -> bool:
    """Whether /proc is mounted with hidepid (other users' processes hidden or unreadable)."""
    try:
        with open('/proc/self/mountinfo') as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == '/proc' and 'hidepid=' in line:
                    return not any(f'hidepid={v}' in line for v in ('0', 'off'))
    except OSError:
        return True
    return False


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
