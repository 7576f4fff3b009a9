"""Bad input is refused at construction (or when a config value is set), before anything binds.

These run in-process and need no root: validation happens before any
set*id call. The plugin is built on a private Bus, never on cherrypy.engine.
"""

from __future__ import annotations

import re

import pytest
from cherrypy.process.wspbus import Bus
from dropcheck import unused_id

from cherrypy_dropprivs import DropPrivileges, drop_privileges, make_plan

NO_USER = 'no-such-user-dropprivs'
NO_GROUP = 'no-such-group-dropprivs'
ID_ACCEPTED = r'accepted: a name that exists, or a number in 1\.\.4294967294'
UMASK_ACCEPTED = r"accepted: an int in 0\.\.0o777, an octal string such as '027' or '0o027'"
FREE = unused_id()

# (kwargs, exception type, regex the message must match: what was wrong, what is accepted)
CASES = [
    # unknown names
    ({'uid': NO_USER}, ValueError, rf"unknown user '{NO_USER}'.*{ID_ACCEPTED}"),
    ({'gid': NO_GROUP}, ValueError, rf"unknown group '{NO_GROUP}' in gid.*{ID_ACCEPTED}"),
    ({'groups': ['adm', NO_GROUP]}, ValueError,
     rf"unknown group '{NO_GROUP}' in groups entry.*{ID_ACCEPTED}"),
    # root is not a drop
    ({'uid': 'root'}, ValueError, rf"uid 'root' is root \(0\).*{ID_ACCEPTED}"),
    ({'uid': 0}, ValueError, rf"uid 0 is root \(0\).*{ID_ACCEPTED}"),
    ({'uid': '0'}, ValueError, rf"uid '0' is root \(0\).*{ID_ACCEPTED}"),
    ({'gid': 'root'}, ValueError, rf"gid 'root' is root \(0\).*{ID_ACCEPTED}"),
    ({'gid': 0}, ValueError, rf"gid 0 is root \(0\).*{ID_ACCEPTED}"),
    ({'groups': [0]}, ValueError, rf"groups entry 0 is root \(0\).*{ID_ACCEPTED}"),
    # gid or groups without a uid
    ({'uid': None, 'gid': 'nogroup'}, ValueError, r'gid and groups need a uid.*give uid as well'),
    ({'uid': None, 'groups': []}, ValueError, r'gid and groups need a uid.*give uid as well'),
    # a numeric uid with no passwd entry needs a gid
    ({'uid': FREE}, ValueError, rf'uid {FREE} has no entry in the password database.*give gid as well'),
    # out of range
    ({'uid': -1}, ValueError, rf'uid -1 is out of range; {ID_ACCEPTED}'),
    ({'uid': 2**32 - 1}, ValueError, rf'uid 4294967295 is out of range; {ID_ACCEPTED}'),
    ({'uid': 2**40}, ValueError, rf'uid {2**40} is out of range; {ID_ACCEPTED}'),
    ({'uid': '99999999999'}, ValueError, rf"uid '99999999999' is out of range; {ID_ACCEPTED}"),
    ({'gid': -5}, ValueError, rf'gid -5 is out of range; {ID_ACCEPTED}'),
    ({'groups': [4, -1]}, ValueError, rf'groups entry -1 is out of range; {ID_ACCEPTED}'),
    # bools, floats, empty strings and other types
    ({'uid': True}, TypeError, r'uid must be a name that exists, or a number.*got True \(bool\)'),
    ({'gid': False}, TypeError, r'gid must be a name that exists, or a number.*got False \(bool\)'),
    ({'uid': 65534.0}, TypeError, r'uid must be .*got 65534\.0 \(float\)'),
    ({'gid': 1.5}, TypeError, r'gid must be .*got 1\.5 \(float\)'),
    ({'groups': [True]}, TypeError, r'groups entry must be .*got True \(bool\)'),
    ({'groups': [4.0]}, TypeError, r'groups entry must be .*got 4\.0 \(float\)'),
    ({'uid': ''}, ValueError, rf'uid is an empty string; {ID_ACCEPTED}'),
    ({'gid': ''}, ValueError, rf'gid is an empty string; {ID_ACCEPTED}'),
    ({'groups': ['']}, ValueError, rf'groups entry is an empty string; {ID_ACCEPTED}'),
    ({'groups': 'adm'}, TypeError, r"groups must be a list of group names or numbers.*got 'adm'"),
    ({'groups': 4}, TypeError, r'groups must be a list of group names or numbers.*got 4'),
    ({'uid': b'nobody'}, TypeError, r"uid must be .*got b'nobody' \(bytes\)"),
    # umask
    ({'umask': 0o1000}, ValueError, rf'umask 512 is out of range; {UMASK_ACCEPTED}'),
    ({'umask': -1}, ValueError, rf'umask -1 is out of range; {UMASK_ACCEPTED}'),
    ({'umask': '8'}, ValueError, rf"umask '8' is not octal; {UMASK_ACCEPTED}"),
    ({'umask': '0o8'}, ValueError, rf"umask '0o8' is not octal; {UMASK_ACCEPTED}"),
    ({'umask': '0x1f'}, ValueError, rf"umask '0x1f' is not octal; {UMASK_ACCEPTED}"),
    ({'umask': ''}, ValueError, rf"umask '' is not octal; {UMASK_ACCEPTED}"),
    ({'umask': '1000'}, ValueError, rf"umask '1000' is out of range; {UMASK_ACCEPTED}"),
    ({'umask': '-22'}, ValueError, rf"umask '-22' is not octal; {UMASK_ACCEPTED}"),
    ({'umask': 0.5}, TypeError, rf'umask must be {UMASK_ACCEPTED[10:]}.*got 0\.5 \(float\)'),
    ({'umask': True}, TypeError, rf'umask must be {UMASK_ACCEPTED[10:]}.*got True \(bool\)'),
    # flags
    ({'require_root': 'yes'}, TypeError, r"require_root must be True or False; got 'yes'"),
]


