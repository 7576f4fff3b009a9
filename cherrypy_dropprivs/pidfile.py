"""PID files and the Daemonizer's files: written and opened safely, as root.

CherryPy's PIDFile and Daemonizer open their files by name, as root, after
the Daemonizer set umask 0: through a symlink the target user planted, root
would write or create a file anywhere. Here a PID file is written through the
safe walk (files), root's, mode 0644, and the Daemonizer gets descriptors
opened the same way. Imported only when a PIDFile or a Daemonizer is on the
bus (preflight.secure_root_opens).
"""

from __future__ import annotations

import logging
import os
from typing import List, NoReturn

from cherrypy.process.plugins import PIDFile

from . import handoff, patches
from .errors import EXIT_DROP_FAILED, exit_now

#: A PID file is root's and readable by all: root's tools trust its contents.
PIDFILE_MODE = 0o644


def secure_pidfiles(bus, plugins: List[PIDFile]) -> int:
    """Make each PIDFile of ``plugins`` (those on the bus) write its file safely; how many were changed.

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
    for pf in plugins:
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
            # Only the literal name: a link to /dev/null that the target
            # planted could point elsewhere by the time CherryPy opens it.
            if not path or path == os.devnull or str(path).startswith('/proc/self/fd/'):
                continue
            try:
                if attr == 'stdin':
                    with files.open_existing(path) as opened:
                        fd = os.dup(opened.fd)
                else:
                    fd = open_append(path, 0o640)
            except UnsafePath as e:
                if files.LINKED_ELSEWHERE in e.reason:
                    fail_closed(bus, str(files.make('daemonizer', files.LINKED, path, reason=e.reason,
                                                    what=f'Daemonizer {attr}',
                                                    who='a user who owns or may write it')))
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
