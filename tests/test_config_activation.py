"""Config-file activation: ``cherrypy.config.update(file)`` and ``cherryd -i cherrypy_dropprivs``.

The real-process tests start as root on a free privileged port and check
every thread in the kernel's view; bad values end the process before
anything binds.
"""

from __future__ import annotations

import os
import sys

import cherrypy
import pytest
from conftest import REPO, SITE, free_privileged_port, needs_root
from dropcheck import every_thread, unused_id, user_groups

import cherrypy_dropprivs  # noqa: F401  (creates cherrypy.engine.dropprivs)
from cherrypy_dropprivs.errors import ConfigError

CHERRYD = os.path.join(os.path.dirname(sys.executable), 'cherryd')


def _conf(tmp_path, port, **dropprivs) -> str:
    lines = ['[global]', "server.socket_host: '127.0.0.1'", f'server.socket_port: {port}',
             'server.thread_pool: 4', 'engine.autoreload.on: False', 'checker.on: False',
             'engine.dropprivs.on: True']
    lines += [f'engine.dropprivs.{k}: {v}' for k, v in dropprivs.items()]
    path = tmp_path / 'site.conf'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


@needs_root
def test_config_update_file_with_python_octal_umask(site, tmp_path):
    """site.py applies the file with cherrypy.config.update(); umask 0o027 as a literal."""
    port = free_privileged_port()
    conf = _conf(tmp_path, port, uid="'nobody'", umask='0o027')
    proc = site(ports=[port], extra=['--plugin', 'config', '--config', conf],
                prefix=['setpriv', '--groups=4,27', '--'])
    every_thread(proc.pid, 65534, 65534, user_groups('nobody'), umask=0o027)
    assert proc.get('/env').json()['environ']['HOME'] == '/nonexistent'


@needs_root
def test_cherryd_with_string_umask(spawn, tmp_path):
    """cherryd -i cherrypy_dropprivs -i myapp -c site.conf, umask given as '027'."""
    assert os.path.exists(CHERRYD), CHERRYD
    port = free_privileged_port()
    conf = _conf(tmp_path, port, uid="'nobody'", gid="'nogroup'", groups='[]', umask="'027'")
    proc = spawn(['setpriv', '--groups=4,27', '--', sys.executable, CHERRYD,
                  '-P', str(REPO / 'tests' / 'sites'), '-i', 'cherrypy_dropprivs', '-i', 'cherryd_site',
                  '-c', conf], ports=[port])
    proc.wait_http()
    every_thread(proc.pid, 65534, 65534, [65534], umask=0o027)
    assert proc.get('/regain').json()['setuid'] == 1  # EPERM
    assert 'dropprivs: running as uid=65534(nobody)' in proc.log()


@needs_root
@pytest.mark.parametrize('setting, message', [
    ({'umask': "'089'"}, "ValueError: umask '089' is not octal; accepted: an int in 0..0o777"),
    ({'require_roots': 'True'},
     'bad configuration: unknown option engine.dropprivs.require_roots; the options are: uid'),
], ids=['bad-value', 'unknown-key'])
def test_cherryd_bad_config_exits_78_before_binding(spawn, tmp_path, setting, message):
    """A bad value or a misspelt key: one line, status 78, nothing bound or started."""
    port = free_privileged_port()
    conf = _conf(tmp_path, port, uid="'nobody'", **setting)
    proc = spawn([sys.executable, CHERRYD, '-P', str(REPO / 'tests' / 'sites'),
                  '-i', 'cherrypy_dropprivs', '-i', 'cherryd_site', '-c', conf], ports=[port])
    status = proc.wait_exit(timeout=10)
    log = proc.log()
    assert status == 78, log
    assert message in log, log
    assert 'Traceback' not in log, log
    assert 'Serving on' not in log and 'Bus STARTING' not in log, log


@needs_root
def test_bad_combination_in_config_exits_before_binding(spawn, tmp_path):
    """Each value is fine alone; together (a uid with no passwd entry, no gid) they are not.
    The arm listener (priority 10) ends the process before any server (75) binds."""
    port = free_privileged_port()
    free = unused_id()
    record = tmp_path / 'listener-ran'
    conf = _conf(tmp_path, port, uid=free)
    proc = spawn([sys.executable, str(SITE), '--port', str(port), '--plugin', 'config', '--config', conf,
                  '--record-listener', str(record)], ports=[port])
    status = proc.wait_exit(timeout=10)
    log = proc.log()
    assert status == 78, log
    assert (f'dropprivs: FAILED: bad configuration: uid {free} has no entry in the password database'
            in log), log
    assert 'give gid as well' in log
    assert 'Serving on' not in log and not record.exists(), log


@pytest.fixture
def engine_dropprivs():
    """cherrypy.engine.dropprivs in this process, restored afterwards (never started here)."""
    plugin = cherrypy.engine.dropprivs
    saved = {k: getattr(plugin, k) for k in ('uid', 'gid', 'groups', 'umask')}
    keys = set(cherrypy.config)
    yield plugin
    for k in set(cherrypy.config) - keys:
        del cherrypy.config[k]
    for k, v in saved.items():
        setattr(plugin, k, v)


@pytest.mark.parametrize('text, value', [('0o027', 0o027), ("'027'", 0o027), ("'0o027'", 0o027),
                                         ('None', None), ('0', 0)])
def test_config_umask_forms(engine_dropprivs, tmp_path, text, value):
    path = tmp_path / 'u.conf'
    path.write_text(f'[global]\nengine.dropprivs.umask: {text}\n')
    cherrypy.config.update(str(path))
    assert engine_dropprivs.umask == value


@pytest.mark.parametrize('key, text, message', [
    ('umask', "'089'", "umask '089' is not octal"),
    ('umask', '0o1000', 'umask 512 is out of range'),
    ('umask', '2.5', 'umask must be an int'),
    ('uid', "'root'", "uid 'root' is root (0)"),
    ('uid', "'no-such-user-dropprivs'", "unknown user 'no-such-user-dropprivs'"),
    ('gid', '0', 'gid 0 is root (0)'),
    ('groups', "'adm'", 'groups must be a list'),
])
def test_config_bad_value_raises_when_set(engine_dropprivs, tmp_path, key, text, message):
    path = tmp_path / 'bad.conf'
    path.write_text(f'[global]\nengine.dropprivs.{key}: {text}\n')
    with pytest.raises((ValueError, TypeError)) as info:
        cherrypy.config.update(str(path))
    assert message in str(info.value)
    assert 'accepted' in str(info.value) or 'must be' in str(info.value)


@pytest.mark.parametrize('key', ['require_roots', 'no_new_priv', 'umaks'])
def test_config_unknown_key_raises_naming_it(engine_dropprivs, tmp_path, key):
    """A misspelt key must not be accepted while the real option stays off."""
    path = tmp_path / 'typo.conf'
    path.write_text(f'[global]\nengine.dropprivs.{key}: True\n')
    with pytest.raises(ConfigError) as info:
        cherrypy.config.update(str(path))
    assert f'unknown option engine.dropprivs.{key}' in str(info.value)
    assert 'require_root, no_new_privs' in str(info.value)
    assert not hasattr(engine_dropprivs, key)

