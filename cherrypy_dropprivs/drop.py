"""The drop: set*id sequence, environment, umask, per-thread settings, verification.

A plan (identity.make_plan) is carried out on the calling thread, then
verified against the kernel, after OpenSSH's permanently_set_uid: every id
re-read, regaining root must fail, every thread read from /proc, no
controlling terminal, no child left holding root. Order matters: groups,
then gid, then uid, all three ids at once (setresgid/setresuid), so no saved
root id is left to regain; glibc applies each call to every thread.
No CherryPy imports: drop_privileges() serves code outside the bus too.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import kernel, nameservice
from .errors import PrivilegeDropError, VerificationError
from .identity import Identity, IdSpec, Plan, format_ids, make_plan
from .kernel import ThreadCreds, current_umask, thread_creds

#: What a drop did: it changed identity, found the target already in place
#: (a re-executed process), or ran without root and changed no identity.
DROPPED, ALREADY_TARGET, NOT_ROOT = 'dropped', 'already-target', 'not-root'


class Snapshot:
    """The process's identity at one moment (calling thread)."""

    __slots__ = ('uids', 'gids', 'groups', 'umask', 'home')

    def __init__(self, uids: Tuple[int, int, int], gids: Tuple[int, int, int],
                 groups: Tuple[int, ...], umask: int, home: Optional[str]) -> None:
        self.uids, self.gids, self.groups, self.umask, self.home = uids, gids, groups, umask, home

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            os.getresuid(), os.getresgid(), tuple(os.getgroups()), current_umask(), os.environ.get('HOME')
        )

    def describe(self) -> str:
        return f'{format_ids(self.uids[1], self.gids[1], self.groups)} umask={self.umask:04o}'


class DropRecord:
    """Who the process was before and after, and what was done."""

    __slots__ = ('before', 'after', 'target', 'outcome', 'threads_checked', 'terminal')

    def __init__(self, before: Snapshot, after: Snapshot, target: Optional[Identity],
                 outcome: str, threads_checked: int = 0, terminal: Tuple[str, ...] = ()) -> None:
        self.before, self.after, self.target, self.outcome = before, after, target, outcome
        self.threads_checked = threads_checked
        #: What was done about a controlling terminal before the drop (() if nothing).
        self.terminal = terminal


def classify(plan: Plan) -> str:
    """Which of the three outcomes carrying out ``plan`` now would have."""
    if holds_root():
        if plan.target is None:
            raise PrivilegeDropError(
                'resolve', 'uid=None keeps the current user, and the current user is root: name a user'
            )
        return DROPPED
    if plan.require_root:
        raise PrivilegeDropError(
            'require_root', f'not started as root (uid={os.getuid()}), but require_root is set'
        )
    held = root_groups_held()
    if held:
        raise PrivilegeDropError(
            'root group',
            f'not started as root (uid={os.getuid()}), but holding group 0: {", ".join(held)}; '
            f'without root nothing can remove it: start as root to drop it, or without group 0 '
            f'(systemd: a Group= other than root, no SupplementaryGroups=root)',
        )
    t = plan.target
    if (
        t is not None
        and os.getresuid() == (t.uid,) * 3
        and os.getresgid() == (t.gid,) * 3
        and set(os.getgroups()) == set(t.groups)
    ):
        return ALREADY_TARGET
    # Not root and not exactly the target (e.g. other groups): change nothing.
    return NOT_ROOT


def thread_actions(plan: Plan, outcome: str) -> List[Callable[[], None]]:
    """What every thread must do to itself: capset and prctl are per thread
    (glibc broadcasts only set*id). Run in each server thread before it
    creates its workers, and in older background threads after the drop."""
    actions: List[Callable[[], None]] = [kernel.clear_inheritable]  # setresuid never clears CapInh
    if outcome in (NOT_ROOT, ALREADY_TARGET):
        actions.append(kernel.clear_thread_capabilities)
    if plan.no_new_privs:
        actions.append(kernel.set_no_new_privs)
    return actions


def target_of(plan: Plan) -> Identity:
    """The plan's target, for the outcomes that have one (classify ensures it)."""
    if plan.target is None:
        raise PrivilegeDropError('resolve', 'the plan has no target user')
    return plan.target


