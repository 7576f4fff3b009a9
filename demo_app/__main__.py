"""``python -m demo_app``: options, then start the site and drop root (and confine it, with --confine).

Settings are layered: the demo's defaults, then the ``--config`` file (which
may switch on ``engine.dropprivs``), then the other command-line options.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import cherrypy

import cherrypy_dropprivs  # noqa: F401  (creates cherrypy.engine.dropprivs for the config file)
from cherrypy_dropprivs.errors import EXIT_BAD_CONFIG

from .app import CONFIG, IdentitySite
from .kernel_identity import StartInfo

#: Without root, a port below 1024 cannot be bound (ip_unprivileged_port_start).
ROOT_PORT, USER_PORT = 80, 8080


def default_port(euid: int) -> int:
    """Port 80 when started as root; 8080 otherwise, which needs no privilege."""
    return ROOT_PORT if euid == 0 else USER_PORT


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog='python -m demo_app',
        description='A CherryPy site that drops root and shows its identity from the kernel\'s view.',
    )
    p.add_argument('--host', default=None, help='address to bind (default 127.0.0.1)')
    p.add_argument('--port', type=int, default=None,
                   help=f'port to bind (default {ROOT_PORT} as root, {USER_PORT} otherwise)')
    p.add_argument('--user', default=None, help='user to drop to, name or number (default nobody)')
    p.add_argument('--group', default=None, help='primary group (default: the user\'s, from passwd)')
    p.add_argument('--config', default=None,
                   help='a CherryPy config file, applied with cherrypy.config.update '
                        '(see demo_app/demo.conf for engine.dropprivs.*)')
    p.add_argument('--confine', action='store_true',
                   help='after the drop, confine the site with Landlock (engine.dropprivs.confine)')
    return p.parse_args(argv)


def configure(args: argparse.Namespace) -> StartInfo:
    """Apply defaults, config file and options; raises ValueError/TypeError on bad input."""
    root = os.geteuid() == 0
    plugin = cherrypy.engine.dropprivs
    if not root:
        plugin.uid = None  # nothing to drop: keep the current user (the plugin warns)
    cherrypy.config.update({
        'server.socket_host': '127.0.0.1',
        'server.socket_port': default_port(os.geteuid()),
        # Off: the dropped user may not be able to stat (or re-execute) the code.
        'engine.autoreload.on': False,
        'log.screen': True,
    })
    activated_by = 'demo_app (command line)'
    if args.config:
        if not os.path.isfile(args.config):
            raise ValueError(f'--config {args.config!r}: no such file')
        cherrypy.config.update(args.config)
        if plugin.start in cherrypy.engine.listeners['start']:
            activated_by = f'config file {args.config} (engine.dropprivs.on)'
    if args.host is not None:
        cherrypy.config.update({'server.socket_host': args.host})
    if args.port is not None:
        cherrypy.config.update({'server.socket_port': args.port})
    if args.user is not None:
        plugin.uid = args.user
    if args.group is not None:
        plugin.gid = args.group
    if args.confine:
        plugin.confine = True
    target = plugin.plan().target
    if plugin.start not in cherrypy.engine.listeners['start']:
        plugin.subscribe()
    return StartInfo.now(
        cherrypy.server.socket_host, cherrypy.server.socket_port, activated_by,
        target.describe() if target else None, plugin.confine is not False,
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        start = configure(args)
    except (ValueError, TypeError) as e:
        print(f'demo_app: bad configuration: {e}', file=sys.stderr)
        return EXIT_BAD_CONFIG
    cherrypy.tree.mount(IdentitySite(start), '/', CONFIG)
    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    cherrypy.engine.block()
    return 0


if __name__ == '__main__':
    sys.exit(main())
