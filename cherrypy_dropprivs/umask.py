"""Parsing a umask given as a number or an octal string."""

from __future__ import annotations

import os
from typing import Optional, Union

ACCEPTED = "an int in 0..0o777, an octal string such as '027' or '0o027', or None"


def parse_umask(value: Union[int, str, None]) -> Optional[int]:
    """Return the umask as an int, or None to leave it unchanged.

    Strings are always octal (as ``umask 027`` in a shell), because a config
    file value of ``'027'`` read as decimal would be a silent disaster.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f'umask must be {ACCEPTED}; got {value!r} ({type(value).__name__})')
    shown = value
    if isinstance(value, str):
        text = value.strip().lower()
        digits = text[2:] if text.startswith('0o') else text
        if not digits or any(c not in '01234567' for c in digits):
            raise ValueError(f'umask {value!r} is not octal; accepted: {ACCEPTED}')
        value = int(digits, 8)
    if not 0 <= value <= 0o777:
        raise ValueError(f'umask {shown!r} is out of range; accepted: {ACCEPTED}')
    return value


def current_umask() -> int:
    """The process's umask without changing it, from /proc (Linux 4.7+).

    Reading it with os.umask means setting it for an instant, and another
    thread creating a file in that instant would get the probe's mask; the
    fallback probes with 0o077 so that such a file is too private, not too open.
    """
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
