"""What the drop must do, checked in the kernel's view of every thread.

Each test starts tests/sites/site.py as root on a free privileged port and
asserts on /proc/<pid>/task/*/status and on what the served process can do.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess

from conftest import needs_root, wait_for
from dropcheck import dropprivs_lines, every_thread, named, only_line, unused_id, user_groups
from namespaces import in_namespace, user_db

ROOT_GROUPS = (4, 27)  # adm, sudo: extra groups a root shell might carry


def _umask_now() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@needs_root
def test_uid_only_with_root_groups_present(site):
    """uid only: gid and groups come from nobody's entries; root's groups are gone."""
    prefix = ['setpriv', f'--groups={",".join(map(str, ROOT_GROUPS))}', '--']
    # The wrapper really gives the child root's extra groups (kernel's view):
    probe = subprocess.run([*prefix, 'grep', '^Groups:', '/proc/self/status'],
                           capture_output=True, text=True, timeout=10, check=True)
    assert probe.stdout.split()[1:] == [str(g) for g in ROOT_GROUPS]

    proc = site(prefix=prefix, extra=['--log-levels'])
    nobody = pwd.getpwnam('nobody')
    groups = user_groups('nobody')
    every_thread(proc.pid, nobody.pw_uid, nobody.pw_gid, groups, umask=0o077)
    served = proc.get('/whoami').json()
    assert served['uids'] == [nobody.pw_uid] * 4 and served['gids'] == [nobody.pw_gid] * 4
    assert sorted(served['groups']) == groups

    # Regain attempts, made by the served process itself, all fail with EPERM.
    regain = proc.get('/regain').json()
    after = regain.pop('after')
    assert regain == {k: 1 for k in ('setuid', 'seteuid', 'setresuid', 'setgid', 'setegid', 'setgroups')}
    assert after['uids'] == [nobody.pw_uid] * 4 and after['gids'] == [nobody.pw_gid] * 4

    env = proc.get('/env').json()
    assert env['environ'] == {
        'HOME': nobody.pw_dir, 'USER': 'nobody', 'LOGNAME': 'nobody', 'SHELL': nobody.pw_shell,
        'MAIL': None, 'XDG_RUNTIME_DIR': None,
    }
    assert env['umask'] == 0o077

    # One line before and one after, with names and numbers.
    log = proc.log()
    root_groups = ','.join(named(g) for g in ROOT_GROUPS)
    target = f'uid={named(nobody.pw_uid, group=False)} gid={named(nobody.pw_gid)} ' \
             f'groups={",".join(named(g) for g in groups)}'
    only_line(log, r'^INFO\|.*dropprivs: dropping privileges: from '
              + _re(f'uid=0(root) gid=0(root) groups={root_groups} umask={_umask_now():04o} '
                    f'to {target} umask=0077') + '$')
    only_line(log, r'^INFO\|.*dropprivs: running as ' + _re(f'{target} umask=0077 HOME={nobody.pw_dir}')
              + r'; verified on \d+ threads$')
    assert not [ln for ln in dropprivs_lines(log) if ln.startswith(('ERROR|', 'CRITICAL|'))], log


def _re(text: str) -> str:
    import re
    return re.escape(text)


@needs_root
def test_explicit_gid_and_groups_by_name_and_number(site):
    """gid and an explicit groups list (names, ints, all-digit strings) are exactly what is set."""
    adm, sudo = grp.getgrnam('adm').gr_gid, grp.getgrnam('sudo').gr_gid
    proc = site(options={'uid': 'nobody', 'gid': 'adm', 'groups': ['sudo', 100, '44'], 'umask': '027'},
                prefix=['setpriv', '--groups=4,27', '--'])
    every_thread(proc.pid, pwd.getpwnam('nobody').pw_uid, adm, [adm, sudo, 100, 44], umask=0o027)
    assert proc.get('/env').json()['umask'] == 0o027


@needs_root
def test_numeric_uid_without_passwd_entry(site):
    """An all-digit string that is no name is a number; no passwd entry: HOME=/, primary group only."""
    n = unused_id()
    proc = site(options={'uid': str(n), 'gid': n, 'umask': 0o027}, prefix=['setpriv', '--groups=4,27', '--'])
    every_thread(proc.pid, n, n, [n], umask=0o027)
    env = proc.get('/env').json()['environ']
    assert (env['HOME'], env['USER'], env['LOGNAME'], env['SHELL']) == ('/', str(n), str(n), '/bin/sh')
    assert f'to uid={n} gid={n} groups={n} umask=0027' in proc.log()


# -- made-up users, in a private mount namespace with their own passwd/group ---

FAKE_USERS = [
    'dpuser:x:4343:4343:dropprivs test:/home/dpuser:/bin/dpsh',
    '4242:x:4350:4350:a user whose name is digits:/home/digits:/bin/sh',
]
FAKE_GROUPS = [
    'dpuser:x:4343:',
    'dpextra:x:4344:dpuser',
    'dpmore:x:4345:someone,dpuser',
    '4000:x:4346:',
    'digits:x:4350:4242',
]


def _fake_site(site, tmp_path, options):
    files = user_db(tmp_path / 'db', FAKE_USERS, FAKE_GROUPS)
    return site(options=options, prefix=in_namespace([], files=files))


@needs_root
def test_user_groups_come_from_the_group_database(site, tmp_path):
    """uid only: the user's supplementary groups are those `id USER` would show."""
    proc = _fake_site(site, tmp_path, {'uid': 'dpuser'})
    every_thread(proc.pid, 4343, 4343, [4343, 4344, 4345])
    env = proc.get('/env').json()['environ']
    assert (env['HOME'], env['USER'], env['LOGNAME'], env['SHELL']) == \
        ('/home/dpuser', 'dpuser', 'dpuser', '/bin/dpsh')


