"""Errors raised by the privilege drop.

Kept apart so the kernel-facing modules and the CherryPy plugin share them
without importing each other.
"""

from __future__ import annotations

from typing import Optional

#: Exit status when the drop or its verification fails (sysexits EX_NOPERM).
EXIT_DROP_FAILED = 77
#: Exit status when the configuration cannot be resolved (sysexits EX_CONFIG).
EXIT_BAD_CONFIG = 78


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
