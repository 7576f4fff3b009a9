"""Options to a validated plan: who to drop to, the umask, the flags, the chown paths.

Names and numbers are both accepted. A string is a name first; only when no
such name exists and it is all digits is it taken as a number (chown(1)'s
rule). Anything ambiguous or root-ish is refused here, before anything binds.
A umask string is always octal (``umask 027`` in a shell): a config value of
``'027'`` read as decimal would be a silent disaster. No CherryPy imports.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import nameservice

IdSpec = Union[int, str]


#: Largest valid id: (uid_t)-1 means "unchanged" to the kernel, so it is out.
MAX_ID = 2**32 - 2


_ID_ACCEPTED = 'a name that exists, or a number in 1..{max} (as an int or all-digit string)'


class _Value:
    """Equality, hash and repr from ``__slots__``, read-only after construction.

    Plain classes rather than dataclasses: each dataclass costs ~0.3 ms at import.
    """

    __slots__: Tuple[str, ...] = ()

    def _fields(self) -> tuple:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._fields() == self._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        args = ', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)
        return f'{type(self).__name__}({args})'

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f'{type(self).__name__} is read-only')

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)


class Identity(_Value):
    """A fully resolved target identity, ready for the set*id calls."""

    __slots__ = ('uid', 'gid', 'groups', 'user', 'group', 'home', 'shell')
    uid: int
    gid: int
    #: The exact list getgroups() must show afterwards: primary group first.
    groups: Tuple[int, ...]
    user: Optional[str]
    group: Optional[str]
    home: str
    shell: str

    def __init__(self, uid: int, gid: int, groups: Tuple[int, ...], user: Optional[str],
                 group: Optional[str], home: str, shell: str) -> None:
        self._set(uid=uid, gid=gid, groups=groups, user=user, group=group, home=home, shell=shell)

    def describe(self) -> str:
        """``uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)``, as id(1)."""
        return format_ids(self.uid, self.gid, self.groups)


#: Names of ids, learnt with each identity lookup (for log lines) or asked here.
_NAMES: Dict[Tuple[str, int], Optional[str]] = {}


def user_name(uid: int) -> Optional[str]:
    if ('u', uid) not in _NAMES:
        _NAMES['u', uid] = _lookup_user_name(uid)
    return _NAMES['u', uid]


def group_name(gid: int) -> Optional[str]:
    if ('g', gid) not in _NAMES:
        _NAMES['g', gid] = _lookup_group_name(gid)
    return _NAMES['g', gid]


def _lookup_user_name(uid: int) -> Optional[str]:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _lookup_group_name(gid: int) -> Optional[str]:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _fmt(num: int, name: Optional[str]) -> str:
    return f'{num}({name})' if name else str(num)


def format_ids(uid: int, gid: int, groups: Iterable[int]) -> str:
    """Format ids with names the way id(1) does, for log lines."""
    gl = ','.join(_fmt(g, group_name(g)) for g in groups) or '(none)'
    return f'uid={_fmt(uid, user_name(uid))} gid={_fmt(gid, group_name(gid))} groups={gl}'


#: Longer user or group names are refused before any lookup: the name service
#: (e.g. systemd's userdb module) may abort the whole process on a huge one.
MAX_NAME = 256


def check_id_form(what: str, value: object) -> None:
    """The checks of a user or group that need no lookup (type, length)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f'{what} must be {_ID_ACCEPTED.format(max=MAX_ID)}; '
            f'got {value!r:.80} ({type(value).__name__})'
        )
    if isinstance(value, str) and len(value) > MAX_NAME:
        raise ValueError(
            f'{what} {value[:40]!r}... is {len(value)} characters long; names are at most '
            f'{MAX_NAME}; accepted: {_ID_ACCEPTED.format(max=MAX_ID)}'
        )


#: What a lookup keeps of a password entry: (name, uid, gid, home, shell).
Entry = Tuple[str, int, int, str, str]


def resolve_uid(value: IdSpec) -> Tuple[int, Optional[Entry]]:
    """Return (uid, password entry or None) for a user name or number."""
    check_id_form('uid', value)
    return nameservice.ask('lookup_uid', value)


def resolve_gid(value: IdSpec, what: str = 'gid') -> int:
    """Return the gid for a group name or number."""
    check_id_form(what, value)
    return nameservice.ask('lookup_gid', value, what)


def check_groups_type(groups: object) -> Optional[Tuple[IdSpec, ...]]:
    """The checks of ``groups`` that need no lookup; the entries as a tuple."""
    if groups is None:
        return None
    if isinstance(groups, (str, bytes)) or not isinstance(groups, (list, tuple, set, frozenset)):
        raise TypeError(
            f'groups must be a list of group names or numbers (e.g. [\'adm\', 4]), '
            f'[] for none, or None for the user\'s groups; got {groups!r}'
        )
    for g in groups:
        check_id_form('groups entry', g)
    return tuple(groups)


