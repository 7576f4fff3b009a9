"""The benchmarks' hello-world CherryPy site.

``--plugin ours`` subscribes ``cherrypy_dropprivs.DropPrivileges`` (drop to
``--user``), ``builtin`` CherryPy's own plugin, ``none`` nothing (plain
CherryPy), ``imported`` only ``import cherrypy_dropprivs`` (which creates the
unsubscribed ``engine.dropprivs``). Everything else is identical, so a
difference between two runs is the plugin's. ``--port`` may be repeated: one server per port.
"""

from __future__ import annotations

import argparse
import sys

import cherrypy


class Hello:
    @cherrypy.expose
    def index(self):
        return 'Hello, world!'


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, action='append', required=True)
    p.add_argument('--plugin', choices=['ours', 'builtin', 'none', 'imported'], default='ours')
    p.add_argument('--user', default='nobody')
    p.add_argument('--quiet', action='store_true', help='no access/error log on the screen')
    args = p.parse_args()

    cherrypy.config.update({
        'engine.autoreload.on': False,
        'checker.on': False,
        'log.screen': not args.quiet,
        'server.socket_host': args.host,
        'server.socket_port': args.port[0],
    })
    for port in args.port[1:]:
        s = cherrypy._cpserver.Server()
        s.socket_host, s.socket_port = args.host, port
        s.subscribe()
    cherrypy.tree.mount(Hello(), '/')

    if args.plugin == 'ours':
        from cherrypy_dropprivs import DropPrivileges
        DropPrivileges(cherrypy.engine, args.user).subscribe()
    elif args.plugin == 'imported':
        import cherrypy_dropprivs  # noqa: F401
    elif args.plugin == 'builtin':
        from cherrypy.process.plugins import DropPrivileges as Builtin
        Builtin(cherrypy.engine, uid=args.user, gid='nogroup').subscribe()

    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    cherrypy.engine.block()
    return 0


if __name__ == '__main__':
    sys.exit(main())
