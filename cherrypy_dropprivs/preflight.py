"""The CherryPy side of the preflight: which files the dropped process needs.

Collects them from the running configuration (log handlers of cherrypy.log
and of every mounted application, session storage paths, the Autoreloader's
watch list, PIDFile plugins), hands the ones it
must keep writing to the target before the drop, and reports, with
:mod:`.findings`, what the target still could not do. Access is computed
by :mod:`.access` (stat only, no identity switch). TLS files are checked
after the drop by :mod:`.restart_guard` (as the dropped user); the check
command checks them with :func:`.findings.check_tls_file`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import List, Sequence

import cherrypy
from cherrypy.process.plugins import Autoreloader, PIDFile

from . import findings as F
from .findings import Finding
from .identity import Identity
from .ownership import hand_over


@dataclass
class Report:
    handed_over: List[str] = field(default_factory=list)
    findings: List[Finding] = field(default_factory=list)


# -- collecting paths ---------------------------------------------------------


def log_managers() -> list:
    """cherrypy.log and every mounted application's own LogManager."""
    managers = [cherrypy.log]
    for app in cherrypy.tree.apps.values():
        lm = getattr(app, 'log', None)
        if lm is not None and lm not in managers:
            managers.append(lm)
    return managers


def file_handlers() -> List[logging.FileHandler]:
    """Every FileHandler CherryPy reopens on ``graceful`` (site-wide and per app)."""
    found = []
    for lm in log_managers():
        for log in (lm.error_log, lm.access_log):
            for h in log.handlers:
                if isinstance(h, logging.FileHandler) and h not in found:
                    found.append(h)
    return found


def log_files() -> List[str]:
    return list(dict.fromkeys(h.baseFilename for h in file_handlers()))


def session_paths() -> List[str]:
    """Every ``tools.sessions.storage_path``, global and per application section."""
    paths = []
    sections = [cherrypy.config]
    for app in cherrypy.tree.apps.values():
        conf = getattr(app, 'config', None)  # a grafted WSGI app has none
        if isinstance(conf, dict):
            sections.extend(v for v in conf.values() if isinstance(v, dict))
    for conf in sections:
        p = conf.get('tools.sessions.storage_path')
        if p:
            paths.append(os.path.abspath(p))
    return list(dict.fromkeys(paths))


def autoreloaders(bus) -> List[Autoreloader]:
    return _owners(bus, 'start', Autoreloader)


def watched_files(bus) -> List[str]:
    """What the subscribed Autoreloaders stat (as they do: .pyc taken as .py)."""
    files = set()
    for r in autoreloaders(bus):
        for f in r.sysfiles() | set(r.files):
            if f:
                files.add(f[:-1] if f.endswith('.pyc') else f)
    return sorted(files)


def pidfile_plugins(bus) -> List[PIDFile]:
    return _owners(bus, 'start', PIDFile)


def _owners(bus, channel: str, cls) -> list:
    found = []
    for listener in bus.listeners.get(channel, ()):
        owner = getattr(listener, '__self__', None)
        if isinstance(owner, cls) and owner not in found:
            found.append(owner)
    return found


# -- before the drop ----------------------------------------------------------


def check(bus, target: Identity) -> List[Finding]:
    """What ``target`` could not do with the files this process uses; changes nothing."""
    out: List[Finding] = []
    out += [f for f in map(lambda p: F.check_log_file(p, target), log_files()) if f]
    out += [f for f in map(lambda p: F.check_session_path(p, target), session_paths()) if f]
    watched = F.check_watched_files(watched_files(bus), target)
    if watched:
        out.append(watched)
    out += [f for f in (F.check_pidfile(pf.pidfile, target) for pf in pidfile_plugins(bus)) if f]
    return out


