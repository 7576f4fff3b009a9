"""The kernel's own view of a process's credentials, read from /proc.

Used both to verify a drop and by the tests: /proc/<pid>/task/<tid>/status
is per thread, while /proc/<pid>/status shows the main thread only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Tuple, Union


@dataclass(frozen=True)
class ThreadCreds:
    """One thread's credentials as the kernel reports them."""

    tid: int
    name: str
    uids: Tuple[int, int, int, int]  # real, effective, saved, filesystem
    gids: Tuple[int, int, int, int]
    groups: Tuple[int, ...]
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    no_new_privs: bool
    umask: int


def parse_status(text: str) -> Dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(':')
        fields[key] = value.strip()
    return fields


def creds_from_status(tid: int, fields: Dict[str, str]) -> ThreadCreds:
    def ids(key: str) -> Tuple[int, int, int, int]:
        a, b, c, d = (int(x) for x in fields[key].split())
        return a, b, c, d

    return ThreadCreds(
        tid=tid,
        name=fields.get('Name', ''),
        uids=ids('Uid'),
        gids=ids('Gid'),
        groups=tuple(int(g) for g in fields.get('Groups', '').split()),
        cap_inh=int(fields.get('CapInh', '0'), 16),
        cap_prm=int(fields.get('CapPrm', '0'), 16),
        cap_eff=int(fields.get('CapEff', '0'), 16),
        cap_bnd=int(fields.get('CapBnd', '0'), 16),
        cap_amb=int(fields.get('CapAmb', '0'), 16),
        no_new_privs=fields.get('NoNewPrivs', '0') == '1',
        umask=int(fields.get('Umask', '0'), 8),
    )


def thread_creds(pid: Union[int, str] = 'self') -> List[ThreadCreds]:
    """Credentials of every thread of ``pid``, from /proc/<pid>/task/*/status.

    A thread that exits while we read is skipped: it cannot serve anything.
    """
    base = f'/proc/{pid}/task'
    out = []
    for tid in sorted(os.listdir(base), key=int):
        try:
            with open(f'{base}/{tid}/status') as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out.append(creds_from_status(int(tid), parse_status(text)))
    return out


def current_thread_creds() -> ThreadCreds:
    """The calling thread's credentials (/proc/thread-self/status)."""
    with open('/proc/thread-self/status') as f:
        fields = parse_status(f.read())
    return creds_from_status(int(os.path.basename(os.readlink('/proc/thread-self'))), fields)
