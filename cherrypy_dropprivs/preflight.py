"""The CherryPy side of the files the dropped process needs, and of the per-thread work.

Collects paths from the running configuration (log handlers of cherrypy.log
and of every mounted application, session storage paths, the Autoreloader's
watch list, PIDFile plugins). As root, CherryPy's log files are opened
through the safe walk (files) instead of ``open()``, PID files are written
root's, 0644, in a directory only root can write, and before the drop the
files the target must keep writing are handed over on their descriptors;
anything unsafe fails the start closed. What the target still could not do
is logged as a WARNING (files' findings, also printed by the check command).
Right after the drop the per-thread settings reach the threads that existed
before it (drop.apply_to_existing_threads).
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from typing import TYPE_CHECKING, Dict, List, NoReturn, Optional, Sequence, Tuple

import cherrypy
from cherrypy import _cplogging
from cherrypy.process.plugins import Autoreloader, PIDFile

from . import drop, handoff, patches
from .drop import ALREADY_TARGET, DROPPED, NOT_ROOT, Plan, target_of
from .errors import EXIT_DROP_FAILED, PrivilegeDropError, exit_now
from .identity import Identity

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


def log_stream_problems(target: Identity) -> List[str]:
    """One message per log file opened as root that is not safe; [] if none.

    Every FileHandler's open stream must be the regular file (one link) that
    its path resolves to by the safe walk (files; device and inode compared). A
    path refused when the config was applied (install, below) counts too.
    """
    bad = dict(refused())
    handlers = file_handlers()
    if not (bad or handlers):
        return []
    from . import files
    from .files import UnsafePath

    for h in handlers:
        path = os.path.abspath(h.baseFilename)
        stream = getattr(h, 'stream', None)
        if path in bad:
            continue
        if stream is None:  # delay=True: nothing opened yet; it will be, as the target
            reason = files.problem(path)
            if reason:
                bad[path] = reason
            continue
        try:
            opened = os.fstat(stream.fileno())
            found = files.identify(path)
        except UnsafePath as e:
            bad[path] = e.reason
            continue
        except (OSError, ValueError) as e:
            bad[path] = f'cannot be checked ({getattr(e, "strerror", None) or e})'
            continue
        if (opened.st_dev, opened.st_ino) != found:
            bad[path] = ('the file open as root is not the one the path leads to: it was '
                         'replaced, or reached through a link, after it was opened')
    return [str(files.log_unsafe(path, reason, target)) for path, reason in bad.items()]


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
    from . import files
    from .files import UnsafePath, hand_over_or_raise

    user = target.user or str(target.uid)
    unsafe: List[str] = log_stream_problems(target)
    if unsafe:  # nothing is handed over from a process that holds an unsafe stream
        raise PrivilegeDropError('unsafe paths', '; '.join(unsafe))

    def give(path: str, kind: str, directory_ok: bool = False) -> None:
        try:
            hand_over_or_raise(path, target, directory_ok=directory_ok)
            report.handed_over.append(path)
        except UnsafePath as e:
            maker = files.chown_unsafe if kind == 'chown' else files.log_unsafe
            unsafe.append(str(maker(path, e.reason, target)))
        except FileNotFoundError:
            if kind == 'chown':
                report.findings.append(files.make('chown', files.CHOWN_MISSING, path, user=user))
        except OSError as e:
            template = files.CHOWN_REFUSED if kind == 'chown' else files.LOG_NOT_HANDED_OVER
            report.findings.append(files.make(kind, template, path, user=user,
                                          reason=f'{e.filename or path}: {e.strerror}'))

    if chown_logs:
        for path in log_files():
            give(path, 'log')
    for path in chown:
        give(os.path.abspath(path), 'chown', directory_ok=True)
    for pf in pidfile_plugins(bus):
        # Written by the safe writer (secure_pidfiles) or, if that was not put in
        # place, by CherryPy: then it must at least be safe now, root's, 0644.
        path = os.path.abspath(pf.pidfile)
        try:
            if os.path.lexists(path):
                files.secure_root_file(path, PIDFILE_MODE)
            else:
                reason = files.problem(path)
                if reason:
                    raise UnsafePath(path, reason)
        except UnsafePath as e:
            unsafe.append(str(files.pidfile_unsafe(path, e.reason)))
        except OSError as e:
            unsafe.append(str(files.pidfile_unsafe(path, f'{e.filename or path}: {e.strerror}')))
    if unsafe:
        raise PrivilegeDropError('unsafe paths', '; '.join(unsafe))
    handed_back = {f.path for f in report.findings}
    for finding in check(bus, target):
        if not (finding.kind == 'log' and finding.path in handed_back):
            report.findings.append(finding)
    for pf in pidfile_plugins(bus):
        if files.check_pidfile(pf.pidfile, target) is not None:
            report_pidfile_at_exit(bus, pf)
    for lm in log_managers():
        make_reopen_safe(bus, lm)
    return report


#: A PID file is root's and readable by all: root's tools trust its contents.
PIDFILE_MODE = 0o644


def secure_pidfiles(bus) -> int:
    """Make each PIDFile on the bus write its file safely; how many were changed.

    Call before PIDFile's start runs (priority 70) in each start, e.g. from the
    plugin's arm (priority 10). CherryPy's PIDFile opens the name as root,
    follows symlinks and, under the Daemonizer's umask 0, creates it mode 0666.

    The bus calls the listeners it listed when the publish began, so replacing
    a listener during the ``start`` publish would come too late. Instead each
    PIDFile becomes a :class:`SafePIDFile` (same object, same bound listener):
    CherryPy's ``start`` first reads ``self.finalized``, and that read now
    writes the file through :func:`write_pidfile` and answers True, so
    CherryPy's own ``open()`` never runs (it logs "already written").
    """
    n = 0
    for pf in pidfile_plugins(bus):
        if isinstance(pf, SafePIDFile):
            continue
        # SafePIDFile.finalized is a property: it hides (and keeps) the instance's own.
        patches.replace(pf, '_dropprivs_written', bool(pf.__dict__.get('finalized', False)))
        patches.replace(pf, '__class__', SafePIDFile)
        n += 1
    return n


def secure_daemonizer_files(bus) -> None:
    """Open each Daemonizer's stdin/stdout/stderr through the safe walk, as root.

    CherryPy's Daemonizer opens them by name at priority 65, as root, after
    setting umask 0: through a symlink the target user planted (its own log
    directory) that would hand the dropped process a descriptor on any file,
    or create a world-writable one anywhere. Here each path is opened now by
    :func:`files.open_append` (or read-only for stdin), and the Daemonizer is
    given ``/proc/self/fd/N``, which reopens exactly that file. An unsafe path
    fails the start closed. Call from the arm listener, as root.
    """
    for d in handoff.daemonizers(bus):
        from . import files
        from .files import UnsafePath, open_append

        for attr in ('stdin', 'stdout', 'stderr'):
            path = getattr(d, attr, None)
            if not path or os.path.realpath(path) == os.devnull or str(path).startswith('/proc/self/fd/'):
                continue
            try:
                if attr == 'stdin':
                    with files.open_existing(path) as opened:
                        fd = os.dup(opened.fd)
                else:
                    fd = open_append(path, 0o640)
            except UnsafePath as e:
                fail_closed(bus, f'Daemonizer {attr} {path}: {e.reason}; root opens it before the '
                                 f'drop, so it must be in a directory only root can write '
                                 f'(e.g. /var/log/mysite owned by root, mode 0755)')
            except OSError as e:
                fail_closed(bus, f'Daemonizer {attr} {path}: {e.strerror}')
            os.set_inheritable(fd, False)
            patches.replace(d, attr, f'/proc/self/fd/{fd}')


class SafePIDFile(PIDFile):
    """CherryPy's PIDFile, its file written by :func:`write_pidfile` (see secure_pidfiles)."""

    @property
    def finalized(self) -> bool:
        if not self.__dict__.get('_dropprivs_written'):
            write_pidfile(self.bus, self)
            self.__dict__['_dropprivs_written'] = True
        return True

    @finalized.setter
    def finalized(self, value: bool) -> None:
        self.__dict__['_dropprivs_written'] = bool(value)


