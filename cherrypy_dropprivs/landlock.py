"""Landlock through ctypes: rulesets, restricting a thread, and the probe.

The kernel side of ``confine`` (confine.py gathers the rules from CherryPy's
config). No CherryPy imports; imported only when ``confine`` is on.

Three facts shape it. ``landlock_restrict_self`` acts on the calling thread
only (like prctl): every thread must call it, or be created by a thread that
did, and it needs no_new_privs on that thread. Each call adds a layer (at
most 16), and a domain is inherited across ``execve``: a process re-executed
by a restart is already confined and must not call it again. Rules bind to
inodes, not names: a file replaced by a new one (renamed over, recreated) is
no longer covered, and /proc/<pid> directories are recreated by the kernel,
so /proc is granted as a whole (read only).

Whether a thread is confined cannot be read from /proc (no status field), so
:func:`probe` asks the kernel from that very thread: opening ``/`` for
reading must fail with EACCES, which only a Landlock domain that does not
grant ``/`` can cause (root's ``/`` is world-readable, and the rules never
include ``/`` itself).
"""

from __future__ import annotations

import errno
import functools
import os
import platform
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

# -- the kernel's ABI (include/uapi/linux/landlock.h) --------------------------

#: Syscall numbers (create, add_rule, restrict_self, openat2): the generic
#: table's, shared by every architecture but alpha.
_SYSCALLS = {'alpha': (554, 555, 556, 547)}
_GENERIC = (444, 445, 446, 437)

#: openat2(2)'s RESOLVE_NO_SYMLINKS: the rule's path as named, never through a link.
RESOLVE_NO_SYMLINKS = 0x04

CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13       # ABI 2
FS_TRUNCATE = 1 << 14    # ABI 3
FS_IOCTL_DEV = 1 << 15   # ABI 5

NET_BIND_TCP = 1 << 0     # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1                # ABI 6

#: landlock_restrict_self flag (ABI 7): keep logging denials (to the audit log)
#: after an execve, i.e. in a process re-executed by a restart.
RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1

#: Rights that a rule on a file (not a directory) may carry.
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


def handled_fs(abi: int) -> int:
    """Every filesystem right this ABI knows: all of them are denied unless a rule grants it."""
    mask = (1 << 13) - 1
    if abi >= 2:
        mask |= FS_REFER
    if abi >= 3:
        mask |= FS_TRUNCATE
    if abi >= 5:
        mask |= FS_IOCTL_DEV
    return mask


#: What each word of a rule's kind grants ('read', 'read+exec', 'read+write'...),
#: masked by the ABI's handled rights and, for a file, by FILE_RIGHTS.
WORDS = {
    'read': FS_READ_FILE | FS_READ_DIR,
    'exec': FS_EXECUTE,
    'write': (FS_WRITE_FILE | FS_TRUNCATE | FS_MAKE_REG | FS_MAKE_DIR | FS_REMOVE_FILE
              | FS_REMOVE_DIR | FS_REFER),
}


def rights(kind: str) -> int:
    out = 0
    for word in kind.split('+'):
        out |= WORDS[word]
    return out


@dataclass(frozen=True)
class PathRule:
    path: str
    kind: str  # words of WORDS joined by '+', e.g. 'read+exec'
    why: str


@dataclass(frozen=True)
class Rules:
    """What a confined process may do; everything else the ABI handles is denied."""

    paths: Tuple[PathRule, ...]
    connect_ports: Tuple[int, ...] = ()
    #: LANDLOCK_SCOPE_* bits asked for (kept only where the ABI has them).
    scoped: int = 0
    notes: Tuple[str, ...] = field(default=())


# -- syscalls -------------------------------------------------------------------


