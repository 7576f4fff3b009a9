"""Both sides of a re-exec by a restart: the old image handing its kept sockets
over at the exec; the new one adopting them (checked, never trusted: see
:func:`adopt`), staying daemonized, and failing clearly when it cannot serve.

Loaded at the exec, in a re-executed image, or in a process that starts its
servers without root; a start that is never restarted does not load it.
Where the target could not read it after the drop, it is loaded before
(preflight.import_what_the_target_could_not).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Callable, Dict, List, NoReturn, Optional, Sequence

from . import patches
from .errors import EXIT_DROP_FAILED, exit_now
from .handoff import (
    HANDOFF_ENV,
    KEEPER,
    Addr,
    ServerInfo,
    SocketKeeper,
    can_bind_privileged,
    daemonizers,
    listening_problem,
    reexec_blockers,
    server_adapters,
    server_infos,
    startup_cwd,
    unprivileged_port_start,
    unreadable_tls,
    whoami,
)


def adopt(keeper: SocketKeeper, raw: str, expected: Dict[str, Addr]) -> List[str]:
    """Adopt the sockets described by ``raw`` (the hand-over variable, already
    removed from the environment, in a process without root); returns what was refused.

    A re-executed process adopts only a listening stream socket, in its own
    network namespace, whose address matches the configured server of the
    same key (``expected``: key -> configured bind address). Anything else
    is returned as a reason, for the caller to fail closed with.
    """
    try:
        data = json.loads(raw)
        pid, sockets = data['pid'], dict(data['sockets'])
    except (ValueError, KeyError, TypeError) as e:
        return [f'{HANDOFF_ENV} is malformed ({e!r})']
    if pid != os.getpid():
        return []  # inherited by some other program's child: not ours
    keeper.daemonized = data.get('daemonized') is True
    refused = []
    for key, fd in sockets.items():
        why = _unadoptable(key, fd, expected)
        if why:
            refused.append(f'fd {fd} ({key}): {why}')
            continue
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        keeper.put(key, sock)
    keeper.adopted_from_exec = bool(keeper.fds())
    return refused


def _unadoptable(key: str, fd: object, expected: Dict[str, Addr]) -> Optional[str]:
    """Why the handed-over ``fd`` must not be adopted for ``key``, or None."""
    if key not in expected:
        return 'no configured server has this address'
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 3:
        return 'not a descriptor number above 2'
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        return f'not an open socket ({e.strerror})'
    try:
        if sock.type != socket.SOCK_STREAM:
            return f'a {sock.type.name} socket, not a stream socket'
        own, its = netns_cookie(), netns_cookie(sock)
        if own is not None and its != own:
            return 'bound in another network namespace'
        return listening_problem(sock, expected[key])
    finally:
        sock.close()


def proves_root_start(keeper: SocketKeeper) -> bool:
    """Whether an adopted socket is one only root could have bound: a TCP
    port below ip_unprivileged_port_start. The environment can be forged;
    a bound privileged port cannot (short of a process holding
    CAP_NET_BIND_SERVICE, or the dropped site itself handing its own
    sockets on). The socket must also be in this process's network
    namespace: in a user namespace of its own, any user is root of a new
    network namespace and may bind its privileged ports."""
    limit = unprivileged_port_start()
    own = netns_cookie()
    return own is not None and any(
        s.family in (socket.AF_INET, socket.AF_INET6) and 0 < s.getsockname()[1] < limit
        and netns_cookie(s) == own for s in keeper.sockets())


#: getsockopt(SOL_SOCKET, SO_NETNS_COOKIE): the socket's network namespace (Linux 5.14+).
SO_NETNS_COOKIE = 71


def netns_cookie(sock: Optional[socket.socket] = None) -> Optional[int]:
    """The network namespace cookie of ``sock`` (default: this process's own,
    through a fresh socket); None where the kernel cannot tell."""
    try:
        if sock is None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                return netns_cookie(probe)
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), sys.byteorder)
    except OSError:
        return None


def stay_daemonized(bus) -> None:
    """In an image re-executed by a daemon: the Daemonizer (65) must not fork
    again. The process is still detached (session, streams); a new pid would
    leave the PID file root wrote pointing at nothing, and only root could
    rewrite it. CherryPy's Daemonizer forks even when it says "Already
    daemonized", and the bus already holds its start listener for this
    publish, so its fork is made a no-op on the instance."""
    for d in daemonizers(bus):
        d.finalized = True
        patches.replace(d, 'daemonize', _already_daemonized)
    if daemonizers(bus):
        bus.log(f'dropprivs: already daemonized before the re-exec: not forking again '
                f'(pid {os.getpid()} kept)')


def _already_daemonized(*args, **kwargs) -> None:
    return None


def cannot_serve(bus) -> Optional[str]:
    """A fatal problem for a non-root process about to start its servers, or None."""
    infos = server_infos(server_adapters(bus))
    tls = unreadable_tls(infos)
    if tls:
        return f'cannot start the servers: {"; ".join(tls)}'
    problems = cannot_listen(infos, socket_activation=bool(os.environ.get('LISTEN_PID')))
    if problems:
        return no_socket_message(problems, KEEPER.adopted_from_exec)
    return None


def cannot_listen(servers: Sequence[ServerInfo], socket_activation: bool = False) -> List[str]:
    """Servers this (non-root) process could neither adopt a socket for nor bind."""
    out = []
    limit = unprivileged_port_start()
    privileged = can_bind_privileged()
    for server in servers:
        addr = server.bind_addr
        if server.has_socket or addr is None:
            continue
        if isinstance(addr, (tuple, list)):
            if socket_activation:
                continue  # cheroot takes fd 3 from the activating manager
            port = int(addr[1])
            if 0 < port < limit and not privileged:
                out.append(f'server {server.description}: port {port} is privileged (below {limit}), '
                           f'this process runs as {whoami()} without CAP_NET_BIND_SERVICE, and it '
                           f'has no listening socket to adopt for it')
            continue
        path = os.fsdecode(addr)
        if path.startswith('\0') or not path:
            continue  # abstract namespace: nothing on disk to recreate
        parent = os.path.dirname(os.path.abspath(path))
        if not os.access(parent, os.W_OK | os.X_OK):
            out.append(f'server {server.description}: the UNIX socket {path} cannot be recreated '
                       f'by {whoami()} ({parent} is not writable), and there is no listening '
                       f'socket to adopt for it')
    return out


def no_socket_message(problems: Sequence[str], handed_over: bool) -> str:
    why = (
        'Sockets were handed over across the re-exec, but not for these servers'
        if handed_over else
        'No listening socket was handed over: this is a re-executed process whose sockets '
        'were not kept, or a process started directly as an unprivileged user'
    )
    return (
        f'No sockets to adopt: {"; ".join(problems)}. {why}. Start the site as root (the '
        f'plugin binds, drops, and keeps the sockets for restarts), under systemd socket '
        f'activation, or with CAP_NET_BIND_SERVICE; or listen on a port >= '
        f'{unprivileged_port_start()}'
    )


# -- the old image, at the exec ------------------------------------------------

def execv(bus, do_execv: Callable[[], None]) -> None:
    """The bus's re-exec, carrying the kept sockets; a clear exit (77) where the
    dropped user could not run the new image."""
    if os.geteuid() != 0:  # after the drop: exec only what the new process can run
        blockers = reexec_blockers(sys.executable, sys.argv[0] if sys.argv else '', startup_cwd())
        if blockers:
            _fail(bus, '; '.join(blockers))
    prepare_exec(KEEPER, daemonized=any(d.finalized for d in daemonizers(bus)))
    try:
        do_execv()
    except OSError as e:  # e.g. EACCES: the dropped user cannot reach the interpreter
        _fail(bus, f'execv({sys.executable}): {e}')


def _fail(bus, why: str) -> NoReturn:
    exit_now(bus.log, f'cannot re-execute the process as {whoami()} for the restart: {why}. '
                      f'Install the application and Python where that user can read and '
                      f'execute them (not under a mode-700 home such as /root)', EXIT_DROP_FAILED)


def set_cloexec(bus, cherrypys: Callable[[], None]) -> None:
    """CherryPy's _set_cloexec (close-on-exec on every fd from 3 below
    ``bus.max_cloexec_files``) for the open ones only, then the kept sockets
    made inheritable again. CherryPy tries every number up to the fd limit
    (with 20000, 15 ms of every restart); ``cherrypys`` is its own, used without /proc."""
    try:
        fds = [int(fd) for fd in os.listdir('/proc/self/fd')]
    except (OSError, ValueError):
        cherrypys()
    else:
        for fd in fds:
            if 3 <= fd < bus.max_cloexec_files:
                try:
                    os.set_inheritable(fd, False)
                except OSError:  # the listing's own descriptor, closed since
                    pass
    mark_inheritable(KEEPER)


def prepare_exec(keeper: SocketKeeper, daemonized: bool = False) -> None:
    """Make the kept sockets inheritable and describe them in the environment.

    ``daemonized``: the process has already daemonized, so the new image
    must not fork again (a new pid would orphan the PID file root wrote).
    """
    env = os.environ
    mark_inheritable(keeper)
    env[HANDOFF_ENV] = json.dumps({'pid': os.getpid(), 'sockets': keeper.fds(),
                                   'daemonized': daemonized})
    env.update(keeper.exec_env)
    if keeper.activation_key is not None and env.get('LISTEN_PID') == str(os.getpid()):
        # cheroot's own socket-activation path reads fd 3 only (LISTEN_PID
        # stays valid: execv keeps the pid).
        os.dup2(keeper.fds()[keeper.activation_key], 3, inheritable=True)
        keeper._fd3_handed = True


def mark_inheritable(keeper: SocketKeeper) -> None:
    """Undo the close-on-exec that _set_cloexec() puts on every fd."""
    for s in keeper.sockets():
        os.set_inheritable(s.fileno(), True)
    for fd in keeper.also_inherit:
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass
    if keeper._fd3_handed:
        os.set_inheritable(3, True)