@needs_root
def test_explicit_list_replaces_the_database_groups(site, tmp_path):
    """An explicit list: the primary group plus exactly those, not the database's."""
    proc = _fake_site(site, tmp_path, {'uid': 'dpuser', 'groups': ['dpmore']})
    every_thread(proc.pid, 4343, 4343, [4343, 4345])


@needs_root
def test_digit_names_are_names_first_and_empty_groups(site, tmp_path):
    """uid '4242' and gid '4000' name a user and a group (chown's rule); groups=[] adds none."""
    proc = _fake_site(site, tmp_path, {'uid': '4242', 'gid': '4000', 'groups': []})
    every_thread(proc.pid, 4350, 4346, [4346])
    env = proc.get('/env').json()['environ']
    assert (env['HOME'], env['USER']) == ('/home/digits', '4242')


@needs_root
def test_second_start_does_not_drop_again(site):
    """engine.stop(); engine.start(): no second drop, the current identity is logged,
    the privileged port is served again (by the kept socket), as nobody."""
    proc = site(extra=['--stop-start'], options={'require_root': True})
    nobody = pwd.getpwnam('nobody')
    proc.wait_log('dropprivs: already dropped', timeout=15)
    proc.wait_http()
    wait_for(lambda: proc.log().count('Bus STARTED') == 2, 15, what='the second start')
    log = proc.log()
    assert log.count('Bus STARTED') == 2, log
    assert log.count('Serving on') == 2, log
    only_line(log, r'dropprivs: dropping privileges: from uid=0\(root\)')
    only_line(log, r'dropprivs: already dropped; running as '
              + _re(f'uid={named(nobody.pw_uid, group=False)} gid={named(nobody.pw_gid)}'))
    assert log.index('dropprivs: already dropped') > log.rindex('Serving on')
    every_thread(proc.pid, nobody.pw_uid, nobody.pw_gid, user_groups('nobody'))
    assert proc.get('/whoami').json()['uids'] == [nobody.pw_uid] * 4