@functools.cache
def _c() -> SimpleNamespace:
    import ctypes

    try:
        lib = ctypes.CDLL('libc.so.6', use_errno=True)
    except OSError:
        import ctypes.util
        lib = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    lib.syscall.restype = ctypes.c_long

    class RulesetAttr(ctypes.Structure):
        _fields_ = [('handled_access_fs', ctypes.c_uint64), ('handled_access_net', ctypes.c_uint64),
                    ('scoped', ctypes.c_uint64)]

    class PathBeneathAttr(ctypes.Structure):
        _pack_ = 1
        _fields_ = [('allowed_access', ctypes.c_uint64), ('parent_fd', ctypes.c_int32)]

    class NetPortAttr(ctypes.Structure):
        _fields_ = [('allowed_access', ctypes.c_uint64), ('port', ctypes.c_uint64)]

    class OpenHow(ctypes.Structure):
        _fields_ = [('flags', ctypes.c_uint64), ('mode', ctypes.c_uint64), ('resolve', ctypes.c_uint64)]

    numbers = _SYSCALLS.get(platform.machine(), _GENERIC)
    return SimpleNamespace(ctypes=ctypes, lib=lib, RulesetAttr=RulesetAttr,
                           PathBeneathAttr=PathBeneathAttr, NetPortAttr=NetPortAttr, OpenHow=OpenHow,
                           create=numbers[0], add_rule=numbers[1], restrict=numbers[2],
                           openat2=numbers[3])


def _syscall(number: int, *args) -> int:
    """The raw syscall; raises OSError with the kernel's errno (tests fake this one)."""
    c = _c()
    ret = c.lib.syscall(c.ctypes.c_long(number), *args)
    if ret < 0:
        err = c.ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def abi_version() -> Tuple[int, str]:
    """(ABI version, '') or (0, why Landlock is not available)."""
    c = _c()
    try:
        return _syscall(c.create, None, c.ctypes.c_size_t(0), c.ctypes.c_uint32(CREATE_RULESET_VERSION)), ''
    except OSError as e:
        if e.errno == errno.ENOSYS:
            return 0, 'the kernel has no Landlock (landlock_create_ruleset: ENOSYS; Linux 5.13+ needed)'
        if e.errno == errno.EOPNOTSUPP:
            return 0, ('Landlock is built in but not enabled (EOPNOTSUPP): add landlock to the '
                       'lsm= boot parameter')
        return 0, f'landlock_create_ruleset failed: {e}'


def create_ruleset(rules: Rules, abi: int) -> int:
    """A ruleset fd (close-on-exec) holding ``rules``; raises OSError naming a bad path."""
    c = _c()
    attr = c.RulesetAttr(handled_fs(abi), (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0,
                         rules.scoped if abi >= 6 else 0)
    fd = _syscall(c.create, c.ctypes.byref(attr), c.ctypes.c_size_t(c.ctypes.sizeof(attr)),
                  c.ctypes.c_uint32(0))
    try:
        for rule in rules.paths:
            _add_path(fd, rule, abi)
        if abi >= 4:
            for port in rules.connect_ports:
                net = c.NetPortAttr(NET_CONNECT_TCP, port)
                _syscall(c.add_rule, c.ctypes.c_int(fd), c.ctypes.c_int(RULE_NET_PORT),
                         c.ctypes.byref(net), c.ctypes.c_uint32(0))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_path(path: str) -> int:
    """An O_PATH descriptor on ``path`` reached without following any symbolic
    link: the rules name resolved paths, so a link found now was put there
    since (by whoever can write that directory) to widen the rule."""
    c = _c()
    how = c.OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS)
    try:
        return _syscall(c.openat2, c.ctypes.c_int(-100), os.fsencode(path), c.ctypes.byref(how),
                        c.ctypes.c_size_t(c.ctypes.sizeof(how)))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(e.errno, 'a symbolic link appeared in the path after it was resolved; '
                                   'refused (it would widen the rule)') from None
        if e.errno != errno.ENOSYS:
            raise
    return os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)  # before Linux 5.6


