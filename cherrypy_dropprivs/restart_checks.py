"""Checks that make a restart after the drop fail clearly, or warn ahead of time.

A restart (engine.restart(), the autoreloader, SIGHUP when daemonized)
re-executes the interpreter as the dropped user, which then re-reads the main
script and the TLS certificate and key, and must adopt the kept listening
sockets because it can no longer bind a privileged port. Each of these fails
deep inside CherryPy or cheroot with a traceback. These checks name the file
or the port and what to do instead.

All checks use the calling process's own ids (os.access uses the real ids),
so they are faithful only after the drop or in a process that is not root:
that is where the plugin calls them. No cherrypy import: servers arrive as
plain data from server_hooks.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from .identity import format_ids, group_name

#: CAP_NET_BIND_SERVICE, capability number 10.
CAP_NET_BIND_SERVICE = 10


@dataclass(frozen=True)
class ServerInfo:
    """What the checks need to know about one server."""

    description: str
    bind_addr: Union[tuple, str, bytes, None]
    #: A kept (inherited or earlier) listening socket will be adopted.
    has_socket: bool
    #: (role, path) of each TLS file the server reads when it starts.
    tls_files: Tuple[Tuple[str, str], ...] = ()


def whoami() -> str:
    return format_ids(os.geteuid(), os.getegid(), os.getgroups())


# -- TLS files ----------------------------------------------------------------


def tls_files(adapter) -> Tuple[Tuple[str, str], ...]:
    """The certificate, key and chain an adapter's server reads at start.

    ``cherrypy.server``-style servers carry ``ssl_*`` options and read them in
    Server.start; a ServerAdapter around a ready-made cheroot server carries
    them on its ssl_adapter.
    """
    found = []
    if getattr(adapter, 'ssl_certificate', None) or getattr(adapter, 'ssl_private_key', None):
        for role, attr in (('certificate', 'ssl_certificate'), ('private key', 'ssl_private_key'),
                           ('certificate chain', 'ssl_certificate_chain')):
            path = getattr(adapter, attr, None)
            if path:
                found.append((role, str(path)))
        return tuple(found)
    ssl_adapter = getattr(getattr(adapter, 'httpserver', None), 'ssl_adapter', None)
    if ssl_adapter is not None:
        for role, attr in (('certificate', 'certificate'), ('private key', 'private_key'),
                           ('certificate chain', 'certificate_chain')):
            path = getattr(ssl_adapter, attr, None)
            if path:
                found.append((role, str(path)))
    return tuple(found)


def tls_read_fix(path: str) -> str:
    gid = os.getegid()
    group = group_name(gid) or str(gid)
    return (
        f"give the user's group read access, e.g. `chgrp {group} {path} && chmod g+r {path}` "
        f'(every directory above it must be searchable too), or point the server at a copy '
        f'the user can read'
    )


def unreadable_tls(servers: Sequence[ServerInfo]) -> List[str]:
    """One message per TLS file this process cannot read (or that is missing)."""
    out = []
    for server in servers:
        for role, path in server.tls_files:
            if not os.access(path, os.R_OK):
                why = 'does not exist' if not os.path.exists(path) else 'is not readable'
                out.append(f'TLS {role} {path} of server {server.description} {why} by '
                           f'{whoami()}; {tls_read_fix(path)}')
    return out


# -- the interpreter and script a re-exec needs ------------------------------


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


# -- listening sockets ----------------------------------------------------------


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