def write_pidfile(bus, plugin: PIDFile) -> None:
    """Write ``plugin``'s PID file safely, or end the process (status 77).

    As root: only through the safe walk of :mod:`.files` (a directory only root can
    write, ``O_NOFOLLOW``, one link), owner root, mode 0644 whatever the
    umask. Without root: ``O_NOFOLLOW``, mode 0644, and a file that already
    holds this pid (a process re-executed by a restart keeps its pid) is left
    as it is. A refusal ends the process at once with one CRITICAL line: the
    servers start next (75), and the bus would go on to start them.
    """
    from . import files
    from .files import UnsafePath

    pid = os.getpid()
    path = os.path.abspath(plugin.pidfile)
    data = f'{pid}\n'.encode()
    try:
        if os.geteuid() == 0:
            files.write_root_file(path, data, PIDFILE_MODE)
        elif _holds(path, data):
            bus.log(f'PID {pid!r} already in {path!r} (re-executed with the same pid).')
            return
        else:
            files.write_own_file(path, data, PIDFILE_MODE)
    except UnsafePath as e:
        fail_closed(bus, f'PID file: {files.pidfile_unsafe(path, e.reason)}')
    except OSError as e:
        fail_closed(bus, f'PID file: {path} could not be written as uid {os.geteuid()} '
                         f'({e.strerror}); a restart after the drop cannot rewrite a PID file '
                         f'root wrote. Fix: under systemd use no PID file (Type=simple)')
    bus.log(f'PID {pid!r} written to {path!r} (mode {PIDFILE_MODE:04o}).')