def _add_path(ruleset_fd: int, rule: PathRule, abi: int) -> None:
    c = _c()
    try:
        fd = _open_path(rule.path)
    except OSError as e:
        raise OSError(e.errno, f'{rule.path} ({rule.why}): {e.strerror}') from None
    try:
        access = rights(rule.kind) & handled_fs(abi)
        if not os.path.isdir(f'/proc/self/fd/{fd}'):
            access &= FILE_RIGHTS
        attr = c.PathBeneathAttr(access, fd)
        try:
            _syscall(c.add_rule, c.ctypes.c_int(ruleset_fd), c.ctypes.c_int(RULE_PATH_BENEATH),
                     c.ctypes.byref(attr), c.ctypes.c_uint32(0))
        except OSError as e:
            raise OSError(e.errno, f'landlock_add_rule {rule.path} ({rule.why}): {e.strerror}') from None
    finally:
        os.close(fd)


def restrict_self(ruleset_fd: int, abi: int) -> None:
    """Confine the calling thread (it must have no_new_privs)."""
    c = _c()
    flags = RESTRICT_SELF_LOG_NEW_EXEC_ON if abi >= 7 else 0
    _syscall(c.restrict, c.ctypes.c_int(ruleset_fd), c.ctypes.c_uint32(flags))


def probe() -> bool:
    """Whether the calling thread is confined, as the kernel answers it: True when
    opening ``/`` for reading fails with EACCES (see the module docstring)."""
    try:
        fd = os.open('/', os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        return True
    os.close(fd)
    return False


# -- every thread -----------------------------------------------------------------

#: Marks a process whose main thread this package confined: set only for our
#: own re-exec (the pid stays), so the new image knows its inherited domain is
#: ours; read and removed at once, never seen by children.
CONFINED_ENV = 'CHERRYPY_DROPPRIVS_CONFINED'


class Confinement:
    """One ruleset fd, applied thread by thread, and each thread's own probe.

    ``confine_thread`` is a per-thread action (see drop.thread_actions): it
    restricts the calling thread unless the process is already confined by us
    (then the thread inherited the domain from the thread that created it, and
    another call would only stack a layer), and always records the thread's
    own probe. Verification then needs a probe from every thread.
    """

    def __init__(self, rules: Rules, abi: int) -> None:
        self.rules, self.abi = rules, abi
        self.fd: Optional[int] = create_ruleset(rules, abi)
        #: True once the main thread is confined (by us now, or inherited across our exec).
        self.process_confined = False
        self.inherited = False
        self.probed: Dict[int, bool] = {}
        self._lock = threading.Lock()

    def adopt_inherited(self, trusted: bool) -> bool:
        """In a process re-executed after confinement: already confined, stack nothing.

        ``trusted``: the caller knows this process is our own re-exec (not
        root, and it adopted the sockets the old image handed over). Whoever
        starts a process controls its environment, and a domain of theirs
        that only hides ``/`` would pass the probe: without ``trusted`` the
        marker is ignored and our own layer is added.
        """
        marked = os.environ.pop(CONFINED_ENV, None) == str(os.getpid())
        if trusted and marked and probe():
            self.process_confined = self.inherited = True
        return self.inherited

    def exec_environment(self) -> Dict[str, str]:
        """What our own re-exec must carry (see adopt_inherited)."""
        return {CONFINED_ENV: str(os.getpid())} if self.process_confined else {}

    def forget_probes(self) -> None:
        """At each start: thread ids are reused, so old probes prove nothing."""
        with self._lock:
            self.probed.clear()

    def confine_thread(self) -> None:
        tid = threading.get_native_id()
        if not (self.process_confined and probe()):
            if self.fd is None:
                raise OSError(errno.EBADF, 'the Landlock ruleset is already closed')
            restrict_self(self.fd, self.abi)
        confined = probe()
        with self._lock:
            self.probed[tid] = confined
        if not confined:
            raise OSError(errno.EPERM, f'thread {tid} is not confined after landlock_restrict_self')

    def confine_process(self) -> None:
        """The main thread, after the verified drop; marks the process for a re-exec."""
        self.confine_thread()
        self.process_confined = True

    def record_probe(self) -> None:
        """Probe only (no restrict): for threads that must already be confined."""
        confined = probe()
        with self._lock:
            self.probed[threading.get_native_id()] = confined

    def unconfined(self, tids: Sequence[int]) -> List[int]:
        """Of ``tids``, those with no probe saying they are confined."""
        with self._lock:
            return [t for t in tids if not self.probed.get(t)]
