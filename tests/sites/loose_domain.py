"""Attacker's wrapper for tests: a loose Landlock domain, a forged marker, then exec.

Whoever starts the process as root controls its environment and can wrap it:
this confines the process in a foreign domain that grants everything below
every top-level directory (only ``/`` itself is denied, which is all a
probe of ``/`` sees), sets CHERRYPY_DROPPRIVS_CONFINED to the pid the
site will have (exec keeps it), and execs the rest of argv.
"""

import os
import sys

from cherrypy_dropprivs import kernel, landlock

tops = tuple(landlock.PathRule(os.path.join('/', e), 'read+exec+write', 'foreign')
             for e in sorted(os.listdir('/'))
             if os.path.isdir(os.path.join('/', e)) and not os.path.islink(os.path.join('/', e)))
fd = landlock.create_ruleset(landlock.Rules(tops, (), 0), 3)  # filesystem rights only
kernel.set_no_new_privs()
landlock.restrict_self(fd, 3)
os.environ[landlock.CONFINED_ENV] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