def _holds(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 64) == data
    finally:
        os.close(fd)


def fail_closed(bus, msg: str, status: int = EXIT_DROP_FAILED) -> NoReturn:
    """What the plugin's _fail does, for a listener of this module's own."""
    exit_now(bus.log, msg, status)


def pidfile_problem(path: str) -> Optional[str]:
    """Why root could not safely write the PID file ``path`` (the check command)."""
    from . import files

    return files.problem(path)


def report_pidfile_at_exit(bus, plugin: PIDFile) -> None:
    """Replace PIDFile.exit, which swallows every error, with one that says so.

    Used where the dropped user cannot remove the file: no unprivileged way
    exists, and handing the file over instead would make a PID file that root
    tools trust writable by the daemon.
    """
    if patches.replaced(plugin, '_dropprivs_exit'):
        return
    path = plugin.pidfile

    def exit_pidfile() -> None:
        if getattr(bus, 'execv', False):
            return  # a restart: the re-executed image keeps this pid, so the file stays right
        try:
            os.remove(path)
            bus.log(f'PID file removed: {path!r}.')
        except FileNotFoundError:
            pass
        except OSError as e:
            bus.log(f'dropprivs: PID file {path} could not be removed as uid {os.geteuid()} '
                    f'({e.strerror}); a stale PID file is left behind', level=logging.WARNING)

    exit_pidfile._dropprivs_owner = plugin  # type: ignore[attr-defined]
    patches.replace(plugin, '_dropprivs_exit', exit_pidfile)
    patches.resubscribe(bus, 'exit', plugin.exit, exit_pidfile)


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


def _readable_by_others(path: str) -> bool:
    """Every directory on the way searchable by others, and the file readable."""
    d = '/'
    try:
        for part in path.split('/')[1:-1]:
            d = os.path.join(d, part)
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def import_what_the_target_could_not() -> None:
    """Import now, as root, the stdlib modules the site imports only later.

    cheroot's stop() calls getaddrinfo(), which imports encodings.idna on
    first use; a standard library the target cannot read (a Python under
    /root) would make every later stop or restart fail. Where it can read it,
    nothing is imported ahead of need.
    """
    import encodings

    if 'encodings.idna' not in sys.modules:
        path = os.path.realpath(os.path.join(encodings.__path__[0], 'idna.py'))
        if not _readable_by_others(path):
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
