"""Plays a forger of the restart hand-over: binds a listening socket, describes
it in CHERRYPY_DROPPRIVS_SOCKETS with this very pid (execv keeps the pid, as an
exec wrapper would), optionally becomes nobody, then execs site.py.

    forge_handoff.py --bind HOST PORT --key HOST PORT [--as-nobody] [--userns] -- SITE-ARGS...

``--key`` is the configured address the forged entry claims to be.
``--userns``: after becoming nobody, bind in a user and network namespace of
a child's own (where nobody is root and may bind a privileged port), and
receive that socket over SCM_RIGHTS.
"""

import argparse
import array
import ctypes
import json
import os
import socket
import sys

p = argparse.ArgumentParser()
p.add_argument('--bind', nargs=2, required=True)
p.add_argument('--key', nargs=2, required=True)
p.add_argument('--as-nobody', action='store_true')
p.add_argument('--userns', action='store_true')
p.add_argument('rest', nargs=argparse.REMAINDER)
args = p.parse_args()



def bind_listen() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.bind[0], int(args.bind[1])))
    s.listen(5)
    return s


def bound_in_own_namespaces() -> int:
    """A child unshares a user and a network namespace, binds there, sends the fd back."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000 | 0x40000000) != 0:  # CLONE_NEWUSER | CLONE_NEWNET
            os._exit(1)
        s = bind_listen()
        b.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [s.fileno()]))])
        os._exit(0)
    _, anc, _, _ = a.recvmsg(1, socket.CMSG_SPACE(4))
    os.waitpid(pid, 0)
    return array.array('i', anc[0][2])[0]


if args.as_nobody:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
fd = bound_in_own_namespaces() if args.userns else bind_listen().detach()
os.set_inheritable(fd, True)
key = json.dumps([args.key[0], int(args.key[1])])
os.environ['CHERRYPY_DROPPRIVS_SOCKETS'] = json.dumps({'pid': os.getpid(), 'sockets': {key: fd}})
site = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'site.py')
rest = args.rest[1:] if args.rest[:1] == ['--'] else args.rest
os.execv(sys.executable, [sys.executable, site, *rest])
