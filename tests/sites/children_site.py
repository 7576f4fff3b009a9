"""A site that, before the drop (a start listener at 76), makes a child of the kind in argv[1].

dropped: a child that drops itself to nobody (setgroups, setresgid, setresuid) and sleeps;
zombie: a child (root) that exits at once and is not reaped;
grandchild: a child that forks a root grandchild (sleep) then drops itself to nobody;
grandchild_exec: the same, and the child then execs sleep (dumpable again, so visible);
plain: no child.
For tests/test_attack_reexec.py. argv: KIND PORT PIDFILE; the child's pid is
written to PIDFILE, a grandchild's to PIDFILE.g.
"""

import os
import sys
import time

import cherrypy

from cherrypy_dropprivs import DropPrivileges


def drop() -> None:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)


def main() -> None:
    kind, port, pidfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cherrypy.config.update({'engine.autoreload.on': False, 'log.screen': True, 'checker.on': False,
                            'server.socket_host': '127.0.0.1', 'server.socket_port': port,
                            'server.thread_pool': 4})
    DropPrivileges(cherrypy.engine, uid='nobody').subscribe()

    def helper() -> None:
        if kind == 'plain':
            return
        pid = os.fork()
        if pid == 0:
            if kind == 'zombie':
                os._exit(0)
            if kind in ('grandchild', 'grandchild_exec'):
                grandchild = os.fork()
                if grandchild == 0:
                    time.sleep(30)
                    os._exit(0)
                with open(pidfile + '.g', 'w') as f:
                    f.write(str(grandchild))
            drop()
            if kind == 'grandchild_exec':
                os.execv('/bin/sleep', ['sleep', '30'])
            time.sleep(30)
            os._exit(0)
        with open(pidfile, 'w') as f:
            f.write(str(pid))
        time.sleep(0.3)

    cherrypy.engine.subscribe('start', helper, priority=76)

    class Root:
        @cherrypy.expose
        def index(self):
            return 'ok'

    cherrypy.tree.mount(Root(), '/')
    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    cherrypy.engine.block()


if __name__ == '__main__':
    main()
