"""cherrypy-dropprivs: drop root completely, verifiably, and for good.

Importing this package creates ``cherrypy.engine.dropprivs`` (unsubscribed),
so a CherryPy config file can switch it on with ``engine.dropprivs.on: True``.
"""

import os as _os

if f'"pid": {_os.getpid()},' in _os.environ.get('CHERRYPY_DROPPRIVS_SOCKETS', '') \
        and 0 not in _os.getresuid():
    # An image our own restart re-executed as the dropped user: execve made it
    # dumpable again, so other processes of that user could take its listening
    # sockets (pidfd_getfd) or ptrace it. Undone first (reexec.adopt checks it).
    from .kernel import make_undumpable

    try:
        make_undumpable()
    except OSError:
        pass  # the adoption fails closed, with the reason

from .drop import DropRecord, Snapshot, drop_privileges  # noqa: E402
from .errors import PrivilegeDropError, VerificationError  # noqa: E402
from .identity import Identity, Plan, make_plan, resolve_identity  # noqa: E402
from .plugin import DropPrivileges  # noqa: E402
from .plugin import install as _install  # noqa: E402

__all__ = [
    'DropPrivileges',
    'DropRecord',
    'Identity',
    'Plan',
    'PrivilegeDropError',
    'Snapshot',
    'VerificationError',
    'drop_privileges',
    'make_plan',
    'resolve_identity',
]
__version__ = '0.1.0'

_install()
