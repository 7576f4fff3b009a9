"""Preflight findings: what the dropped process will not be able to do.

Every finding names the path (or thread) and the fix. The message templates
are module constants so that the documentation can list them exactly.
No cherrypy imports here: the plugin and the check command share them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional

from .access import (
    R,
    W,
    X,
    why_not,
    why_not_creatable,
    why_not_reachable,
    why_not_writable_file,
)

LOG_NOT_WRITABLE = (
    'log file {path} cannot be reopened by {user} after the drop ({reason}): a graceful restart '
    '(SIGUSR1, engine.graceful()) would fail to reopen it. Fix: keep chown_logs=True (the '
    'default), or chown {user} {path}'
)
LOG_NOT_HANDED_OVER = (
    'log file {path} was not handed to {user}: {reason}. Fix: log to a regular file that only '
    'root can link to, e.g. in a root-owned directory'
)
SESSION_NOT_WRITABLE = (
    'session storage path {path} (tools.sessions.storage_path) is not writable by {user} '
    '({reason}): sessions will fail after the drop. Fix: chown=[{path!r}], or '
    'install -d -o {user} -m 0700 {path}'
)
AUTORELOAD_NOT_STATABLE = (
    'the Autoreloader watches {count} file(s) {user} cannot stat, e.g. {path} ({reason}): after '
    'the drop it treats a file it saw before and cannot stat now as changed and restarts, in a '
    'loop, and a re-executed process cannot read that code. Fix: engine.autoreload.on: False '
    '(production), or make those directories searchable by {user}'
)
TLS_NOT_READABLE = (
    'TLS {which} {path} is not readable by {user} ({reason}): it is read again by every restart '
    'after the drop (engine.restart(), SIGHUP, the Autoreloader), which would then fail. Fix: '
    'chgrp {group} {path} && chmod g+r {path}, or disable restarts'
)
PIDFILE_NOT_REMOVABLE = (
    'PID file {path} cannot be removed by {user} at exit ({reason}): root writes it, before the '
    'drop, in a directory only root can write, so it stays behind after a stop (the next start '
    'rewrites it). Remove it after the stop (systemd: ExecStopPost=-/bin/rm -f {path}), or under '
    'systemd use no PID file (Type=simple). Do not make its directory writable by {user}: root '
    'writes there at the next start'
)
PIDFILE_UNSAFE = (
    'PID file {path} is not safe for root to write: {reason}. Root writes the PID file before '
    'the drop, and a user who can change its directory can point that write at any file. Fix: '
    'put it in a directory only root can write (owned by root, not group- or world-writable), '
    'e.g. /run/{base}, or /run/{name}/{base} with systemd RuntimeDirectory={name} and no User=; '
    'under systemd, Type=simple needs no PID file'
)
LOG_UNSAFE = (
    'log file {path} is not safe for root to open: {reason}. CherryPy opens log files as root '
    'when the config is applied, and the dropped process keeps writing to what root opened. '
    'Fix: keep log files in a directory only root can write (owned by root, not group- or '
    'world-writable), e.g. /var/log/{name}/ created by systemd LogsDirectory={name} with no '
    'User= (chown_logs=True hands the files themselves to {user})'
)
CHOWN_MISSING = (
    'chown path {path} does not exist, so it was not handed to {user}. Fix: create it, or '
    'remove it from chown'
)
CHOWN_REFUSED = 'chown path {path} was not handed to {user}: {reason}'
CHOWN_UNSAFE = (
    'chown path {path} is not safe for root to hand to {user}: {reason}. Fix: a path whose '
    'directories only root can write (owned by root, not group- or world-writable), e.g. '
    'install -d -o root -m 0755 /var/lib/{name} and chown=[\'/var/lib/{name}/sessions\']'
)


@dataclass(frozen=True)
class Finding:
    """One thing the dropped process will not be able to do."""

    kind: str  # 'log', 'session', 'autoreload', 'tls', 'pidfile', 'chown'
    path: str
    message: str
    #: 'warning': the dropped process will fail at something; 'note': expected
    #: and safe, said once (a PID file root wrote stays behind after a stop).
    severity: str = 'warning'

    def __str__(self) -> str:
        return self.message


def make(kind: str, template: str, path: str, *, severity: str = 'warning', **fields) -> Finding:
    return Finding(kind, path, template.format(path=path, **fields), severity)


def run_dir_name(path: str) -> str:
    """``/var/run/web.pid`` -> ``web``: a name for a suggested /run/<name>/."""
    base = os.path.basename(path)
    return base.rsplit('.', 1)[0] if '.' in base else base or 'app'


# -- checks on paths: stat-based, for an identity the caller is not (yet) --


def _user(who) -> str:
    return getattr(who, 'user', None) or str(who.uid)


def _group(who) -> str:
    return getattr(who, 'group', None) or str(who.gid)


def check_log_file(path: str, who) -> Optional[Finding]:
    reason = why_not_writable_file(path, who)
    if reason is None:
        return None
    return make('log', LOG_NOT_WRITABLE, path, user=_user(who), reason=reason)


def check_session_path(path: str, who) -> Optional[Finding]:
    reason: Optional[str]
    if not os.path.isdir(path):
        reason = f'{path} is not a directory' if os.path.exists(path) else 'it does not exist'
    else:
        reason = why_not(path, who, R | W | X)
    if reason is None:
        return None
    return make('session', SESSION_NOT_WRITABLE, path, user=_user(who), reason=reason)


def check_watched_files(paths: Iterable[str], who) -> Optional[Finding]:
    """One finding for all watched files the identity cannot stat (or None)."""
    blocked = []
    for p in sorted(set(paths)):
        reason = why_not_reachable(p, who)  # a missing file is not watched: no matter
        if reason is not None:
            blocked.append((p, reason))
    if not blocked:
        return None
    path, reason = blocked[0]
    return make('autoreload', AUTORELOAD_NOT_STATABLE, path, user=_user(who),
                reason=reason, count=len(blocked))


def check_tls_file(which: str, path: str, who) -> Optional[Finding]:
    reason = why_not(path, who, R)
    if reason is None:
        return None
    return make('tls', TLS_NOT_READABLE, path, which=which, user=_user(who),
                group=_group(who), reason=reason)


def check_pidfile(path: str, who) -> Optional[Finding]:
    """A note when ``who`` cannot remove the PID file at exit: always the case for a
    PID file root writes, since its directory must be one only root can write."""
    reason = why_not_creatable(path, who)
    if reason is None:
        return None
    return make('pidfile', PIDFILE_NOT_REMOVABLE, path, severity='note', user=_user(who),
                reason=reason)


def pidfile_unsafe(path: str, reason: str, who=None) -> Finding:
    return make('pidfile', PIDFILE_UNSAFE, path, reason=reason, name=run_dir_name(path),
                base=os.path.basename(path))


def log_unsafe(path: str, reason: str, who) -> Finding:
    return make('log', LOG_UNSAFE, path, reason=reason, user=_user(who),
                name=_app_name(path))


def chown_unsafe(path: str, reason: str, who) -> Finding:
    return make('chown', CHOWN_UNSAFE, path, reason=reason, user=_user(who),
                name=_app_name(path))


def _app_name(path: str) -> str:
    """``/srv/mysite/logs/error.log`` -> a name for a suggested directory: the first
    component under /var/log, /var/lib, /srv or /opt, else the file's directory name."""
    parts = [p for p in os.path.normpath(path).split(os.sep) if p]
    for depth, top in ((2, ('var', 'log')), (2, ('var', 'lib')), (1, ('srv',)), (1, ('opt',))):
        if tuple(parts[:depth]) == top and len(parts) > depth + 1:
            return parts[depth]
    parent = os.path.basename(os.path.dirname(os.path.normpath(path)))
    return parent or 'app'
