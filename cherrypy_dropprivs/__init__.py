"""cherrypy-dropprivs: drop root completely, verifiably, and for good.

Importing this package creates ``cherrypy.engine.dropprivs`` (unsubscribed),
so a CherryPy config file can switch it on with ``engine.dropprivs.on: True``.
"""

from .activation import install as _install
from .drop import DropRecord, Plan, Snapshot, drop_privileges, make_plan
from .errors import PrivilegeDropError, VerificationError
from .identity import Identity, resolve_identity
from .plugin import DropPrivileges

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
