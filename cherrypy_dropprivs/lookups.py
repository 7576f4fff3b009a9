"""Users and groups looked up by name or number, as plain data.

The code nameservice runs in its short-lived child: the site itself loads
neither this module nor the name-service modules glibc maps for it (it runs
here only when the process already has other threads). Each function takes
and returns plain data, and refuses with ValueError or TypeError (root,
out of range, unknown name) with the message the user sees. No CherryPy.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Dict, Optional, Tuple

from .identity import (
    _ID_ACCEPTED,
    MAX_ID,
    Entry,
    IdSpec,
    _lookup_group_name,
    _lookup_user_name,
)


def lookup_uid(value: IdSpec) -> Tuple[int, Optional[Entry]]:
    shown = value
    if isinstance(value, str):
        if not value:
            raise ValueError(f'uid is an empty string; accepted: {_ID_ACCEPTED.format(max=MAX_ID)}')
        try:
            pw = pwd.getpwnam(value)
        except KeyError:
            if not (value.isascii() and value.isdigit()):
                raise ValueError(
                    f'unknown user {value!r}: no such name in the password database; '
                    f'accepted: {_ID_ACCEPTED.format(max=MAX_ID)}'
                ) from None
            value = int(value)
        else:
            return _check_range('uid', pw.pw_uid, value), _entry(pw)
    uid = _check_range('uid', value, shown)
    try:
        return uid, _entry(pwd.getpwuid(uid))
    except KeyError:
        return uid, None


def _entry(pw: pwd.struct_passwd) -> Entry:
    return pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell


def lookup_gid(value: IdSpec, what: str = 'gid') -> int:
    shown = value
    if isinstance(value, str):
        if not value:
            raise ValueError(f'{what} is an empty string; accepted: {_ID_ACCEPTED.format(max=MAX_ID)}')
        try:
            return _check_range(what, grp.getgrnam(value).gr_gid, value)
        except KeyError:
            if not (value.isascii() and value.isdigit()):
                raise ValueError(
                    f'unknown group {value!r} in {what}: no such name in the group database; '
                    f'accepted: {_ID_ACCEPTED.format(max=MAX_ID)}'
                ) from None
            value = int(value)
    return _check_range(what, value, shown)


def lookup_groups(entries: Tuple[IdSpec, ...]) -> Tuple[int, ...]:
    return tuple(lookup_gid(g, what='groups entry') for g in entries)


def lookup_identity(
    uid: IdSpec,
    gid: Optional[IdSpec],
    groups: Optional[Tuple[IdSpec, ...]],
    shown: Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]],
) -> Tuple[tuple, Dict[Tuple[str, int], Optional[str]]]:
    """The Identity's fields, and the names of its ids and of ``shown``'s."""
    num_uid, entry = lookup_uid(uid)
    extra = None if groups is None else lookup_groups(groups)
    if gid is None:
        if entry is None:
            raise ValueError(
                f'uid {uid!r} has no entry in the password database, so it has no primary '
                f'group: give gid as well (a group name or number)'
            )
        num_gid = _check_range('primary group of user ' + entry[0], entry[2], entry[2])
    else:
        num_gid = lookup_gid(gid)

    if extra is None:
        if entry is not None:
            found = os.getgrouplist(entry[0], num_gid)
            for g in found:
                if g == 0:
                    raise ValueError(
                        f'user {entry[0]!r} is a member of the root group (gid 0) in the '
                        f'group database; pass groups=[...] explicitly to choose its groups'
                    )
            extra = tuple(found)
        else:
            extra = ()
    ordered = tuple([num_gid] + [g for g in dict.fromkeys(extra) if g != num_gid])

    if entry is not None:
        name, home, shell = entry[0], entry[3] or '/', entry[4] or '/bin/sh'
    else:
        name, home, shell = None, '/', '/bin/sh'
    uids, gids, groups_now = shown
    names: Dict[Tuple[str, int], Optional[str]] = {('u', u): _lookup_user_name(u) for u in {num_uid, *uids}}
    names.update({('g', g): _lookup_group_name(g) for g in {num_gid, *ordered, *gids, *groups_now}})
    fields = (num_uid, num_gid, ordered, name, names['g', num_gid], home, shell)
    return fields, names


def _check_range(what: str, num: int, shown: object) -> int:
    if not 0 <= num <= MAX_ID:
        raise ValueError(
            f'{what} {shown!r} is out of range; accepted: {_ID_ACCEPTED.format(max=MAX_ID)}'
        )
    if num == 0:
        raise ValueError(
            f'{what} {shown!r} is root (0): dropping to root is not a drop; '
            f'accepted: {_ID_ACCEPTED.format(max=MAX_ID)}'
        )
    return num
