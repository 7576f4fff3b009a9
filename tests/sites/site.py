"""A CherryPy site the tests start as a real process.

Every answer reports the credentials of the thread that served it, read from
/proc/thread-self/status (the kernel's view, not the plugin's).
"""

import argparse
import json
import os
import sys
import threading
import time

import cherrypy

#: Unique per process image: changes on every re-exec (restart), unlike the pid.
BOOT = os.urandom(8).hex()
#: Never set: /hang blocks on it.
HUNG = threading.Event()
#: Files kept open for the life of the process image (--inheritable-file).
HELD = []


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
    @cherrypy.tools.json_out()
    def env(self):
        """The environment and umask as the serving process sees them now."""
        mask = os.umask(0)
        os.umask(mask)
        keys = ('HOME', 'USER', 'LOGNAME', 'SHELL', 'MAIL', 'XDG_RUNTIME_DIR')
        return {'environ': {k: os.environ.get(k) for k in keys}, 'umask': mask}

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def regain(self):
        """Try, in the serving thread, every way back to uid/gid 0; report each errno."""
        out = {}
        for name, call in (('setuid', lambda: os.setuid(0)), ('seteuid', lambda: os.seteuid(0)),
                           ('setresuid', lambda: os.setresuid(0, 0, 0)),
                           ('setgid', lambda: os.setgid(0)), ('setegid', lambda: os.setegid(0)),
                           ('setgroups', lambda: os.setgroups([0]))):
            try:
                call()
                out[name] = 'succeeded'
            except OSError as e:
                out[name] = e.errno
        out['after'] = thread_identity()
        return out

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def boot(self):
        """The serving thread's identity, this process image's boot token, the bus state."""
        started = cherrypy.engine.state == cherrypy.engine.states.STARTED
        return dict(thread_identity(), boot=BOOT, started=started)

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def modules(self):
        """This package's modules loaded in this process image."""
        return sorted(m for m in sys.modules if m.startswith('cherrypy_dropprivs'))

    @cherrypy.expose
    def restart(self):
        threading.Timer(0.05, cherrypy.engine.restart).start()
        return 'restarting'

    @cherrypy.expose
    def note(self, text='note'):
        """Write one line to the error log (cherrypy.log) and answer."""
        cherrypy.log(f'site note: {text}')
        return 'noted'

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def probe(self, read=(), write=(), bind=None, connect=(), delay='0'):
        """Try, in the serving thread, each access named; report 'ok' or the errno's name.

        read/write: paths (repeatable); bind: 1 to bind 127.0.0.1:0 and the
        port given; connect: TCP ports on 127.0.0.1 (repeatable); delay:
        seconds to hold the worker first, so concurrent probes land on
        different workers.
        """
        import errno
        import socket
        import time

        def many(v):
            return [v] if isinstance(v, str) else list(v)

        def attempt(fn, arg):
            try:
                fn(arg)
                return 'ok'
            except OSError as e:
                return errno.errorcode.get(e.errno, str(e.errno))

        def do_read(path):
            with open(path, 'rb') as f:
                f.read(1)

        def do_write(path):
            with open(path, 'a') as f:
                f.write('probe\n')

        def do_bind(port):
            with socket.socket() as s:
                s.bind(('127.0.0.1', port))
                s.listen(1)

        def do_connect(port):
            with socket.create_connection(('127.0.0.1', port), timeout=2):
                pass

        time.sleep(float(delay))
        out = {'tid': threading.get_native_id(), 'read': {}, 'write': {}, 'bind': {}, 'connect': {}}
        for path in many(read):
            out['read'][path] = attempt(do_read, path)
        for path in many(write):
            out['write'][path] = attempt(do_write, path)
        if bind is not None:
            for port in (0, int(bind)):
                out['bind'][str(port)] = attempt(do_bind, port)
        for port in many(connect):
            out['connect'][port] = attempt(do_connect, int(port))
        return out

    @cherrypy.expose
    def counter(self):
        """A per-session counter (needs tools.sessions on, e.g. from --app-config)."""
        n = cherrypy.session.get('n', 0) + 1
        cherrypy.session['n'] = n
        return str(n)

    @cherrypy.expose
    def stop_then_restart(self):
        """engine.stop(), then engine.restart() a moment later (as an operator might)."""
        def later():
            cherrypy.engine.stop()
            time.sleep(0.5)
            cherrypy.engine.restart()
        threading.Timer(0.05, later).start()
        return 'stopping, then restarting'

    @cherrypy.expose
    def graceful(self):
        threading.Timer(0.05, cherrypy.engine.graceful).start()
        return 'graceful'

    @cherrypy.expose
    def hang(self):
        """Block this worker (bounded): a site whose every worker hangs."""
        HUNG.wait(30)
        return 'released'

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def child_env(self):
        """What a child process the site starts now inherits of the environment:
        the systemd variables and the plugin's own."""
        import subprocess
        out = subprocess.run(['env', '-0'], capture_output=True, timeout=10).stdout
        env = dict(kv.split('=', 1) for kv in out.decode(errors='replace').split('\0') if '=' in kv)
        return {k: v for k, v in env.items()
                if 'NOTIFY' in k or 'WATCHDOG' in k or k.startswith('CHERRYPY_DROPPRIVS')}


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
    p.add_argument('--app-config', default=None,
                   help="a CherryPy config file for the application (tree.mount's config)")
    p.add_argument('--record-listener', default=None,
                   help='file a start listener at priority 90 writes its euid to')
    p.add_argument('--autoreload', action='store_true')
    p.add_argument('--early-thread', default=None, metavar='NAME',
                   help='start a plain thread NAME (sleeping) before engine.start()')
    p.add_argument('--pidfile', default=None, metavar='PATH',
                   help="CherryPy's own PIDFile plugin (writes at priority 70, as root)")
    p.add_argument('--watch', action='append', default=[],
                   help='one more file for the autoreloader to watch')
    p.add_argument('--daemonize', default=None, metavar='LOG',
                   help="run CherryPy's Daemonizer; its stdout/stderr go to LOG")
    p.add_argument('--write-pid', default=None, metavar='FILE',
                   help='write the (daemonized) pid to FILE at start (errors ignored)')
    p.add_argument('--log-levels', action='store_true',
                   help='also print every error-log record as "LEVEL|message" lines')
    p.add_argument('--pretend-yama', type=int, default=None, metavar='SCOPE',
                   help='a fake, for tests on a kernel without Yama: the package reads '
                        'kernel.yama.ptrace_scope as SCOPE')
    p.add_argument('--stop-start', action='store_true',
                   help='engine.stop() then engine.start() once after the first start')
    p.add_argument('--server-at', nargs=2, type=int, action='append', default=[],
                   metavar=('PORT', 'PRIORITY'),
                   help='one more HTTP server whose start listener runs at PRIORITY '
                        '(e.g. 5: before the drop plugin arms; 80: after the drop)')
    p.add_argument('--slow-start', type=float, default=0.0, metavar='SECONDS',
                   help='a start listener at priority 76 (after the servers bind, before the '
                        'drop) sleeps this long: a wider window for clients to arrive in')
    p.add_argument('--late-server-at', nargs=2, type=int, action='append', default=[],
                   metavar=('PORT', 'PRIORITY'),
                   help='like --server-at, but subscribed after the drop plugin')
    p.add_argument('--inheritable-file', default=None, metavar='PATH',
                   help='open PATH (if this process can) and keep it open, inheritable: '
                        'a descriptor a re-exec must close')
    args = p.parse_args()
    if args.pretend_yama is not None:  # see --pretend-yama: said in each test that uses it
        from cherrypy_dropprivs import kernel
        kernel.ptrace_scope = lambda: args.pretend_yama

    cherrypy.config.update({
        'engine.autoreload.on': args.autoreload,
        'engine.autoreload.frequency': 0.2,
        'log.screen': True,
        'checker.on': False,
    })
    if args.log_levels:
        import logging
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter('%(levelname)s|%(message)s'))
        cherrypy.log.error_log.addHandler(handler)
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
    for port, priority in args.server_at:
        s = cherrypy._cpserver.Server()
        s.socket_host, s.socket_port, s.thread_pool = args.host, port, 4
        cherrypy.engine.subscribe('start', s.start, priority=priority)
        cherrypy.engine.subscribe('stop', s.stop)
        servers.append(s)
    if args.unix:
        s = cherrypy._cpserver.Server()
        s.socket_file = args.unix
        s.thread_pool = 4
        s.subscribe()
        servers.append(s)

    cherrypy.tree.mount(Root(), '/', args.app_config)
    cherrypy.tree.graft(wsgi_whoami, '/wsgi')

    options = json.loads(args.options)
    if args.plugin == 'ours':
        import cherrypy_dropprivs
        from cherrypy_dropprivs import DropPrivileges
        print(f'site: cherrypy_dropprivs from {os.path.dirname(cherrypy_dropprivs.__file__)}',
              file=sys.stderr, flush=True)
        DropPrivileges(cherrypy.engine, **options).subscribe()
    elif args.plugin == 'builtin':
        from cherrypy.process.plugins import DropPrivileges as Builtin
        Builtin(cherrypy.engine, **options).subscribe()
    if args.config:
        cherrypy.config.update(args.config)
    for port, priority in args.late_server_at:
        s = cherrypy._cpserver.Server()
        s.socket_host, s.socket_port, s.thread_pool = args.host, port, 4
        cherrypy.engine.subscribe('start', s.start, priority=priority)
        cherrypy.engine.subscribe('stop', s.stop)

    if args.slow_start:
        import time
        cherrypy.engine.subscribe('start', lambda: time.sleep(args.slow_start), priority=76)
    if args.record_listener:
        def record():
            with open(args.record_listener, 'a') as f:
                f.write(f'{os.geteuid()}\n')
        cherrypy.engine.subscribe('start', record, priority=90)

    if args.early_thread:
        threading.Thread(target=threading.Event().wait, name=args.early_thread, daemon=True).start()
    if args.pidfile:
        from cherrypy.process.plugins import PIDFile
        PIDFile(cherrypy.engine, args.pidfile).subscribe()
    for path in args.watch:
        cherrypy.engine.autoreload.files.add(path)
    if args.daemonize:
        from cherrypy.process.plugins import Daemonizer
        Daemonizer(cherrypy.engine, stdout=args.daemonize, stderr=args.daemonize).subscribe()
    if args.write_pid:
        def write_pid():
            try:
                with open(args.write_pid, 'w') as f:
                    f.write(f'{os.getpid()}\n')
            except OSError:
                pass  # a re-exec as nobody keeps the same pid anyway
        cherrypy.engine.subscribe('start', write_pid, priority=66)

    if args.inheritable_file:
        try:
            held = open(args.inheritable_file, 'rb')
            os.set_inheritable(held.fileno(), True)
            HELD.append(held)
        except OSError:
            pass

    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    if args.stop_start:
        cherrypy.engine.stop()
        cherrypy.engine.start()
    cherrypy.engine.block()


if __name__ == '__main__':
    sys.exit(main())
