"""``python -m cherrypy_dropprivs check ...``: see check_command."""

from __future__ import annotations

import os
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != 'check':
        print('usage: python -m cherrypy_dropprivs check [CONFIG ...] [--uid U] [--gid G] '
              '[--groups ...] [--umask M] [--pidfile PATH] [--chown PATH]', file=sys.stderr)
        return 2
    from .check_command import run

    try:
        return run(argv[1:])
    except BrokenPipeError:  # e.g. piped into head: not an error of the check
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == '__main__':
    sys.exit(main())
