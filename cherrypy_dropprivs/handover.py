"""Handing files to the target before the drop: log files, ``chown`` paths, PID files.

The part of preflight.prepare that runs only where the configuration names
such files (a hello-world site has none, and does not load this module).
As root and through the safe walk (files): each file is handed over on its
descriptor, or the start fails closed (PrivilegeDropError, exit 77) naming
every path that is not safe for root to act on.
"""

from __future__ import annotations

import os
from typing import List, Sequence

from . import files
from .errors import PrivilegeDropError
from .files import UnsafePath, hand_over_or_raise
from .identity import Identity
from .preflight import (
    Report,
    check,
    file_handlers,
    log_files,
    log_managers,
    make_reopen_safe,
    pidfile_plugins,
    refused,
)


def hand_over_files(bus, target: Identity, chown_logs: bool, chown: Sequence[str],
                    report: Report) -> Report:
    """preflight.prepare where there are files: log files, ``chown`` paths, PID files."""
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
        # Written by the safe writer (pidfile.secure_pidfiles) or, if that was not
        # put in place, by CherryPy: then it must at least be safe now, root's, 0644.
        from .pidfile import PIDFILE_MODE

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
            from .pidfile import report_pidfile_at_exit

            report_pidfile_at_exit(bus, pf)
    for lm in log_managers():
        make_reopen_safe(bus, lm)
    return report


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
