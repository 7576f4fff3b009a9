"""A site whose handlers play a compromised application (tests/test_attack_process.py).

/tiocsti tries to type a command into the terminal on fds 0-3 and /dev/tty;
/readkeys tries to read from fds 0-2; --child-at-76 starts a child between
the bind and the drop, as root.
"""

import argparse
import errno
import fcntl
import json
import os
import signal
import subprocess
import termios

import cherrypy


def _try(func):
    try:
        func()
        return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


class Root:
    @cherrypy.expose
    @cherrypy.tools.json_out()
    def whoami(self):
        return {'pid': os.getpid(), 'uid': os.getuid(), 'sighup': repr(signal.getsignal(signal.SIGHUP))}

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def tiocsti(self, text='id\n'):
        out = {}
        for fd in (0, 1, 2, 3):
            def push(fd=fd):
                for b in text.encode():
                    fcntl.ioctl(fd, termios.TIOCSTI, bytes([b]))
            out[f'fd{fd}'] = _try(push)

        def devtty():
            fd = os.open('/dev/tty', os.O_RDWR)
            try:
                for b in text.encode():
                    fcntl.ioctl(fd, termios.TIOCSTI, bytes([b]))
            finally:
                os.close(fd)
        out['devtty'] = _try(devtty)
        return out

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def readkeys(self):
        out = {}
        for fd in (0, 1, 2, 3):
            def read(fd=fd):
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
                try:
                    os.read(fd, 1)
                finally:
                    fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            out[f'fd{fd}'] = _try(read)
        return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--options', default='{}')
    p.add_argument('--child-at-76', default=None, metavar='PIDFILE',
                   help='a start listener at priority 76 starts `sleep 30` and writes its pid here')
    args = p.parse_args()
    cherrypy.config.update({'engine.autoreload.on': False, 'log.screen': True, 'checker.on': False,
                            'server.socket_host': '127.0.0.1', 'server.socket_port': args.port,
                            'server.thread_pool': 4})
    from cherrypy_dropprivs import DropPrivileges
    DropPrivileges(cherrypy.engine, **json.loads(args.options)).subscribe()
    if args.child_at_76:
        def helper():
            child = subprocess.Popen(['sleep', '30'])
            with open(args.child_at_76, 'w') as f:
                f.write(f'{child.pid}\n')
        cherrypy.engine.subscribe('start', helper, priority=76)
    cherrypy.tree.mount(Root(), '/')
    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    cherrypy.engine.block()


if __name__ == '__main__':
    main()