def carry_out(plan: Plan) -> DropRecord:
    """Change the calling process's identity per ``plan``; verify only ids.

    Thread-wide checks are left to the caller, which may first have to act
    in other threads (capabilities and no_new_privs are per thread).
    """
    nameservice.reap()  # the lookup's child, still root, must not outlive the drop
    before = Snapshot.take()
    outcome = classify(plan)
    # Checked before anything changes: over the limit, the dropped process
    # could not start the threads it still needs (nor re-exec).
    check_nproc(target_of(plan).uid if outcome == DROPPED else os.getuid())
    # Read once: it decides both a refusal here and what to load ahead.
    suid_dumpable = kernel.suid_dumpable() if outcome == DROPPED else 0
    if suid_dumpable == 1:
        check_dumpable_window(target_of(plan))
    tty: Tuple[str, ...] = ()
    if _step('look at the controlling terminal', kernel.tty_nr) and (
            outcome == DROPPED or _foreign_terminal()):
        from . import terminal  # only with a controlling terminal

        tty = tuple(_step('give up the controlling terminal', terminal.give_up) or ())
    _load_ahead(plan, outcome, suid_dumpable)
    if outcome == DROPPED:
        # setresuid never clears CapInh: empty the caller's while root, as the
        # plugin's arm listener does (libc.py, if needed at all, loads now).
        _step('clear the inheritable capabilities', kernel.clear_inheritable)
        switch_credentials(target_of(plan))
        # The set*id calls made the process non-dumpable, unless fs.suid_dumpable
        # is 1 (then Yama keeps the target's other processes out, see
        # check_dumpable_window): undone at once, before anything else.
        if _step('look at dumpable', kernel.is_dumpable):
            _step('prctl(PR_SET_DUMPABLE, 0)', kernel.make_undumpable)
        # setresuid cleared permitted, effective and ambient in every thread,
        # but not inheritable: clear it here and in older background threads.
        _step('clear capabilities', kernel.clear_thread_capabilities)
        apply_to_existing_threads(
            [kernel.clear_thread_capabilities], clear_caps=True, no_new_privs=False)
    else:
        _step('clear capabilities', kernel.clear_thread_capabilities)
    if plan.umask is not None:
        os.umask(plan.umask)
    if outcome == DROPPED:
        apply_login_environment(target_of(plan), before.uids[1], before.home)
    if plan.no_new_privs:
        _step('prctl(PR_SET_NO_NEW_PRIVS)', kernel.set_no_new_privs)
    return DropRecord(before, Snapshot.take(), plan.target, outcome, terminal=tty)


def _load_ahead(plan: Plan, outcome: str, suid_dumpable: int) -> None:
    """Load now the modules this process may need after the drop, while root
    can read what the target may not: libc.py for no_new_privs and, where
    fs.suid_dumpable is 1, to make the process non-dumpable; older_threads
    and processes (threads to reach, children to check) where the target
    cannot read this package. Where it can, nothing is loaded ahead of need."""
    if plan.no_new_privs or (outcome == DROPPED and suid_dumpable == 1):
        from . import libc  # noqa: F401
    here = os.path.dirname(os.path.realpath(__file__))
    if outcome == DROPPED and not kernel.readable_by_others(os.path.join(here, 'older_threads.py')):
        from . import older_threads, processes  # noqa: F401


def verify(plan: Plan, record: DropRecord) -> DropRecord:
    """Check the result in the kernel's view; returns the record with the thread count."""
    if record.outcome in (DROPPED, ALREADY_TARGET):
        n = verify_dropped(target_of(plan), plan.no_new_privs)
    else:
        n = verify_threads(None, plan.no_new_privs)
    if record.outcome == DROPPED or record.terminal:
        verify_no_terminal()
    if record.outcome == DROPPED:
        verify_not_dumpable()
    verify_no_root_children()
    return DropRecord(record.before, record.after, record.target, record.outcome, n,
                      record.terminal)