def check_groups_form(groups: Optional[Sequence[IdSpec]]) -> Optional[Tuple[int, ...]]:
    """Validate an explicit ``groups`` list and resolve every entry."""
    entries = check_groups_type(groups)
    return None if entries is None else nameservice.ask('lookup_groups', entries)


def resolve_identity(
    uid: IdSpec,
    gid: Optional[IdSpec] = None,
    groups: Optional[Sequence[IdSpec]] = None,
) -> Identity:
    """Resolve the full target identity, refusing anything ambiguous.

    - ``gid`` None: the user's primary group from the password database.
    - ``groups`` None: the user's groups from the group database (as
      ``id USER``); ``[]``: the primary group only; a list: the primary group
      plus exactly those.
    - A numeric uid with no passwd entry needs ``gid``; it gets the primary
      group only and ``HOME=/``.

    Asked of the name service from a child process (see nameservice), which
    also names the ids this process now has, for the log lines.
    """
    check_id_form('uid', uid)
    if gid is not None:
        check_id_form('gid', gid)
    entries = check_groups_type(groups)
    fields, names = nameservice.ask('lookup_identity', uid, gid, entries, _ids_now())
    _NAMES.update(names)
    return Identity(*fields)


def _ids_now() -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    return tuple(os.getresuid()), tuple(os.getresgid()), tuple(os.getgroups())


def answers_for_exec() -> str:
    """What this process looked up, as the image its restart re-executes will
    ask it (nameservice.HANDED_ENV): that image then forks no lookup child.

    An identity answer is keyed by the ids of the process that asks (it names
    them too, for the log lines). The re-executed image holds the ids this
    process holds now, so its answer is keyed by those, with their names;
    left out if one of them has no known name here.
    """
    ids = _ids_now()
    identity_key = nameservice.key_of('lookup_identity')
    handed = {}
    for key, answer in nameservice.answers().items():
        if key[:2] == identity_key:
            fields = answer[0]
            wanted = {('u', u) for u in (fields[0], *ids[0])}
            wanted.update(('g', g) for g in (fields[1], *fields[2], *ids[1], *ids[2]))
            if not wanted <= _NAMES.keys():
                continue
            key, answer = key[:-1] + (ids,), (fields, {k: _NAMES[k] for k in wanted})
        handed[key] = answer
    return nameservice.for_exec(handed)


ACCEPTED = "an int in 0..0o777, an octal string such as '027' or '0o027', or None"


def parse_umask(value: Union[int, str, None]) -> Optional[int]:
    """Return the umask as an int, or None to leave it unchanged.

    Strings are always octal (as ``umask 027`` in a shell), because a config
    file value of ``'027'`` read as decimal would be a silent disaster.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f'umask must be {ACCEPTED}; got {value!r} ({type(value).__name__})')
    shown = value
    if isinstance(value, str):
        text = value.strip().lower()
        digits = text[2:] if text.startswith('0o') else text
        if not digits or any(c not in '01234567' for c in digits):
            raise ValueError(f'umask {value!r} is not octal; accepted: {ACCEPTED}')
        value = int(digits, 8)
    if not 0 <= value <= 0o777:
        raise ValueError(f'umask {shown!r} is out of range; accepted: {ACCEPTED}')
    return value


class Plan(_Value):
    """Validated input for a drop. ``target`` None keeps the current user."""

    __slots__ = ('target', 'umask', 'require_root', 'no_new_privs')
    target: Optional[Identity]
    umask: Optional[int]
    require_root: bool
    no_new_privs: bool

    def __init__(self, target: Optional[Identity], umask: Optional[int],
                 require_root: bool = False, no_new_privs: bool = False) -> None:
        self._set(target=target, umask=umask, require_root=require_root,
                  no_new_privs=no_new_privs)

    def replace(self, **changes: object) -> Plan:
        """A copy with some fields changed (as dataclasses.replace)."""
        fields = {n: getattr(self, n) for n in self.__slots__}
        fields.update(changes)
        return Plan(**fields)  # type: ignore[arg-type]


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


def check_chown(value: Optional[Sequence[str]]) -> List[str]:
    """Validate the ``chown`` option: a list of path strings, none a system directory.

    TypeError for a wrong type, ValueError for a system directory (``/``,
    ``/etc``, ``/var/log``, anything under ``/usr``... see
    :data:`.SYSTEM_DIRS` and :data:`.SYSTEM_TREES`).
    """
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f'chown must be a list of paths (e.g. [\'/var/lib/app/sessions\']); got {value!r}')
    for p in value:
        if not isinstance(p, str) or not p:
            raise TypeError(f'chown entries must be non-empty path strings; got {p!r}')
    from .files import normalize, system_path_reason  # only when there are paths

    paths = [normalize(p) for p in value]
    for p in paths:
        reason = system_path_reason(p)
        if reason:
            raise ValueError(
                f'chown: {reason}; handing it to the target user would give the site a '
                f'directory the system or root relies on. Accepted: the site\'s own paths '
                f'below the shared ones, e.g. /var/lib/mysite/sessions or /srv/mysite/uploads'
            )
    return paths