def prepare(bus, target: Identity, chown_logs: bool, chown: Sequence[str]) -> Report:
    """Hand files to ``target`` (as root, before the drop), then check what is left."""
    report = Report()
    user = target.user or str(target.uid)

    def give(path: str, template: str, kind: str, directory_ok: bool = False) -> None:
        reason = hand_over(path, target, directory_ok=directory_ok)
        if reason is None:
            report.handed_over.append(path)
        else:
            report.findings.append(F.make(kind, template, path, user=user, reason=reason))

    if chown_logs:
        for path in log_files():
            give(path, F.LOG_NOT_HANDED_OVER, 'log')
    for path in chown:
        path = os.path.abspath(path)
        if not os.path.lexists(path):
            report.findings.append(F.make('chown', F.CHOWN_MISSING, path, user=user))
        else:
            give(path, F.CHOWN_REFUSED, 'chown', directory_ok=True)
    for pf in pidfile_plugins(bus):
        # Only where the user may replace the file anyway (its directory is
        # writable): a PID file a daemon can rewrite in a root-owned directory
        # like /run lets it point root's `kill $(cat ...)` at any process.
        if os.path.exists(pf.pidfile) and F.check_pidfile(pf.pidfile, target) is None:
            give(os.path.abspath(pf.pidfile), F.PIDFILE_NOT_HANDED_OVER, 'pidfile')
    handed_back = {f.path for f in report.findings}
    for finding in check(bus, target):
        if not (finding.kind == 'log' and finding.path in handed_back):
            report.findings.append(finding)
    for pf in pidfile_plugins(bus):
        if F.check_pidfile(pf.pidfile, target) is not None:
            report_pidfile_at_exit(bus, pf)
    for lm in log_managers():
        make_reopen_safe(bus, lm)
    return report


# -- after the drop: exit and graceful that cannot fail silently or hang ------


def report_pidfile_at_exit(bus, plugin: PIDFile) -> None:
    """Replace PIDFile.exit, which swallows every error, with one that says so.

    Used where the dropped user cannot remove the file: no unprivileged way
    exists, and handing the file over instead would make a PID file that root
    tools trust writable by the daemon.
    """
    if getattr(plugin, '_dropprivs_exit', None):
        return
    priority = bus._priorities.get(('exit', plugin.exit), 50)
    bus.unsubscribe('exit', plugin.exit)
    path = plugin.pidfile

    def exit_pidfile() -> None:
        try:
            os.remove(path)
            bus.log(f'PID file removed: {path!r}.')
        except FileNotFoundError:
            pass
        except OSError as e:
            bus.log(f'dropprivs: PID file {path} could not be removed as uid {os.geteuid()} '
                    f'({e.strerror}); a stale PID file is left behind', level=logging.WARNING)

    plugin._dropprivs_exit = exit_pidfile
    bus.subscribe('exit', exit_pidfile, priority=priority)


def make_reopen_safe(bus, manager) -> None:
    """Replace LogManager.reopen_files on ``graceful`` with one that cannot hang.

    CherryPy's version takes the handler's lock, closes the stream, and then
    opens the file again; if the open fails the lock is never released and the
    next log call blocks for ever. Here the new file is opened first, the
    swap is done under the lock, and a failure keeps the old stream.
    """
    if manager.__dict__.get('_dropprivs_reopen'):
        return
    original = manager.reopen_files
    if original not in bus.listeners.get('graceful', ()):
        return
    priority = bus._priorities.get(('graceful', original), 50)
    bus.unsubscribe('graceful', original)

    def reopen_files() -> None:
        failed = []
        for log in (manager.error_log, manager.access_log):
            for h in log.handlers:
                if not isinstance(h, logging.FileHandler):
                    continue
                try:
                    stream = open(h.baseFilename, h.mode)
                except OSError as e:
                    failed.append(f'{h.baseFilename} ({e.strerror})')
                    continue
                h.acquire()
                try:
                    old, h.stream = h.stream, stream
                finally:
                    h.release()
                if old is not None:
                    old.close()
        for what in failed:
            bus.log(f'dropprivs: could not reopen log file {what} as uid {os.geteuid()}; '
                    f'still writing to the file opened before', level=logging.WARNING)

    manager._dropprivs_reopen = reopen_files
    bus.subscribe('graceful', reopen_files, priority=priority)