def drop_privileges(
    uid: Optional[IdSpec] = 'nobody',
    gid: Optional[IdSpec] = None,
    *,
    groups: Optional[Sequence[IdSpec]] = None,
    umask: Union[int, str, None] = 0o077,
    require_root: bool = False,
    no_new_privs: bool = False,
) -> DropRecord:
    """Drop root for good and verify it; for code outside CherryPy's bus.

    Call it before starting threads: capabilities and no_new_privs are per
    thread, and a thread that still holds any makes verification fail.
    On PrivilegeDropError the process is in an unknown state and must exit.
    Not root: no identity change (the record's outcome says ``not-root``).
    """
    plan = make_plan(uid, gid, groups, umask, require_root, no_new_privs)
    return verify(plan, carry_out(plan))


def _foreign_terminal() -> bool:
    """Not root, but with a controlling terminal that belongs to another user (root's)."""
    from . import terminal

    owner = _step('look at the controlling terminal', terminal.terminal_owner)
    return owner is not None and owner != os.getuid()


def _step(name: str, func, *args):
    """Call ``func(*args)``; an OSError becomes a PrivilegeDropError naming the step."""
    try:
        return func(*args)
    except OSError as e:
        raise PrivilegeDropError(name, 'the kernel refused', e) from e


def holds_root() -> bool:
    """True if any of the real, effective or saved uids is 0."""
    return 0 in os.getresuid()


def root_groups_held() -> list:
    """Where this process holds group 0 (real/effective/saved gid, supplementary); [] if nowhere."""
    held = [f'{name} gid 0' for name, g in zip(('real', 'effective', 'saved'), os.getresgid()) if g == 0]
    if 0 in os.getgroups():
        held.append('supplementary group 0')
    return held


def switch_credentials(target: Identity) -> None:
    """Permanently become ``target``. Raises PrivilegeDropError naming the step."""
    if os.geteuid() != 0 and holds_root():
        # A saved or real uid of 0 with another euid: take euid 0 back first,
        # so the calls below are allowed to set every id.
        _step('seteuid(0)', os.seteuid, 0)
    _step(f'setgroups({list(target.groups)})', os.setgroups, list(target.groups))
    _step(f'setresgid({target.gid})', os.setresgid, target.gid, target.gid, target.gid)
    _step(f'setresuid({target.uid})', os.setresuid, target.uid, target.uid, target.uid)


def login_environment(target: Identity) -> Dict[str, str]:
    name = target.user if target.user is not None else str(target.uid)
    return {'HOME': target.home, 'USER': name, 'LOGNAME': name, 'SHELL': target.shell}


def apply_login_environment(
    target: Identity,
    old_uid: int,
    old_home: Optional[str],
) -> Dict[str, str]:
    """Set HOME, USER, LOGNAME and SHELL; unset per-user paths of the old user.

    Returns the variables set.
    """
    env = os.environ
    new = login_environment(target)
    env.update(new)
    stale = {f'/run/user/{old_uid}'}
    if old_home:
        stale.add(old_home)
    for var in ('XDG_RUNTIME_DIR', 'MAIL'):
        value = env.get(var)
        if value and (value in stale or var == 'MAIL'):
            del env[var]
    return new


def _must_fail(what: str, func: Callable, *args) -> None:
    try:
        func(*args)
    except PermissionError:
        return
    except OSError as e:
        raise VerificationError('regain', f'{what} failed oddly, not with EPERM', e) from e
    raise VerificationError('regain', f'{what} succeeded: root can be regained')


def verify_ids(target: Identity) -> None:
    """getres[ug]id and getgroups equal the target exactly."""
    resuid = os.getresuid()
    if resuid != (target.uid,) * 3:
        raise VerificationError('getresuid', f'is {resuid}, expected {(target.uid,) * 3}')
    resgid = os.getresgid()
    if resgid != (target.gid,) * 3:
        raise VerificationError('getresgid', f'is {resgid}, expected {(target.gid,) * 3}')
    groups = sorted(set(os.getgroups()))
    if groups != sorted(set(target.groups)):
        raise VerificationError('getgroups', f'is {groups}, expected {sorted(set(target.groups))}')