def _id(case):
    kwargs = case[0]
    return ','.join(f'{k}={v!r}' for k, v in kwargs.items())[:60]


@pytest.mark.parametrize('kwargs, exc, message', CASES, ids=[_id(c) for c in CASES])
def test_constructor_refuses(kwargs, exc, message):
    with pytest.raises(exc) as info:
        DropPrivileges(Bus(), **kwargs)
    assert re.search(message, str(info.value)), str(info.value)


@pytest.mark.parametrize('kwargs, exc, message', CASES, ids=[_id(c) for c in CASES])
def test_plain_function_refuses_before_any_change(kwargs, exc, message):
    """make_plan and drop_privileges() refuse the same input before any set*id call.

    Safe to run in the test process as root: validation comes first, and
    the credentials are checked to be unchanged afterwards.
    """
    import os
    before = (os.getresuid(), os.getresgid(), os.getgroups())
    with pytest.raises(exc, match=message):
        make_plan(**{'uid': 'nobody', **kwargs})
    with pytest.raises(exc, match=message):
        drop_privileges(**{'uid': 'nobody', **kwargs})
    assert (os.getresuid(), os.getresgid(), os.getgroups()) == before


# Each option refuses a bad value when it is set (as config activation does),
# and keeps the value it had.
SET_CASES = [
    ('uid', NO_USER, ValueError), ('uid', 'root', ValueError), ('uid', 0, ValueError),
    ('uid', True, TypeError), ('uid', '', ValueError), ('uid', -1, ValueError),
    ('gid', NO_GROUP, ValueError), ('gid', 0, ValueError), ('gid', 2.0, TypeError),
    ('groups', 'adm', TypeError), ('groups', [NO_GROUP], ValueError), ('groups', ['root'], ValueError),
    ('umask', '089', ValueError), ('umask', 0o1000, ValueError), ('umask', 1.0, TypeError),
    ('require_root', 1, TypeError), ('priority', 5, ValueError), ('priority', 101, ValueError),
    ('priority', True, ValueError),
]


@pytest.mark.parametrize('attr, value, exc', SET_CASES, ids=[f'{a}={v!r}' for a, v, _ in SET_CASES])
def test_setting_a_bad_value_is_refused(attr, value, exc):
    plugin = DropPrivileges(Bus(), 'nobody')
    old = getattr(plugin, attr)
    with pytest.raises(exc) as info:
        setattr(plugin, attr, value)
    assert repr(value) in str(info.value) or attr in str(info.value), str(info.value)
    assert getattr(plugin, attr) == old


@pytest.mark.parametrize('value', [0o027, 23, '027', '0o027', '0O027', ' 027 ', '27'])
def test_umask_forms(value):
    assert DropPrivileges(Bus(), 'nobody', umask=value).umask == 0o027


def test_good_forms_resolve():
    """Names, numbers and all-digit strings resolve; the list is primary + exactly those."""
    plan = make_plan('nobody', 'adm', groups=['sudo', 100, '44', 'adm'])
    t = plan.target
    assert (t.uid, t.gid, t.groups) == (65534, 4, (4, 27, 100, 44))
    assert make_plan('nobody', groups=[]).target.groups == (65534,)
    free = make_plan(str(FREE), FREE).target
    assert (free.uid, free.gid, free.groups, free.home, free.user) == (FREE, FREE, (FREE,), '/', None)
    assert make_plan(umask=None).umask is None
    assert make_plan(uid=None).target is None


def test_current_umask_reads_without_changing():
    import os

    from cherrypy_dropprivs.kernel import current_umask
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(old)
