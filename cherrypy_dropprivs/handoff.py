"""The restart hand-over: listening sockets kept across exec, adoption, the checks before a re-exec.

After the drop the process can no longer bind a privileged port. A duplicate
of each listening socket it could not bind again is kept, so a server can
stop and start again in the same process, and a re-executed process
(engine.restart(), the Autoreloader, SIGHUP) adopts it instead of binding, as
systemd's LISTEN_FDS and nginx's binary upgrade do. Across a re-exec the
socket keeps listening: clients wait in the backlog and none is refused.
After a plain stop it is *paused* (``shutdown``: not listening, so clients
are refused as by a closed port, but still bound). The hand-over is checked,
never trusted: the new image adopts in reexec.py. The checks here name the
file, port or directory a re-executed process would trip over, instead of a
traceback from deep inside CherryPy or cheroot.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import portend
from cherrypy.process import servers as cp_servers
from cherrypy.process import wspbus
from cherrypy.process.plugins import Daemonizer

from . import patches
from .errors import EXIT_DROP_FAILED, exit_now
from .identity import format_ids, group_name
from .kernel import ptrace_scope

#: Environment variable that carries the kept sockets across execv.
HANDOFF_ENV = 'CHERRYPY_DROPPRIVS_SOCKETS'


Addr = Union[tuple, str, bytes, None]


#: The listen backlog a held server gets at the least (capped by SOMAXCONN):
#: while the gate is shut every arriving client waits there, and CherryPy's
#: default of 5 would make the kernel drop new connections within moments.
HOLD_BACKLOG = 1024


def addr_key(bind_addr: Addr) -> str:
    """A stable key for a configured bind address (the same after execv)."""
    if isinstance(bind_addr, bytes):
        bind_addr = bind_addr.decode('utf-8', 'surrogateescape')
    if isinstance(bind_addr, (tuple, list)):
        return json.dumps([str(bind_addr[0]), int(bind_addr[1])])
    return json.dumps(bind_addr)


class SocketKeeper:
    """Holds one duplicate of each server's listening socket, by address key."""

    def __init__(self) -> None:
        self._kept: Dict[str, socket.socket] = {}
        #: Keys taken from a LISTEN_PID (socket activation) server: fd 3.
        self.activation_key: Optional[str] = None
        self.adopted_from_exec = False
        #: The process that re-executed us had daemonized (see prepare_exec).
        self.daemonized = False
        #: True once prepare_exec has put the activation socket back on fd 3.
        self._fd3_handed = False
        #: Other descriptors the re-executed image inherits (the notify socket).
        self.also_inherit: Set[int] = set()
        #: Variables only the re-executed image may see (set just before the exec).
        self.exec_env: Dict[str, str] = {}
        #: The drop set HOME to the target's: a restart runs the interpreter with -s
        #: (see without_user_site).
        self.user_site_off = False

    def __contains__(self, key: str) -> bool:
        return key in self._kept

    def keep(self, key: str, sock: socket.socket, from_activation: bool = False) -> None:
        if key not in self._kept:
            self._kept[key] = socket.socket(fileno=os.dup(sock.fileno()))
        if from_activation:
            self.activation_key = key

    def take(self, key: str) -> Optional[socket.socket]:
        """A fresh duplicate of the kept socket for ``key`` (the server closes it on stop)."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        return socket.socket(fileno=os.dup(kept.fileno()))

    def ports(self) -> Set[int]:
        out = set()
        for s in self._kept.values():
            if s.family in (socket.AF_INET, socket.AF_INET6):
                out.add(s.getsockname()[1])
        return out

    def pause(self, key: str) -> None:
        """Stop listening on the kept socket for ``key`` but keep it bound.

        On Linux ``shutdown`` of a listening TCP socket resets the connections
        waiting in its backlog and leaves it bound and unconnected: new
        clients are refused, as after CherryPy closes a port, and a later
        ``listen`` (cheroot's, on the next start, or prepare_exec's) needs no
        privilege. A UNIX socket so shut down refuses every connection for
        good, whatever ``listen`` follows: it keeps listening instead, and
        its clients wait in the backlog for the next start.
        """
        kept = self._kept.get(key)
        if kept is not None and kept.family != socket.AF_UNIX and is_listening(kept):
            try:
                kept.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def sockets(self) -> List[socket.socket]:
        return list(self._kept.values())

    def fds(self) -> Dict[str, int]:
        return {k: s.fileno() for k, s in self._kept.items()}

    # -- across execv -------------------------------------------------------

    def adopt_inherited(self, expected: Dict[str, Addr], holds_root: bool) -> List[str]:
        """Adopt the sockets our own execv handed over; returns what was refused.

        The hand-over is only a hint in the environment, which whoever starts
        the process controls: a root start adopts nothing (it binds its own
        sockets, and the described fds are not touched); see reexec.adopt.
        """
        raw = os.environ.pop(HANDOFF_ENV, None)
        if not raw or holds_root:
            return []
        from . import reexec  # only in an image re-executed by a restart

        return reexec.adopt(self, raw, expected)

    def put(self, key: str, sock: socket.socket) -> None:
        """Own ``sock`` (adopted across the re-exec) as the kept socket for ``key``."""
        self._kept[key] = sock

    def prepare_exec(self, daemonized: bool = False) -> None:
        """Make the kept sockets inheritable and describe them in the environment.

        ``daemonized``: the process has already daemonized, so the new image
        must not fork again (a new pid would orphan the PID file root wrote).
        """
        env = os.environ
        for kept in self._kept.values():
            if not is_listening(kept):  # paused by an engine.stop() before this restart
                try:
                    kept.listen(hold_backlog())
                except OSError:
                    pass  # the new image names it and stops (exit 77), as for any socket
        self.mark_inheritable()
        env[HANDOFF_ENV] = json.dumps({'pid': os.getpid(), 'sockets': self.fds(),
                                       'daemonized': daemonized})
        env.update(self.exec_env)
        if self.activation_key is not None and env.get('LISTEN_PID') == str(os.getpid()):
            # cheroot's own socket-activation path reads fd 3 only (LISTEN_PID
            # stays valid: execv keeps the pid).
            os.dup2(self._kept[self.activation_key].fileno(), 3, inheritable=True)
            self._fd3_handed = True

    def mark_inheritable(self) -> None:
        """Undo the close-on-exec that CherryPy's _set_cloexec() puts on every fd."""
        for s in self._kept.values():
            os.set_inheritable(s.fileno(), True)
        for fd in self.also_inherit:
            try:
                os.set_inheritable(fd, True)
            except OSError:
                pass
        if self._fd3_handed:
            os.set_inheritable(3, True)



