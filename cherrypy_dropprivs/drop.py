"""The whole drop as one plain function, plus the pieces the plugin reuses.

A plan is validated first (bad input never reaches a set*id call), then
carried out on the calling thread, then verified against the kernel.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

from . import capabilities, children, limits, terminal, thread_sweep
from .credentials import holds_root, root_groups_held, switch_credentials
from .environment import apply_login_environment
from .errors import PrivilegeDropError
from .identity import Identity, IdSpec, format_ids, resolve_identity
from .umask import current_umask, parse_umask
from .verify import verify_dropped, verify_no_terminal, verify_threads

#: What a drop did: it changed identity, found the target already in place
#: (a re-executed process), or ran without root and changed no identity.
DROPPED, ALREADY_TARGET, NOT_ROOT = 'dropped', 'already-target', 'not-root'


@dataclass(frozen=True)
class Plan:
    """Validated input for a drop. ``target`` None keeps the current user."""

    target: Optional[Identity]
    umask: Optional[int]
    require_root: bool = False
    no_new_privs: bool = False


@dataclass(frozen=True)
class Snapshot:
    """The process's identity at one moment (calling thread)."""

    uids: Tuple[int, int, int]
    gids: Tuple[int, int, int]
    groups: Tuple[int, ...]
    umask: int
    home: Optional[str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            os.getresuid(), os.getresgid(), tuple(os.getgroups()), current_umask(), os.environ.get('HOME')
        )

    def describe(self) -> str:
        return f'{format_ids(self.uids[1], self.gids[1], self.groups)} umask={self.umask:04o}'


@dataclass(frozen=True)
class DropRecord:
    """Who the process was before and after, and what was done."""

    before: Snapshot
    after: Snapshot
    target: Optional[Identity]
    outcome: str
    threads_checked: int = 0
    #: What was done about a controlling terminal before the drop ([] if nothing).
    terminal: Tuple[str, ...] = ()


def make_plan(
    uid: Optional[IdSpec] = 'nobody',
    gid: Optional[IdSpec] = None,
    groups: Optional[Sequence[IdSpec]] = None,
    umask: Union[int, str, None] = 0o077,
    require_root: bool = False,
    no_new_privs: bool = False,
) -> Plan:
    """Validate and resolve everything; raises ValueError/TypeError on bad input."""
    if uid is None:
        if gid is not None or groups is not None:
            raise ValueError(
                'gid and groups need a uid: with uid=None the user is kept, so its groups '
                'cannot change either; give uid as well'
            )
        target = None
    else:
        target = resolve_identity(uid, gid, groups)
    for name, flag in (('require_root', require_root), ('no_new_privs', no_new_privs)):
        if not isinstance(flag, bool):
            raise TypeError(f'{name} must be True or False; got {flag!r}')
    return Plan(target, parse_umask(umask), require_root, no_new_privs)


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
    before = Snapshot.take()
    outcome = classify(plan)
    # Checked before anything changes: over the limit, the dropped process
    # could not start the threads it still needs (nor re-exec).
    limits.check_nproc(target_of(plan).uid if outcome == DROPPED else os.getuid())
    tty: Tuple[str, ...] = ()
    if outcome == DROPPED or _foreign_terminal():
        tty = tuple(_step('give up the controlling terminal', terminal.give_up) or ())
    if outcome == DROPPED:
        switch_credentials(target_of(plan))
        # setresuid cleared permitted, effective and ambient in every thread,
        # but not inheritable: clear it here and in older background threads.
        _step('clear capabilities', capabilities.clear_thread_capabilities)
        thread_sweep.apply_to_existing_threads(
            [capabilities.clear_thread_capabilities], clear_caps=True, no_new_privs=False)
    else:
        _step('clear capabilities', capabilities.clear_thread_capabilities)
    if plan.umask is not None:
        os.umask(plan.umask)
    if outcome == DROPPED:
        apply_login_environment(target_of(plan), before.uids[1], before.home)
    if plan.no_new_privs:
        _step('prctl(PR_SET_NO_NEW_PRIVS)', capabilities.set_no_new_privs)
    return DropRecord(before, Snapshot.take(), plan.target, outcome, terminal=tty)


def verify(plan: Plan, record: DropRecord) -> DropRecord:
    """Check the result in the kernel's view; returns the record with the thread count."""
    if record.outcome in (DROPPED, ALREADY_TARGET):
        n = verify_dropped(target_of(plan), plan.no_new_privs)
    else:
        n = verify_threads(None, plan.no_new_privs)
    if record.outcome == DROPPED or record.terminal:
        verify_no_terminal()
    children.verify_no_root_children()
    return dataclasses.replace(record, threads_checked=n)


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
    owner = _step('look at the controlling terminal', terminal.terminal_owner)
    return owner is not None and owner != os.getuid()


def _step(name: str, func):
    try:
        return func()
    except OSError as e:
        raise PrivilegeDropError(name, 'the kernel refused', e) from e
