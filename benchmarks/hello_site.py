"""The benchmarks' hello-world CherryPy site.

``--plugin ours`` subscribes ``cherrypy_dropprivs.DropPrivileges`` (drop to
``--user``), ``builtin`` CherryPy's own plugin, ``none`` nothing (plain
CherryPy), ``imported`` only ``import cherrypy_dropprivs`` (which creates the
unsubscribed ``engine.dropprivs``), ``ours-lookup-here`` ours with the user
and group lookups made in the site itself instead of a forked child (the path
the package takes in a process that already has threads; lookup_tradeoff.py
weighs the two). Everything else is identical, so a difference between two
runs is the plugin's. ``--port`` may be repeated: one server per port.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import Counter

import cherrypy


class Hello:
    @cherrypy.expose
    def index(self):
        return 'Hello, world!'

    @cherrypy.expose
    def confined(self):
        """'yes' if the serving thread is under Landlock (opening / is refused)."""
        import os
        try:
            os.close(os.open('/', os.O_RDONLY | os.O_DIRECTORY))
            return 'no'
        except PermissionError:
            return 'yes'


class CallCounter:
    """``--count-calls``: every Python and C function call, per thread, by name.

    Diagnostic only (it slows the site down a lot): throughput.py diffs two
    snapshots of ``/calls/`` around N requests to list what one request runs.
    """

    def __init__(self) -> None:
        self.local = threading.local()
        self.all = []
        self.lock = threading.Lock()

    def profile(self, frame, event, arg):
        if event not in ('call', 'c_call'):
            return
        counts = getattr(self.local, 'counts', None)
        if counts is None:
            counts = self.local.counts = Counter()
            with self.lock:
                self.all.append(counts)
        if event == 'call':
            code = frame.f_code
            counts[f'{code.co_filename}:{code.co_firstlineno}:{code.co_name}'] += 1
        else:
            counts[f'builtin:{getattr(arg, "__qualname__", repr(arg))}'] += 1

    def install(self) -> None:
        threading.setprofile(self.profile)
        sys.setprofile(self.profile)

    @cherrypy.expose
    def index(self):
        sys.setprofile(None)  # the snapshot itself is not counted
        try:
            total = Counter()
            with self.lock:
                for c in self.all:
                    total.update(dict(c))
            cherrypy.response.headers['Content-Type'] = 'application/json'
            return json.dumps(total).encode()
        finally:
            sys.setprofile(self.profile)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, action='append', required=True)
    p.add_argument('--plugin', default='ours',
                   choices=['ours', 'builtin', 'none', 'imported', 'ours-lookup-here'])
    p.add_argument('--user', default='nobody')
    p.add_argument('--confine', action='store_true', help='with --plugin ours: confine=True')
    p.add_argument('--quiet', action='store_true', help='no access/error log on the screen')
    p.add_argument('--count-calls', action='store_true',
                   help='diagnostic: count every function call; GET /calls/ returns the counts')
    args = p.parse_args()
    counter = CallCounter() if args.count_calls else None

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
    if counter is not None:
        cherrypy.tree.mount(counter, '/calls')

    if args.plugin in ('ours', 'ours-lookup-here'):
        from cherrypy_dropprivs import DropPrivileges
        if args.plugin == 'ours-lookup-here':  # a what-if for lookup_tradeoff.py only
            from cherrypy_dropprivs import nameservice
            nameservice._one_thread = lambda: False
        DropPrivileges(cherrypy.engine, args.user, confine=args.confine).subscribe()
    elif args.plugin == 'imported':
        import cherrypy_dropprivs  # noqa: F401
    elif args.plugin == 'builtin':
        from cherrypy.process.plugins import DropPrivileges as Builtin
        Builtin(cherrypy.engine, uid=args.user, gid='nogroup').subscribe()

    cherrypy.engine.signals.subscribe()
    if counter is not None:
        counter.install()
    cherrypy.engine.start()
    cherrypy.engine.block()
    return 0


if __name__ == '__main__':
    sys.exit(main())