def hold_backlog() -> int:
    """``min(net.core.somaxconn, HOLD_BACKLOG)``: the kernel caps listen() there anyway."""
    try:
        with open('/proc/sys/net/core/somaxconn') as f:
            somaxconn = int(f.read())
    except (OSError, ValueError):
        somaxconn = socket.SOMAXCONN
    return max(1, min(somaxconn, HOLD_BACKLOG))


def listening_problem(sock: Optional[socket.socket], bind_addr: Addr) -> Optional[str]:
    """Why ``sock`` is not listening on ``bind_addr``; None when it is.

    Asks the socket itself and never connects to it: a connection would need
    a free slot in the backlog that held clients may have filled.
    """
    if sock is None:
        return 'it has no socket'
    if not is_listening(sock):
        return 'its socket is not listening'
    try:
        name = sock.getsockname()
    except OSError as e:
        return f'its socket has no address ({e})'
    if isinstance(bind_addr, (tuple, list)):
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return f'its socket is {sock.family.name}, not an IP socket'
        port = int(bind_addr[1])
        if port and name[1] != port:
            return f'its socket is bound to port {name[1]}, not {port}'
        if not _same_host(str(bind_addr[0]), str(name[0])):
            return f'its socket is bound to {name[0]}, not {bind_addr[0]}'
    elif bind_addr is not None:
        if sock.family != socket.AF_UNIX:
            return f'its socket is {sock.family.name}, not a UNIX socket'
        if os.fsencode(name) != os.fsencode(bind_addr):
            return f'its socket is bound to {name!r}, not {bind_addr!r}'
    return None


def _ip(host: str):
    try:
        ip = ipaddress.ip_address(host.strip('[]').split('%')[0])
    except ValueError:
        return None  # a name: cheroot resolved it; nothing to compare without asking DNS
    mapped = getattr(ip, 'ipv4_mapped', None)
    return mapped if mapped is not None else ip


