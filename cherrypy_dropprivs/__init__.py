"""cherrypy-dropprivs: drop root completely, verifiably, and for good.

Importing this package creates ``cherrypy.engine.dropprivs`` (unsubscribed),
so a CherryPy config file can switch it on with ``engine.dropprivs.on: True``.
"""

from .drop import DropRecord, Snapshot, drop_privileges
from .errors import PrivilegeDropError, VerificationError
from .identity import Identity, Plan, make_plan, resolve_identity
from .plugin import DropPrivileges
from .plugin import install as _install

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
