"""A CherryPy site the tests start as a real process.

Every answer reports the credentials of the thread that served it, read from
/proc/thread-self/status (the kernel's view, not the plugin's).
"""

import argparse
import json
import os
import sys
import threading

import cherrypy


def thread_identity():
    fields = {}
    with open('/proc/thread-self/status') as f:
        for line in f:
            k, _, v = line.partition(':')
            fields[k] = v.strip()
    return {
        'pid': os.getpid(),
        'tid': threading.get_native_id(),
        'uids': [int(x) for x in fields['Uid'].split()],
        'gids': [int(x) for x in fields['Gid'].split()],
        'groups': [int(x) for x in fields['Groups'].split()],
        'cap_eff': fields['CapEff'],
        'home': os.environ.get('HOME'),
    }


class Root:
    @cherrypy.expose
    @cherrypy.tools.json_out()
    def whoami(self):
        return thread_identity()

    @cherrypy.expose
    def restart(self):
        threading.Timer(0.05, cherrypy.engine.restart).start()
        return 'restarting'

    @cherrypy.expose
    def graceful(self):
        threading.Timer(0.05, cherrypy.engine.graceful).start()
        return 'graceful'


def wsgi_whoami(environ, start_response):
    body = json.dumps(thread_identity()).encode()
    start_response('200 OK', [('Content-Type', 'application/json'), ('Content-Length', str(len(body)))])
    return [body]


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, action='append', default=[])
    p.add_argument('--unix', default=None, help='UNIX socket path for one more server')
    p.add_argument('--ssl', nargs=2, metavar=('CERT', 'KEY'), default=None,
                   help='serve HTTPS on the first port')
    p.add_argument('--plugin', choices=['ours', 'builtin', 'none', 'config'], default='ours')
    p.add_argument('--options', default='{}', help='JSON keyword arguments for the plugin')
    p.add_argument('--config', default=None, help='a CherryPy config file to apply')
    p.add_argument('--record-listener', default=None,
                   help='file a start listener at priority 90 writes its euid to')
    p.add_argument('--autoreload', action='store_true')
    p.add_argument('--stop-start', action='store_true',
                   help='engine.stop() then engine.start() once after the first start')
    args = p.parse_args()

    cherrypy.config.update({
        'engine.autoreload.on': args.autoreload,
        'engine.autoreload.frequency': 0.2,
        'log.screen': True,
        'checker.on': False,
    })
    if args.plugin in ('ours', 'config'):
        import cherrypy_dropprivs  # noqa: F401  (creates engine.dropprivs)

    servers = []
    ports = list(args.port)
    first = ports.pop(0) if ports else None
    if first is not None:
        cherrypy.server.socket_host = args.host
        cherrypy.server.socket_port = first
        cherrypy.server.thread_pool = 4
        if args.ssl:
            cherrypy.server.ssl_module = 'builtin'
            cherrypy.server.ssl_certificate, cherrypy.server.ssl_private_key = args.ssl
    else:
        cherrypy.server.unsubscribe()
    for port in ports:
        s = cherrypy._cpserver.Server()
        s.socket_host, s.socket_port, s.thread_pool = args.host, port, 4
        s.subscribe()
        servers.append(s)
    if args.unix:
        s = cherrypy._cpserver.Server()
        s.socket_file = args.unix
        s.thread_pool = 4
        s.subscribe()
        servers.append(s)

    cherrypy.tree.mount(Root(), '/')
    cherrypy.tree.graft(wsgi_whoami, '/wsgi')

    options = json.loads(args.options)
    if args.plugin == 'ours':
        from cherrypy_dropprivs import DropPrivileges
        DropPrivileges(cherrypy.engine, **options).subscribe()
    elif args.plugin == 'builtin':
        from cherrypy.process.plugins import DropPrivileges as Builtin
        Builtin(cherrypy.engine, **options).subscribe()
    if args.config:
        cherrypy.config.update(args.config)

    if args.record_listener:
        def record():
            with open(args.record_listener, 'a') as f:
                f.write(f'{os.geteuid()}\n')
        cherrypy.engine.subscribe('start', record, priority=90)

    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    if args.stop_start:
        cherrypy.engine.stop()
        cherrypy.engine.start()
    cherrypy.engine.block()


if __name__ == '__main__':
    sys.exit(main())
