"""Errors raised by the privilege drop.

Kept apart so the kernel-facing modules and the CherryPy plugin share them
without importing each other.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, List, NoReturn, Optional

#: Exit status when the drop or its verification fails (sysexits EX_NOPERM).
EXIT_DROP_FAILED = 77
#: Exit status when the configuration cannot be resolved (sysexits EX_CONFIG).
EXIT_BAD_CONFIG = 78


#: Every option of DropPrivileges, each also a config key ``engine.dropprivs.<name>``.
OPTION_NAMES = ('uid', 'gid', 'groups', 'umask', 'require_root', 'no_new_privs', 'priority',
                'chown_logs', 'chown', 'confine', 'confine_read', 'confine_write', 'confine_connect')


class ConfigError(ValueError):
    """An ``engine.dropprivs.*`` key that is not an option (e.g. misspelt).

    Raised when the config is applied, so that a typo cannot leave the real
    option silently off. Like a bad option value, it ends the process with
    EXIT_BAD_CONFIG when nothing catches it (as under cherryd): see
    plugin.install.
    """

    def __init__(self, name: str) -> None:
        super().__init__(
            f'unknown option engine.dropprivs.{name}; the options are: {", ".join(OPTION_NAMES)} '
            f'(and on, to subscribe)')


class PrivilegeDropError(RuntimeError):
    """The drop, or its verification, failed at a named step.

    A process that sees this must not go on serving: its credentials are in
    an unknown state between root and the target.
    """

    def __init__(self, step: str, detail: str, oserror: Optional[OSError] = None):
        self.step = step
        self.detail = detail
        self.oserror = oserror
        msg = f'{step}: {detail}'
        if oserror is not None:
            msg += f' ({oserror.__class__.__name__}: {oserror})'
        super().__init__(msg)


class VerificationError(PrivilegeDropError):
    """The kernel's view after the drop differs from the target."""


#: Called with the failure line just before exit_now ends the process (e.g.
#: the systemd notifier sends it as STATUS=). Must not raise.
LAST_WORDS: List[Callable[[str], None]] = []


def exit_now(log: Callable[..., None], msg: str, status: int,
             when: str = 'before serving') -> NoReturn:
    """Log one CRITICAL line, flush every log handler and stream, and end the
    process at once (``os._exit``): CherryPy's bus would otherwise go on to run
    later listeners, as root. ``log`` is ``bus.log``; ``when`` ends the line."""
    line = f'dropprivs: FAILED: {msg}; exiting with status {status} {when}'
    log(line, level=logging.CRITICAL)
    for last_words in LAST_WORDS:
        try:
            last_words(line)
        except Exception:
            pass
    for logger in [logging.getLogger()] + list(logging.Logger.manager.loggerDict.values()):
        for handler in getattr(logger, 'handlers', ()):
            try:
                handler.flush()
            except Exception:
                pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)
