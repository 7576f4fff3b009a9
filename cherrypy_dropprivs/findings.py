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
    'PID file {path} cannot be removed by {user} at exit ({reason}): a stale PID file will be '
    'left behind, and a restart after the drop cannot rewrite it. Fix: put it in a directory '
    '{user} owns, e.g. /run/{name}/{base} created by systemd RuntimeDirectory={name} (or '
    'install -d -o {user} /run/{name})'
)
PIDFILE_NOT_HANDED_OVER = (
    'PID file {path} was not handed to {user}: {reason}; a restart after the drop cannot '
    'rewrite it. Fix: put it in a directory {user} owns'
)
CHOWN_MISSING = (
    'chown path {path} does not exist, so it was not handed to {user}. Fix: create it, or '
    'remove it from chown'
)
CHOWN_REFUSED = 'chown path {path} was not handed to {user}: {reason}'


@dataclass(frozen=True)
class Finding:
    """One thing the dropped process will not be able to do."""

    kind: str  # 'log', 'session', 'autoreload', 'tls', 'pidfile', 'chown'
    path: str
    message: str

    def __str__(self) -> str:
        return self.message


def make(kind: str, template: str, path: str, **fields) -> Finding:
    return Finding(kind, path, template.format(path=path, **fields))


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
    """Removable at exit if the directory is writable: the plugin then hands the file
    over, which also satisfies a sticky directory's owner rule (e.g. /tmp)."""
    reason = why_not_creatable(path, who)
    if reason is None:
        return None
    return make('pidfile', PIDFILE_NOT_REMOVABLE, path, user=_user(who), reason=reason,
                name=run_dir_name(path), base=os.path.basename(path))
