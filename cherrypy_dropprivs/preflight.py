"""The CherryPy side of the files the dropped process needs, and of the per-thread work.

Collects paths from the running configuration (log handlers of cherrypy.log
and of every mounted application, session storage paths, the Autoreloader's
watch list, PIDFile plugins). As root, CherryPy's log files are opened
through the safe walk (files) instead of ``open()``, PID files are written
root's, 0644, in a directory only root can write (pidfile), and before the drop the
files the target must keep writing are handed over on their descriptors;
anything unsafe fails the start closed. What the target still could not do
is logged as a WARNING (files' findings, also printed by the check command).
Right after the drop the per-thread settings reach the threads that existed
before it (drop.apply_to_existing_threads).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import cherrypy
from cherrypy import _cplogging
from cherrypy.process.plugins import Autoreloader, PIDFile

from . import drop, handoff, patches
from .drop import ALREADY_TARGET, DROPPED, NOT_ROOT, Plan, target_of
from .errors import EXIT_DROP_FAILED, exit_now
from .identity import Identity
from .kernel import readable_by_others

if TYPE_CHECKING:
    from .files import Finding


class Report:
    """What the preflight handed over to the target, and what it found."""

    __slots__ = ('handed_over', 'findings')

    def __init__(self) -> None:
        self.handed_over: List[str] = []
        self.findings: List[Finding] = []


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
    return handoff.listener_owners(bus, 'start', Autoreloader)


def watched_files(bus) -> List[str]:
    """What the subscribed Autoreloaders stat (as they do: .pyc taken as .py)."""
    files = set()
    for r in autoreloaders(bus):
        for f in r.sysfiles() | set(r.files):
            if f:
                files.add(f[:-1] if f.endswith('.pyc') else f)
    return sorted(files)


def pidfile_plugins(bus) -> List[PIDFile]:
    return handoff.listener_owners(bus, 'start', PIDFile)



def check(bus, target: Identity) -> List[Finding]:
    """What ``target`` could not do with the files this process uses; changes nothing."""
    logs, sessions, watched, pidfiles = (
        log_files(), session_paths(), watched_files(bus), pidfile_plugins(bus))
    if not (logs or sessions or watched or pidfiles):
        return []  # and the path checks stay unloaded (memory)
    from . import files

    out: List[Finding] = []
    out += [f for f in map(lambda p: files.check_log_file(p, target), logs) if f]
    out += [f for f in map(lambda p: files.check_session_path(p, target), sessions) if f]
    found = files.check_watched_files(watched, target)
    if found:
        out.append(found)
    out += [f for f in (files.check_pidfile(pf.pidfile, target) for pf in pidfiles) if f]
    return out


def prepare(bus, target: Identity, chown_logs: bool, chown: Sequence[str]) -> Report:
    """Hand files to ``target`` (as root, before the drop), then check what is left.

    Raises PrivilegeDropError (the plugin then exits 77 before serving) for a
    log file, PID file or ``chown`` path that is not safe for root to act on.
    """
    report = Report()
    if not (file_handlers() or refused() or chown or pidfile_plugins(bus)):
        report.findings += check(bus, target)  # nothing to hand over or secure
        for lm in log_managers():
            make_reopen_safe(bus, lm)
        return report
    from .handover import hand_over_files  # only with files to hand over or secure

    return hand_over_files(bus, target, chown_logs, chown, report)


def secure_root_opens(bus) -> None:
    """Before the Daemonizer (65), PIDFile (70) and the servers (75: TLS files,
    UNIX sockets) open their files as root (call from the arm); pidfile.py
    and files.py are loaded only where there is such a file."""
    if drop.holds_root():
        check_server_paths(bus)
    daemonizers, pidfiles = handoff.daemonizers(bus), pidfile_plugins(bus)
    if not (daemonizers or pidfiles):
        return
    from . import pidfile

    if drop.holds_root():
        pidfile.secure_daemonizer_files(bus)
    pidfile.secure_pidfiles(bus, pidfiles)  # safe walk as root, mode 0644


def check_server_paths(bus) -> None:
    """Fail closed on a server path root would use through a path another user can change.

    When a server starts (75), as root, CherryPy reads its TLS certificate,
    key and chain by name, and cheroot removes whatever is at a UNIX socket's
    path and binds there. A link or directory the target user can change
    would make root read any file (another site's key) into the process the
    target then runs, hang the start on a FIFO, or remove a file elsewhere.
    A path every part of which only root can change cannot be turned between
    this check and that use.
    """
    adapters = handoff.server_adapters(bus)
    tls = [(handoff.describe(a), role, path) for a in adapters for role, path in handoff.tls_files(a)]
    unix = [(handoff.describe(a), os.fsdecode(addr)) for a in adapters
            for addr in [_unix_path(a)] if addr is not None]
    if not (tls or unix):
        return
    from . import files

    bad = [files.TLS_UNSAFE.format(which=role, path=path, server=server, reason=reason)
           for server, role, path in tls for reason in [files.read_problem(path)] if reason]
    bad += [files.UNIX_UNSAFE.format(path=path, server=server, reason=reason,
                                     name=files.run_dir_name(path))
            for server, path in unix for reason in [files.bind_problem(path)] if reason]
    if bad:
        exit_now(bus.log, '; '.join(bad), EXIT_DROP_FAILED)


def _unix_path(adapter):
    """The filesystem path a server binds a UNIX socket at (str or bytes, as
    configured, relative ones too); None for TCP and abstract sockets."""
    addr = adapter.bind_addr
    if addr is None:  # a ready-made cheroot server: its own address
        addr = getattr(getattr(adapter, 'httpserver', None), 'bind_addr', None)
    if not isinstance(addr, (str, bytes)) or not addr:
        return None
    return None if addr[:1] in ('\0', b'\0') else addr  # a leading NUL: abstract


def make_reopen_safe(bus, manager) -> None:
    """Replace LogManager.reopen_files on ``graceful`` with one that cannot hang.

    CherryPy's version takes the handler's lock, closes the stream, and then
    opens the file again; if the open fails the lock is never released and the
    next log call blocks for ever. Here the new file is opened first, the
    swap is done under the lock, and a failure keeps the old stream.
    """
    if patches.replaced(manager, '_dropprivs_reopen'):
        return
    original = manager.reopen_files
    if original not in bus.listeners.get('graceful', ()):
        return

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
                    old, h.stream = h.stream, stream  # type: ignore[assignment]
                finally:
                    h.release()
                if old is not None:
                    old.close()
        for what in failed:
            bus.log(f'dropprivs: could not reopen log file {what} as uid {os.geteuid()}; '
                    f'still writing to the file opened before', level=logging.WARNING)

    patches.replace(manager, '_dropprivs_reopen', reopen_files)
    patches.resubscribe(bus, 'graceful', original, reopen_files)


#: logger -> (path, reason): a builtin log file refused while root.
_REFUSED: Dict[logging.Logger, Tuple[str, str]] = {}


def refused() -> Dict[str, str]:
    """path -> reason, for every log file still configured that was refused."""
    return {path: reason for path, reason in _REFUSED.values()}


def install() -> None:
    """Wrap CherryPy's LogManager file handling (once; idempotent)."""
    cls = _cplogging.LogManager
    if patches.replaced(cls, '_set_file_handler'):
        return
    original_add = cls._add_builtin_file_handler
    original_set = cls._set_file_handler

    def _set_file_handler(self, log, filename):
        _REFUSED.pop(log, None)  # a new value: what was refused before no longer counts
        return original_set(self, log, filename)

    def _add_builtin_file_handler(self, log, fname):
        if os.geteuid() != 0:
            return original_add(self, log, fname)
        from .files import UnsafePath, open_append

        path = os.path.abspath(fname)
        try:
            fd = open_append(path)
        except UnsafePath as e:
            _REFUSED[log] = (path, e.reason)
            self.error(f'dropprivs: WARNING: log file {path} not opened as root: {e.reason}; '
                       f'the start will stop before serving', 'ENGINE', severity=logging.WARNING)
            return None
        h = logging.FileHandler(fname, delay=True)
        h.stream = os.fdopen(fd, h.mode, encoding=h.encoding, errors=h.errors)
        h.setFormatter(_cplogging.logfmt)
        h._cpbuiltin = 'file'
        log.addHandler(h)
        return None

    # Installed at import, for the life of the process: not undone by unsubscribe.
    patches.replace(cls, '_add_builtin_file_handler', _add_builtin_file_handler, keep=True)
    patches.replace(cls, '_set_file_handler', _set_file_handler, keep=True)


def import_what_the_target_could_not() -> None:
    """Import encodings.idna now, as root, if the target could not read it.

    cheroot's stop() calls getaddrinfo(), which imports encodings.idna on
    first use; a standard library the target cannot read (a Python under
    /root) would make every later stop or restart fail. Where the target can
    read it, nothing is imported ahead of need. This package's own modules
    are the drop's to load (drop.carry_out).
    """
    import encodings

    if 'encodings.idna' not in sys.modules:
        path = os.path.realpath(os.path.join(encodings.__path__[0], 'idna.py'))
        if not readable_by_others(path):
            import encodings.idna  # noqa: F401


def before_drop(plugin, plan: Plan, outcome: str) -> None:
    """Hand files over and warn; only a drop from root changes ownership."""
    if outcome != DROPPED:
        for lm in log_managers():
            make_reopen_safe(plugin.bus, lm)
        return
    target = target_of(plan)
    import_what_the_target_could_not()
    report = prepare(plugin.bus, target, plugin.chown_logs, plugin.chown)
    user = target.user or str(target.uid)
    if report.handed_over:
        plugin._log(f'handed to {user} (owner and group; mode kept): {", ".join(report.handed_over)}')
    for finding in report.findings:
        if finding.severity == 'note':
            plugin._log(f'note: {finding}')
        else:
            plugin._log(f'WARNING: {finding}', level=logging.WARNING)


def after_drop(plugin, plan: Plan, outcome: str) -> None:
    """Per-thread settings in threads that existed before the drop; see drop."""
    clear_caps = outcome in (NOT_ROOT, ALREADY_TARGET)
    n = drop.apply_to_existing_threads(drop.thread_actions(plan, outcome), clear_caps, plan.no_new_privs)
    if n:
        what = ' and '.join(w for w, on in (('capabilities cleared', clear_caps),
                                            ('no_new_privs set', plan.no_new_privs)) if on)
        plugin._log(f'{what} in {n} thread(s) started before the drop')


# CherryPy opens its log files when the config is applied: guard them from import on.
install()
