"""FAKED kernel without Landlock: every Landlock syscall fails with ENOSYS.

Usage: no_landlock.py PYTHON SITE [ARGS...] (the argv the site fixture builds
after its prefix). This machine's kernel has Landlock; there is no other way
to take it away from one process, so the single kernel call is replaced.
"""

import errno
import os
import runpy
import sys

import cherrypy_dropprivs.landlock as landlock


def _enosys(number, *args):
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))


landlock._syscall = _enosys
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name='__main__')
