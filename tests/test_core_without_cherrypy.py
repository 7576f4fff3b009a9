"""The kernel-facing core stays free of CherryPy, by test rather than by habit.

Resolving an identity, the set*id sequence, verification and the kernel
reads must work for code outside CherryPy's bus (drop_privileges()). Each of
those modules is imported here with ``sys.modules['cherrypy'] = None``
(any import of cherrypy then raises ImportError), under a stand-in package so
that the real package's __init__ (which creates cherrypy.engine.dropprivs)
does not run.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

#: The modules that talk to the kernel: no CherryPy in any of them.
CORE = ['errors', 'kernel', 'libc', 'terminal', 'processes', 'older_threads', 'nameservice', 'lookups',
        'files', 'identity', 'drop', 'landlock', 'notify', 'liveness']

PROBE = '''
import importlib, sys, types
sys.modules['cherrypy'] = None
pkg = types.ModuleType('core')
pkg.__path__ = [{path!r}]
sys.modules['core'] = pkg
for name in {names!r}:
    importlib.import_module('core.' + name)
leaked = sorted(m for m in sys.modules if m == 'cheroot' or m.startswith(('cherrypy.', 'cheroot.')))
print('OK' if not leaked else 'LEAKED ' + ' '.join(leaked))
'''


def test_core_modules_import_without_cherrypy():
    code = PROBE.format(path=str(REPO / 'cherrypy_dropprivs'), names=CORE)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == 'OK', r.stdout + r.stderr
