"""files.py on real files: stat-based access for another identity.

Root is needed to make files owned by other ids (chown of files the test
created itself, under a fresh directory in /tmp; nothing on the host).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import pytest
from conftest import needs_root

from cherrypy_dropprivs.files import STAT, R, W, X, can_access, hand_over, why_not, why_not_removable


@dataclass(frozen=True)
class Who:
    uid: int
    gid: int
    groups: Tuple[int, ...]


NOBODY = Who(65534, 65534, (65534,))
IN_4242 = Who(65534, 65534, (65534, 4242))


@pytest.fixture
def d():
    path = Path(tempfile.mkdtemp(prefix='dropprivs-access-', dir='/tmp'))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _file(path: Path, uid: int, gid: int, mode: int) -> Path:
    path.touch()
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


@needs_root
def test_owner_group_other_bits_as_the_kernel_picks_them(d):
    f = _file(d / 'f', 0, 4242, 0o640)
    assert not can_access(str(f), NOBODY, R)
    assert can_access(str(f), IN_4242, R) and not can_access(str(f), IN_4242, W)
    own = _file(d / 'own', 65534, 4242, 0o070)  # the owner's bits win, even when they deny
    assert not can_access(str(own), IN_4242, R)
    assert why_not(str(f), NOBODY, R).startswith(f'{f} (owner 0, group 4242, mode 0640) is not r')


@needs_root
def test_every_parent_must_be_searchable(d):
    closed = d / 'closed'
    closed.mkdir(mode=0o700)
    f = _file(closed / 'f', 65534, 65534, 0o600)
    assert not can_access(str(f), NOBODY, STAT)
    assert f'directory {closed}' in why_not(str(f), NOBODY, R | W)
    os.chmod(closed, 0o711)
    assert can_access(str(f), NOBODY, R | W) and not can_access(str(f), NOBODY, X)


@needs_root
def test_removal_needs_the_directory_and_respects_the_sticky_bit(d):
    sticky = d / 'sticky'
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    theirs = _file(sticky / 'theirs', 4242, 4242, 0o644)
    mine = _file(sticky / 'mine', 65534, 65534, 0o644)
    assert 'sticky' in why_not_removable(str(theirs), NOBODY)
    assert why_not_removable(str(mine), NOBODY) is None
    assert why_not_removable(str(_file(d / 'x', 65534, 65534, 0o644)), NOBODY) is not None


@needs_root
def test_hand_over_keeps_mode_and_refuses_links_and_devices(d):
    f = _file(d / 'log', 0, 0, 0o640)
    assert hand_over(str(f), NOBODY) is None
    st = os.stat(f)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65534, 0o640)
    linked = _file(d / 'linked', 0, 0, 0o600)
    os.link(linked, d / 'second-name')
    assert 'hard links' in hand_over(str(linked), NOBODY)
    assert 'not a regular file' in hand_over('/dev/null', NOBODY)
    user_dir = d / 'u'
    user_dir.mkdir()
    target = _file(d / 'secret', 0, 0, 0o600)
    os.symlink(target, user_dir / 'app.log')
    os.lchown(user_dir / 'app.log', 65534, 65534)
    assert 'not owned by root' in hand_over(str(user_dir / 'app.log'), NOBODY)
    assert os.stat(target).st_uid == 0