def verify_cannot_regain_root() -> None:
    _must_fail('setuid(0)', os.setuid, 0)
    _must_fail('seteuid(0)', os.seteuid, 0)
    _must_fail('setgid(0)', os.setgid, 0)
    _must_fail('setegid(0)', os.setegid, 0)
    _must_fail('setgroups([0])', os.setgroups, [0])


def thread_problems(
    threads: List[ThreadCreds],
    target: Optional[Identity],
    no_new_privs: bool = False,
) -> List[str]:
    """Every way a thread differs from the target; [] when all is well.

    ``target`` None checks capabilities (and no_new_privs) only: the case of
    a non-root process that keeps its user.
    """
    problems = []
    for t in threads:
        where = f'thread {t.tid} ({t.name})'
        if target is not None:
            if t.uids != (target.uid,) * 4:
                problems.append(f'{where}: Uid {t.uids}, expected {target.uid} x4')
            if t.gids != (target.gid,) * 4:
                problems.append(f'{where}: Gid {t.gids}, expected {target.gid} x4')
            if sorted(set(t.groups)) != sorted(set(target.groups)):
                problems.append(f'{where}: Groups {list(t.groups)}, expected {list(target.groups)}')
        for label, value in (('CapPrm', t.cap_prm), ('CapEff', t.cap_eff), ('CapAmb', t.cap_amb),
                             ('CapInh', t.cap_inh)):
            if value:
                problems.append(f'{where}: {label} {value:016x}, expected 0')
        if no_new_privs and not t.no_new_privs:
            problems.append(f'{where}: NoNewPrivs 0, expected 1')
    return problems


def verify_threads(target: Optional[Identity], no_new_privs: bool = False) -> int:
    """Check every thread in /proc/self/task; return how many were checked."""
    if not sys.platform.startswith('linux'):
        return 0
    threads = thread_creds('self')
    problems = thread_problems(threads, target, no_new_privs)
    if problems:
        raise VerificationError('/proc/self/task', '; '.join(problems))
    return len(threads)


def verify_not_dumpable() -> None:
    """Not dumpable, in the kernel's view: its /proc files belong to root."""
    if sys.platform.startswith('linux') and kernel.is_dumpable():
        raise VerificationError(
            'dumpable', 'the process is dumpable: other processes of the target user could ptrace '
            'it or take its descriptors (pidfd_getfd)')


def verify_no_terminal() -> None:
    """No controlling terminal: /proc/self/stat field 7 (tty_nr) is 0."""
    if not sys.platform.startswith('linux'):
        return
    nr = kernel.tty_nr()
    if nr:
        raise VerificationError(
            'terminal', f'still has a controlling terminal (tty_nr {nr:#x}): it could type '
            f'into that terminal (TIOCSTI)')


def verify_dropped(target: Identity, no_new_privs: bool = False) -> int:
    """The full check after a drop from root; returns the thread count."""
    verify_ids(target)
    verify_cannot_regain_root()
    verify_ids(target)  # checked twice, as OpenSSH does: the attempts must not have changed anything
    return verify_threads(target, no_new_privs)


def _lacking(t: ThreadCreds, clear_caps: bool, no_new_privs: bool,
             need: Optional[Callable[[ThreadCreds], Optional[str]]] = None) -> List[str]:
    out = []
    if clear_caps:
        for label, value in (('CapPrm', t.cap_prm), ('CapEff', t.cap_eff), ('CapAmb', t.cap_amb),
                             ('CapInh', t.cap_inh)):
            if value:
                out.append(f'{label} {value:016x}')
    if no_new_privs and not t.no_new_privs:
        out.append('NoNewPrivs 0')
    extra = need(t) if need is not None else None
    if extra:
        out.append(extra)
    return out