def _same_host(configured: str, bound: str) -> bool:
    """Whether a socket bound to ``bound`` serves the configured host: the same
    address, or, for a name, one it resolves to (as cheroot resolved it)."""
    got = _ip(bound)
    if got is None:
        return True
    want = _ip(configured) if configured else ipaddress.ip_address('0.0.0.0')
    if want is None:
        try:
            infos = socket.getaddrinfo(configured, None, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return False
        wanted = {_ip(str(ai[4][0])) for ai in infos}
    else:
        wanted = {want}
    if got.is_unspecified or any(w is not None and w.is_unspecified for w in wanted):
        return got.is_unspecified and any(w is not None and w.is_unspecified for w in wanted)
    return got in wanted


def is_listening(sock: socket.socket) -> bool:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    except OSError:
        return False


#: One per process: sockets belong to the process, not to a bus or plugin.
KEEPER = SocketKeeper()


#: CAP_NET_BIND_SERVICE, capability number 10.
CAP_NET_BIND_SERVICE = 10


class ServerInfo:
    """What the checks need to know about one server: ``has_socket``, a kept
    (inherited or earlier) listening socket will be adopted; ``tls_files``,
    (role, path) of each TLS file the server reads when it starts."""

    __slots__ = ('description', 'bind_addr', 'has_socket', 'tls_files')

    def __init__(self, description: str, bind_addr: Union[tuple, str, bytes, None],
                 has_socket: bool, tls_files: Tuple[Tuple[str, str], ...] = ()) -> None:
        self.description, self.bind_addr = description, bind_addr
        self.has_socket, self.tls_files = has_socket, tls_files


def whoami() -> str:
    return format_ids(os.geteuid(), os.getegid(), os.getgroups())


def tls_files(adapter) -> Tuple[Tuple[str, str], ...]:
    """The certificate, key and chain an adapter's server reads at start.

    ``cherrypy.server``-style servers carry ``ssl_*`` options and read them in
    Server.start; a ServerAdapter around a ready-made cheroot server carries
    them on its ssl_adapter.
    """
    if getattr(adapter, 'ssl_certificate', None) or getattr(adapter, 'ssl_private_key', None):
        source, prefix = adapter, 'ssl_'
    else:
        source, prefix = getattr(getattr(adapter, 'httpserver', None), 'ssl_adapter', None), ''
    if source is None:
        return ()
    roles = (('certificate', 'certificate'), ('private key', 'private_key'),
             ('certificate chain', 'certificate_chain'))
    return tuple((role, str(getattr(source, prefix + attr)))
                 for role, attr in roles if getattr(source, prefix + attr, None))


def unreadable_tls(servers: Sequence[ServerInfo]) -> List[str]:
    """One message per TLS file this process cannot read (or that is missing):
    files.TLS_NOT_READABLE, as the check command says it."""
    out = []
    gid = os.getegid()
    for server in servers:
        for role, path in server.tls_files:
            if not os.access(path, os.R_OK):
                from .files import TLS_NOT_READABLE

                why = 'it does not exist' if not os.path.exists(path) else 'permission denied'
                out.append(TLS_NOT_READABLE.format(
                    which=role, path=path, user=whoami(), group=group_name(gid) or str(gid),
                    reason=f'{why}; server {server.description}'))
    return out


def reexec_blockers(executable: Optional[str] = None, argv0: Optional[str] = None,
                    startup_cwd: Optional[str] = None) -> List[str]:
    """What this process could not reach if it re-executed itself now."""
    executable = executable or sys.executable
    argv0 = sys.argv[0] if argv0 is None else argv0
    out = []
    if not executable or not os.access(executable, os.X_OK):
        real = os.path.realpath(executable) if executable else '(none)'
        out.append(f'the interpreter {executable} (-> {real}) is not executable')
    if argv0 and not argv0.startswith('-'):  # '-c' has no script to re-read
        script = os.path.join(startup_cwd or os.getcwd(), argv0)
        if not os.access(script, os.R_OK):
            out.append(f'the main script {script} is not readable (or not reachable)')
    if startup_cwd and not os.access(startup_cwd, os.X_OK):
        out.append(f'the start directory {startup_cwd} is not searchable')
    for package in ('cherrypy_dropprivs', 'cherrypy'):  # imported again by the new image
        init = getattr(sys.modules.get(package), '__file__', None)
        if init and not os.access(init, os.R_OK):
            out.append(f'the package {package} in {os.path.dirname(init)} is not readable (or not '
                       f'reachable)')
    return out


def reexec_warning(blockers: Sequence[str], autoreload: bool) -> str:
    how = 'the autoreloader, which is on: the first edit of a module restarts; ' if autoreload else ''
    return (
        f'after the drop a restart ({how}engine.restart(); SIGHUP when daemonized) '
        f're-executes the process as {whoami()}, and it would fail: {"; ".join(blockers)}. '
        f'Install the application and Python where that user can read and execute them '
        f'(not under a mode-700 home such as /root)'
        + ('; or turn autoreload off (engine.autoreload.on: False)' if autoreload else '')
    )


def reexec_failure(why: str) -> str:
    return (
        f'cannot re-execute the process as {whoami()} for the restart: {why}. Install the '
        f'application and Python where that user can read and execute them (not under a '
        f'mode-700 home such as /root)'
    )


def unprivileged_port_start() -> int:
    try:
        with open('/proc/sys/net/ipv4/ip_unprivileged_port_start') as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1024


def can_bind_privileged() -> bool:
    """euid 0 or CAP_NET_BIND_SERVICE in the calling thread's effective set."""
    if os.geteuid() == 0:
        return True
    try:
        with open('/proc/thread-self/status') as f:
            for line in f:
                if line.startswith('CapEff:'):
                    return bool(int(line.split()[1], 16) >> CAP_NET_BIND_SERVICE & 1)
    except (OSError, ValueError):
        pass
    return False


def can_bind_again(bind_addr: Union[tuple, str, bytes, None]) -> bool:
    """Could this process, as it is now, bind ``bind_addr`` after closing it?

    Called after the drop: a privileged port, or a UNIX socket whose file the
    process could not replace, must be kept open; anything else is closed on
    stop as CherryPy closes it, and bound again on start.
    """
    if bind_addr is None:
        return True
    if isinstance(bind_addr, (tuple, list)):
        port = int(bind_addr[1])
        return not 0 < port < unprivileged_port_start() or can_bind_privileged()
    path = os.fsdecode(bind_addr)
    if not path or path.startswith('\0'):
        return True  # the abstract namespace needs no permission
    parent = os.path.dirname(os.path.abspath(path))
    if not os.access(parent, os.W_OK | os.X_OK):
        return False
    try:  # cheroot unlinks the old file first; in a sticky directory only its owner may
        st_dir, st_file = os.stat(parent), os.lstat(path)
    except OSError:
        return True
    me = os.geteuid()
    return not st_dir.st_mode & 0o1000 or me in (st_dir.st_uid, st_file.st_uid)


def listener_owners(bus, channel: str, cls: type) -> list:
    """Every ``cls`` plugin with a listener on ``channel`` (a listener this
    package put in place of a plugin's own names that plugin)."""
    found = []
    for listener in bus.listeners.get(channel, ()):
        owner = getattr(listener, '__self__', None) or getattr(listener, '_dropprivs_owner', None)
        if isinstance(owner, cls) and owner not in found:
            found.append(owner)
    return found


def server_adapters(bus) -> List[cp_servers.ServerAdapter]:
    """Every ServerAdapter subscribed to the bus's ``start`` channel."""
    return listener_owners(bus, 'start', cp_servers.ServerAdapter)


def adapter_key(adapter, httpserver=None) -> str:
    """The KEEPER key of a server's configured address (the same after execv)."""
    httpserver = httpserver if httpserver is not None else adapter.httpserver
    configured = adapter.bind_addr
    if configured is None and httpserver is not None:
        configured = httpserver.bind_addr
    return addr_key(configured)


def describe(adapter) -> str:
    try:
        # An unstarted cherrypy Server describes itself as '' (no httpserver yet).
        return adapter.description or repr(adapter.bind_addr)
    except Exception:  # an unstarted server may not know its address yet
        return repr(adapter.bind_addr)


def keep_sockets(adapters, keep_all: bool = False) -> None:
    """After the drop: keep each socket this process could not bind again
    (``keep_all``: every one, e.g. under Landlock, which denies any bind)."""
    from_activation = bool(os.environ.get('LISTEN_PID'))
    for adapter in adapters:
        hs = adapter.httpserver
        if keep_all or from_activation or not can_bind_again(adapter.bind_addr):
            KEEPER.keep(hs._dropprivs_key, hs.socket, from_activation)


class _PortendWithKeptSockets:
    """portend as CherryPy's ServerAdapter uses it, except that a port whose
    listening socket we keep counts as free: it is ours to adopt, and waiting
    for it to close would wait forever."""

    def __getattr__(self, name):
        return getattr(portend, name)

    def free(self, host, port, timeout=float('inf')):
        if port in KEEPER.ports():
            return None
        return portend.free(host, port, timeout=timeout)


def patch_port_checks() -> None:
    if not patches.replaced(cp_servers, 'portend'):
        patches.replace(cp_servers, 'portend', _PortendWithKeptSockets())


def execv_handoff_installed(bus) -> bool:
    """Whether the bus's re-exec carries kept descriptors (see install_execv_handoff)."""
    return patches.replaced(bus, '_set_cloexec')


def install_execv_handoff(bus) -> None:
    """Carry the kept sockets through the bus's re-exec (restart, autoreload, SIGHUP)."""
    if patches.replaced(bus, '_do_execv'):
        return
    do_execv, set_cloexec = bus._do_execv, bus._set_cloexec

    def fail(why: str):
        exit_now(bus.log, reexec_failure(why), EXIT_DROP_FAILED, 'instead of restarting')

    def _do_execv():
        if os.geteuid() != 0:  # after the drop: exec only what the new process can run
            blockers = reexec_blockers(sys.executable, sys.argv[0] if sys.argv else '', startup_cwd())
            if blockers:
                fail('; '.join(blockers))
        KEEPER.prepare_exec(daemonized=any(d.finalized for d in daemonizers(bus)))
        if KEEPER.user_site_off and not sys.flags.no_user_site:
            get_true_argv = bus._get_true_argv
            patches.replace(bus, '_get_true_argv', lambda: without_user_site(get_true_argv()))
        try:
            return do_execv()
        except OSError as e:  # e.g. EACCES: the dropped user cannot reach the interpreter
            fail(f'execv({sys.executable}): {e}')

    def _set_cloexec():
        set_cloexec_open_fds(bus.max_cloexec_files, set_cloexec)
        KEEPER.mark_inheritable()

    patches.replace(bus, '_do_execv', _do_execv)
    patches.replace(bus, '_set_cloexec', _set_cloexec)


def set_cloexec_open_fds(limit: int, fallback) -> None:
    """CherryPy's _set_cloexec (close-on-exec on every fd from 3 below ``limit``),
    for the open ones only: CherryPy tries every number up to the fd limit (with
    20000, 15 ms of every restart). ``fallback()`` (CherryPy's own) without /proc."""
    try:
        fds = [int(fd) for fd in os.listdir('/proc/self/fd')]
    except (OSError, ValueError):
        return fallback()
    for fd in fds:
        if 3 <= fd < limit:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, closed since
                pass
    return None


def without_user_site(argv: List[str]) -> List[str]:
    """``argv`` (the interpreter first) with ``-s``: after the drop HOME is the
    target's, and the new image would put the target's user site-packages on
    sys.path and run its .pth files, in the process that holds the port. A
    flag, not PYTHONNOUSERSITE: ``-E`` would ignore the variable, and children
    would inherit it."""
    return [argv[0], '-s', *argv[1:]]


def server_infos(adapters) -> List[ServerInfo]:
    """Plain facts about each server for the restart checks above (no CherryPy objects)."""
    out = []
    for adapter in adapters:
        addr = adapter.bind_addr
        has = addr is not None and addr_key(addr) in KEEPER
        out.append(ServerInfo(describe(adapter), addr, has, tls_files(adapter)))
    return out


def daemonizers(bus) -> List[Daemonizer]:
    return listener_owners(bus, 'start', Daemonizer)


def autoreload_on(bus) -> bool:
    reloader = getattr(bus, 'autoreload', None)
    return reloader is not None and any(
        getattr(listener, '__self__', None) is reloader for listener in bus.listeners.get('start', ()))


def startup_cwd() -> str:
    """The directory the bus chdirs to before it re-executes."""
    return getattr(wspbus, '_startup_cwd', None) or os.getcwd()


def restart_warnings(bus, adapters) -> List[str]:
    """What a later restart would trip over, checked as the user just dropped to."""
    out = []
    infos = server_infos(adapters)
    for msg in unreadable_tls(infos):
        out.append(f'{msg}. Serving now works (read as root before the drop), but a later '
                   f'restart (engine.restart(), autoreload, SIGHUP) re-reads it as this user '
                   f'and would fail')
    blockers = reexec_blockers(sys.executable, sys.argv[0] if sys.argv else '',
                                              startup_cwd())
    if blockers:
        out.append(reexec_warning(blockers, autoreload_on(bus)))
    if daemonizers(bus) and ptrace_scope() < 1:
        out.append(f'{whoami()}\'s own processes may ptrace each other here (kernel.yama.ptrace_scope '
                   f'{"is 0" if ptrace_scope() == 0 else "absent: no Yama"}), and any process of that '
                   f'user can make this daemon restart (SIGHUP): for the tenth of a second between the '
                   f'exec and the re-executed image\'s import of this package, it could take the '
                   f'listening sockets. Set kernel.yama.ptrace_scope to 1 or more')
    return out
