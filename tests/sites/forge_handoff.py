"""Plays a forger of the restart hand-over: binds a listening socket, describes
it in CHERRYPY_DROPPRIVS_SOCKETS with this very pid (execv keeps the pid, as an
exec wrapper would), optionally becomes nobody, then execs site.py.

    forge_handoff.py --bind HOST PORT --key HOST PORT [--as-nobody] -- SITE-ARGS...

``--key`` is the configured address the forged entry claims to be.
"""

import argparse
import json
import os
import socket
import sys

p = argparse.ArgumentParser()
p.add_argument('--bind', nargs=2, required=True)
p.add_argument('--key', nargs=2, required=True)
p.add_argument('--as-nobody', action='store_true')
p.add_argument('rest', nargs=argparse.REMAINDER)
args = p.parse_args()

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((args.bind[0], int(args.bind[1])))
s.listen(5)
s.set_inheritable(True)
key = json.dumps([args.key[0], int(args.key[1])])
os.environ['CHERRYPY_DROPPRIVS_SOCKETS'] = json.dumps({'pid': os.getpid(), 'sockets': {key: s.fileno()}})
if args.as_nobody:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
site = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'site.py')
rest = args.rest[1:] if args.rest[:1] == ['--'] else args.rest
os.execv(sys.executable, [sys.executable, site, *rest])