def apply_to_existing_threads(
    actions: Sequence[Callable[[], None]],
    clear_caps: bool,
    no_new_privs: bool,
    need: Optional[Callable[[ThreadCreds], Optional[str]]] = None,
) -> int:
    """Run ``actions`` in every older background thread that needs them.

    ``need(creds)``, if given, names one more thing a thread lacks (e.g. a
    Landlock probe), or returns None. Returns how many threads were handled.
    Raises PrivilegeDropError naming each thread that still holds
    capabilities, lacks no_new_privs, or still needs what ``need`` names.
    """
    if not actions or not (clear_caps or no_new_privs or need):
        return 0
    me = threading.get_native_id()
    lacking = [c for c in thread_creds('self')
               if c.tid != me and _lacking(c, clear_caps, no_new_privs, need)]
    if not lacking:
        return 0  # the usual case: one sweep, nothing to reach
    from .older_threads import reach

    return reach(lacking, actions, lambda c: _lacking(c, clear_caps, no_new_privs, need))


def _has_children() -> bool:
    """Whether this process has any child, live or not yet reaped (one syscall;
    waitid with WNOWAIT reaps nothing)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WSTOPPED | os.WCONTINUED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def verify_no_root_children() -> None:
    """Fail closed (VerificationError) naming every descendant that still holds root."""
    if not _has_children():
        return  # the usual case: no scan of /proc
    from .processes import root_holding_descendants  # a scan of /proc: only with children

    found = root_holding_descendants()
    if found:
        raise VerificationError(
            'child processes',
            '; '.join(found) + '; set*id changes only this process, never its children: start '
            'helpers after the drop (a start listener above the drop\'s priority), or stop them '
            'before it')


#: Threads started lazily after the gate opens besides cheroot's one per
#: server: e.g. the session-cleanup Monitor on the first request with
#: sessions on, or a Timer a handler uses to call engine.restart().
RESERVE = 2


def later_threads() -> int:
    """Threads this process will still start: one per held cheroot server, plus RESERVE."""
    servers = sum(1 for t in threading.enumerate() if t.name.startswith('HTTPServer '))
    return servers + RESERVE


def _tasks_on_system() -> int:
    """All tasks (threads) on the system, from /proc/loadavg ("running/total")."""
    try:
        with open('/proc/loadavg') as f:
            return int(f.read().split()[3].split('/')[1])
    except (OSError, ValueError, IndexError):
        return 1 << 62


def check_dumpable_window(target: Identity) -> None:
    """Fail closed (PrivilegeDropError) where the drop would leave a window open;
    called where fs.suid_dumpable is 1.

    The kernel then makes the process dumpable at each set*id call; until it
    is made non-dumpable again, any process of the target user may trace it
    or take its descriptors with pidfd_getfd (a reviewer took the port-80
    socket so). Yama's ptrace_scope 1 or more keeps those out; 0 or 2 for
    suid_dumpable leaves no window.
    """
    scope = kernel.ptrace_scope()
    if scope >= 1:
        return
    raise PrivilegeDropError(
        'fs.suid_dumpable',
        f'it is 1 and kernel.yama.ptrace_scope is {"0" if scope == 0 else "absent (no Yama)"}: '
        f'from the set*id calls until the process is made non-dumpable again, any process of '
        f'user {target.user or target.uid} could trace it or take its listening sockets '
        f'(pidfd_getfd); set fs.suid_dumpable to 0 (or 2), or kernel.yama.ptrace_scope to 1 '
        f'or more',
    )


def check_nproc(uid: int) -> None:
    """Fail closed (PrivilegeDropError) unless ``uid``'s tasks will fit under RLIMIT_NPROC."""
    if uid == 0:
        return
    soft = kernel.nproc_soft_limit()
    if soft is None or _tasks_on_system() + later_threads() <= soft:
        return  # even every task on the system would fit: no scan of /proc
    from .processes import tasks_of_uid  # a scan of /proc: only near the limit

    others = tasks_of_uid(uid, os.getpid())
    mine = len(os.listdir('/proc/self/task'))
    later = later_threads()
    total = others + mine + later
    if total > soft:
        raise PrivilegeDropError(
            'RLIMIT_NPROC',
            f'the limit is {soft} tasks for uid {uid}, which will need {total}: {mine} threads of '
            f'this process, {later} it starts later, {others} of other processes of uid {uid}; '
            f'raise it (systemd LimitNPROC=, conf nproc, ulimit -u) or use fewer threads '
            f'(server.thread_pool)',
        )
