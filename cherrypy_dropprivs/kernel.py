"""Linux calls and /proc reading: no policy and no CherryPy.

Per-thread credentials from ``/proc/<pid>/task/*/status`` (the kernel's view,
which /proc/<pid>/status gives for the main thread only), the capability
and no_new_privs settings of the calling thread (through libc.py, loaded only
when there is something to change), whether there is a controlling terminal
(terminal.py gives it up), and the umask read without changing it. capset and prctl act on
the calling thread only (glibc broadcasts set*id, not these): callers run
them in each thread that needs them, or before creating threads.
"""

from __future__ import annotations

import os
import stat
from typing import Dict, List, Optional, Tuple, Union


class ThreadCreds:
    """One thread's credentials as the kernel reports them.

    A plain class (not a dataclass): every dataclass costs ~0.3 ms at import.
    """

    __slots__ = ('tid', 'name', 'uids', 'gids', 'groups', 'cap_inh', 'cap_prm', 'cap_eff',
                 'cap_bnd', 'cap_amb', 'no_new_privs', 'umask')

    def __init__(self, tid: int, name: str, uids: Tuple[int, int, int, int],
                 gids: Tuple[int, int, int, int], groups: Tuple[int, ...], cap_inh: int,
                 cap_prm: int, cap_eff: int, cap_bnd: int, cap_amb: int, no_new_privs: bool,
                 umask: int) -> None:
        self.tid, self.name = tid, name
        self.uids, self.gids, self.groups = uids, gids, groups  # real, effective, saved, fs
        self.cap_inh, self.cap_prm, self.cap_eff = cap_inh, cap_prm, cap_eff
        self.cap_bnd, self.cap_amb = cap_bnd, cap_amb
        self.no_new_privs, self.umask = no_new_privs, umask


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
            text = read_proc(f'{base}/{tid}/status')
        except (FileNotFoundError, ProcessLookupError):
            continue
        out.append(creds_from_status(int(tid), parse_status(text)))
    return out


def read_proc(path: str) -> str:
    """A /proc file's text, through one descriptor and no buffered file object
    (a sweep reads one per thread, at every start)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: List[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b''.join(chunks).decode('utf-8', 'replace')
            chunks.append(chunk)
    finally:
        os.close(fd)



def current_thread_creds() -> ThreadCreds:
    """The calling thread's credentials (/proc/thread-self/status)."""
    fields = parse_status(read_proc('/proc/thread-self/status'))
    return creds_from_status(int(os.path.basename(os.readlink('/proc/thread-self'))), fields)


def clear_thread_capabilities() -> None:
    """Empty the calling thread's effective, permitted, inheritable and ambient sets."""
    t = current_thread_creds()
    if not (t.cap_prm or t.cap_eff or t.cap_inh or t.cap_amb):
        return  # nothing to clear (the usual case): libc.py not needed
    from . import libc

    libc.clear_capabilities()


def clear_inheritable() -> None:
    """Empty the calling thread's inheritable set; keep its permitted and effective sets.

    Safe as root before the drop: the thread keeps what it may still need
    (e.g. CAP_SETUID for glibc's set*id broadcast). The kernel clears
    permitted, effective and ambient at setresuid, never inheritable; with a
    non-empty inheritable set an exec of a file with ``+ei`` file
    capabilities would grant them again. Lowering needs no privilege.
    """
    if not current_thread_creds().cap_inh:
        return  # the usual case: libc.py not needed
    from . import libc

    libc.clear_inheritable()


def held_in_any_thread() -> bool:
    """Whether any thread of this process has a capability in any set but the bounding one."""
    return any(t.cap_prm or t.cap_eff or t.cap_amb or t.cap_inh for t in thread_creds('self'))


def readable_by_others(path: str) -> bool:
    """Every directory on the way searchable by others, and the file readable
    (mode bits: what any target user could read)."""
    d = '/'
    try:
        for part in path.split('/')[1:-1]:
            d = os.path.join(d, part)
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def ptrace_scope() -> int:
    """kernel.yama.ptrace_scope; -1 without Yama."""
    try:
        return int(read_proc('/proc/sys/kernel/yama/ptrace_scope'))
    except (OSError, ValueError):
        return -1


def suid_dumpable() -> int:
    """fs.suid_dumpable (0: a process that changed its ids is not dumpable);
    1 if it cannot be read, so that the caller prepares for the worse case."""
    try:
        return int(read_proc('/proc/sys/fs/suid_dumpable'))
    except (OSError, ValueError):
        return 1


def set_no_new_privs() -> None:
    """Set no_new_privs on the calling thread (inherited by threads it creates)."""
    from . import libc

    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)


def make_undumpable() -> None:
    """PR_SET_DUMPABLE 0: other processes of this user may no longer ptrace it,
    read its memory or take its descriptors (pidfd_getfd). The kernel does it
    at a drop's set*id; an execve by the same user undoes it."""
    from . import libc

    libc.prctl(libc.PR_SET_DUMPABLE, 0)


def is_dumpable(pid: Union[int, str] = 'self') -> bool:
    """The kernel's side: /proc/<pid>/status of a process that is not dumpable
    belongs to root (proc(5)); meaningful for a process not running as root."""
    return os.stat(f'/proc/{pid}/status').st_uid != 0


def traced_by(pid: Union[int, str] = 'self') -> List[int]:
    """The tracers of ``pid``'s threads (TracerPid in /proc/<pid>/task/*/status); [] if none."""
    base = f'/proc/{pid}/task'
    out = set()
    for tid in os.listdir(base):
        try:
            text = read_proc(f'{base}/{tid}/status')
        except (FileNotFoundError, ProcessLookupError):
            continue
        tracer = int(parse_status(text).get('TracerPid', '0') or 0)
        if tracer:
            out.add(tracer)
    return sorted(out)


def get_dumpable() -> int:
    """prctl(PR_GET_DUMPABLE) of the calling thread (the demo shows it)."""
    from . import libc

    return libc.prctl(libc.PR_GET_DUMPABLE)


def current_umask() -> int:
    """The process's umask without changing it, from /proc (Linux 4.7+).

    Reading it with os.umask means setting it for an instant, and another
    thread creating a file in that instant would get the probe's mask; the
    fallback probes with 0o077 so that such a file is too private, not too open.
    """
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def tty_nr(pid='self') -> int:
    """The controlling terminal's device number (0: none), /proc/<pid>/stat field 7."""
    data = read_proc(f'/proc/{pid}/stat')
    fields = data[data.rindex(')') + 2:].split()
    return int(fields[4])  # state ppid pgrp session tty_nr


def nproc_soft_limit() -> Optional[int]:
    """RLIMIT_NPROC's soft limit, None if unlimited.

    Read from /proc/self/limits rather than through the ``resource`` module,
    which would stay loaded in the site for this one call.
    """
    try:
        with open('/proc/self/limits') as f:
            for line in f:
                if line.startswith('Max processes '):
                    text = line.split()[2]
                    return None if text == 'unlimited' else int(text)
    except (OSError, ValueError, IndexError):
        pass
    import resource

    limit = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    return None if limit == resource.RLIM_INFINITY else limit
