"""Name-service lookups (users, groups) asked from a short-lived child process.

glibc answers ``getpwnam``, ``getgrouplist`` and the like by loading one
module per source configured in nsswitch.conf (``systemd``, ``sss``,
``ldap``...) into the process that asks, and never unloads it: on Debian 12,
libnss_systemd with libcap and libm, about 450 KiB of a small site's memory,
for a lookup made once at start; with sssd or LDAP also open connections that
the dropped site would keep. Asked from a forked child, the answers come back
as plain data and the site maps none of it. No CherryPy imports.

A child is forked only while the process has one thread (fork is not safe
with others: a lock held by another thread stays held in the child). Else,
or if fork fails, the lookup runs here, as it always did. The child runs with
every signal blocked: it is a copy of the site, as root, and must never run
the site's handlers (a SIGTERM would stop a root copy of the bus). It is
waited for through a pidfd, never by a pid another process may have reused.
Each answer is kept for the life of the process, so a start looks up once
however often the plan is made. A process our own restart re-executed after
the drop takes the old image's answers over (HANDED_ENV, see take_handed_over)
instead of forking again; any other start looks up afresh.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import time
from typing import Any, Dict, List, Optional, Tuple

#: A name service (LDAP, sssd) may be slow; not forever.
TIMEOUT = 30.0

_answers: Dict[Tuple[Any, ...], Any] = {}
#: (pid, pidfd or None) of each lookup child not waited for yet.
_unreaped: List[Tuple[int, Optional[int]]] = []

#: Where the functions ``ask`` runs live: imported by the child, not by the site.
LOOKUPS = __package__ + '.lookups'

#: The answers an image hands to the image its restart re-executes: set only
#: for that exec (handoff.KEEPER.exec_env), removed by whoever reads it.
HANDED_ENV = 'CHERRYPY_DROPPRIVS_NAMES'


def ask(name: str, *args: Any) -> Any:
    """``lookups.<name>(*args)``, computed once per process, in a child where possible.

    The function returns plain data (ints, strings, None, tuples, lists,
    dicts) and may raise ValueError or TypeError, which are raised here with
    the same message. ``args`` must be hashable.
    """
    key = key_of(name) + args
    if key not in _answers:
        _answers[key] = _in_child(name, args) if _one_thread() else _here(name, args)
    kind, value = _answers[key]
    if kind == 'ok':
        return value
    if kind == 'error':  # perhaps passing (a name server away): asked again next time
        del _answers[key]
        raise OSError(f'looking up users and groups failed: {value}')
    raise (TypeError if kind == 'TypeError' else ValueError)(value)


def key_of(name: str) -> Tuple[str, str]:
    """The start of the key under which ``ask(name, ...)`` keeps its answers."""
    return (LOOKUPS, name)


def answers() -> Dict[Tuple[Any, ...], Any]:
    """The answers kept (not the refusals), by the key ``ask`` uses."""
    return {key: value for key, (kind, value) in _answers.items() if kind == 'ok'}


def for_exec(handed: Dict[Tuple[Any, ...], Any]) -> str:
    """``handed`` (key -> answer, as ``answers()``) as HANDED_ENV's value,
    for the image this process (this pid) re-executes."""
    return f'{os.getpid()}:{marshal.dumps(handed).hex()}'


def take_handed_over(trusted: bool) -> int:
    """Remove HANDED_ENV from the environment; keep its answers if ``trusted``.

    The caller trusts it only in an image re-executed by our own restart
    after the drop (not root): the variable is a hint anyone who starts the
    process can write, and a root start must look up for itself. It must also
    name this pid (execv keeps it). Either way no child ever sees it. Returns
    how many answers were taken.
    """
    raw = os.environ.pop(HANDED_ENV, None)
    if not raw or not trusted:
        return 0
    pid, _, data = raw.partition(':')
    if pid != str(os.getpid()):
        return 0
    try:
        handed = marshal.loads(bytes.fromhex(data))
    except (ValueError, EOFError, TypeError):
        return 0
    if not isinstance(handed, dict):
        return 0
    taken = 0
    for key, value in handed.items():
        if isinstance(key, tuple) and key not in _answers:
            _answers[key] = ('ok', value)
            taken += 1
    return taken


def _one_thread() -> bool:
    try:
        with open('/proc/self/status', 'rb') as f:
            for line in f:
                if line.startswith(b'Threads:'):
                    return int(line.split()[1]) == 1
    except (OSError, ValueError, IndexError):
        pass
    return False


def _in_child(name: str, args: Tuple[Any, ...]) -> Tuple[str, Any]:
    reap()
    r, w = os.pipe()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(r)
        os.close(w)
        return _here(name, args)
    if pid == 0:  # the child: answer, then go without running any cleanup or handler
        try:
            os.close(r)
            try:
                answer = _here(name, args)
            except Exception as e:  # anything else the name service raised: said, not lost
                answer = ('error', f'{type(e).__name__}: {e}')
            data = marshal.dumps(answer)
            data = len(data).to_bytes(4, 'little') + data
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(0)
    try:
        pidfd: Optional[int] = os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3
        pidfd = None
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    os.close(w)
    try:
        data = _read_answer(r, pid)
    finally:
        os.close(r)
        _unreaped.append((pid, pidfd))
        reap(block=False)
    return marshal.loads(data)


def _here(name: str, args: Tuple[Any, ...]) -> Tuple[str, Any]:
    import importlib

    func = getattr(importlib.import_module(LOOKUPS), name)
    try:
        return 'ok', func(*args)
    except (ValueError, TypeError) as e:
        return type(e).__name__, str(e)


def _read_answer(fd: int, pid: int) -> bytes:
    """The child's length-prefixed answer; OSError if it ended without one or
    TIMEOUT passed (not asked again here: what hung there would hang here)."""
    data = b''
    deadline = time.monotonic() + TIMEOUT
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], 'little'):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            raise TimeoutError(f'the name service (users, groups) did not answer within '
                               f'{TIMEOUT:.0f} s; see /etc/nsswitch.conf')
        chunk = os.read(fd, 65536)
        if not chunk:
            raise ChildProcessError('the name-service lookup process ended without an answer')
        data += chunk
    return data[4:]


def reap(block: bool = True) -> None:
    """Wait for the lookup children (a zombie left behind would be a child
    that still holds root when the drop checks for those)."""
    for entry in list(_unreaped):
        pid, pidfd = entry
        try:
            if pidfd is not None:
                done = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | (0 if block else os.WNOHANG)) is not None
            else:
                done = os.waitpid(pid, 0 if block else os.WNOHANG)[0] != 0
        except ChildProcessError:  # reaped by someone else (SIGCHLD ignored, a handler)
            done = True
        if done:
            _unreaped.remove(entry)
            if pidfd is not None:
                os.close(pidfd)
