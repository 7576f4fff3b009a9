"""``confine``: the rules a dropped site needs, and applying them on the bus.

Imported only when ``confine`` is on (plugin.py and the check command import
it lazily), so a site without it pays nothing. The rules (see :func:`gather`)
come from the interpreter (its prefix, every ``sys.path`` entry), the
application's directory, CherryPy's config (static files, TLS files, session
storage, error pages), the log files, the ``chown`` paths, the user's
``confine_read``/``confine_write``/``confine_connect``, and a short list of
system files the standard library reads. landlock.py talks to the kernel.

When: the ruleset is built at the arm (priority 10), so a missing path stops
the start before anything binds (exit 78). Each server thread confines itself
before it creates its workers (gate.run_thread_actions, with no_new_privs
first), so every worker inherits the domain; the main thread confines itself
right after the verified drop; older CherryPy background tasks do it on their
next run (drop.apply_to_existing_threads). Then every thread of
/proc/self/task must have probed itself confined (workers through their own
queue, run_in_workers) before the gate opens.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import landlock
from .landlock import PathRule, Rules

#: Values of the ``confine`` option.
CONFINE_VALUES = (False, True, 'require')

#: Read: what the standard library and CherryPy read at run time (skipped when missing).
SYSTEM_READ = (
    ('/etc/passwd', 'name service'), ('/etc/group', 'name service'),
    ('/etc/nsswitch.conf', 'name service'), ('/etc/hosts', 'name service'),
    ('/etc/resolv.conf', 'DNS'), ('/etc/host.conf', 'DNS'), ('/etc/gai.conf', 'DNS'),
    ('/etc/services', 'socket.getservbyname'), ('/etc/protocols', 'socket.getprotobyname'),
    ('/etc/localtime', 'time zone'), ('/etc/timezone', 'time zone'),
    ('/usr/share/zoneinfo', 'time zones'), ('/etc/ld.so.cache', 'the dynamic loader'),
    ('/etc/ssl/openssl.cnf', 'OpenSSL'), ('/etc/ssl/certs', 'CA certificates'),
    ('/usr/share/ca-certificates', 'CA certificates'),
    ('/etc/mime.types', 'mimetypes (static files)'),
    ('/dev/urandom', 'random numbers'), ('/dev/random', 'random numbers'),
    ('/proc', 'per-thread status and the checks; /proc/self cannot be granted alone '
              '(its directories are recreated, and Landlock rules bind to inodes)'),
)
#: Read and execute: the dynamic loader and shared libraries (the re-exec of a restart).
SYSTEM_EXEC = (('/usr/lib', 'shared libraries'), ('/usr/lib64', 'shared libraries'),
               ('/lib', 'shared libraries'), ('/lib64', 'the dynamic loader'),
               ('/usr/local/lib', 'shared libraries'))
SYSTEM_WRITE = (('/dev/null', 'os.devnull'),)


# -- option checks (called as the options are set) -------------------------------


def check_confine(name: str, value: object) -> Any:
    if value not in CONFINE_VALUES or isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"confine must be False, True or 'require'; got {value!r}")
    return value


def check_paths(name: str, value: object, must_exist: bool = True) -> List[str]:
    """A list of existing paths, none of them ``/``; returned absolute."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f'{name} must be a list of paths (e.g. [\'/srv/mysite/templates\']); '
                        f'got {value!r}')
    out = []
    for p in value:
        if not isinstance(p, str) or not p:
            raise TypeError(f'{name} entries must be non-empty path strings; got {p!r}')
        path = os.path.abspath(p)
        if os.path.realpath(path) == '/':
            raise ValueError(f'{name}: {p!r} is the root directory: that would grant the whole '
                             f'filesystem; name the directories the site needs')
        if must_exist and not os.path.exists(path):
            raise ValueError(f'{name}: {path} does not exist; a Landlock rule needs an '
                             f'existing file or directory (create it first)')
        out.append(path)
    return out


def check_ports(name: str, value: object) -> List[int]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f'{name} must be a list of TCP ports (e.g. [5432]); got {value!r}')
    for port in value:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f'{name}: {port!r} is not a TCP port (an int in 1..65535)')
    return sorted(set(value))


# -- the rules -------------------------------------------------------------------


def planted_link(path: str) -> Optional[str]:
    """The first symbolic link on the way to ``path`` that someone other than
    root could have made or re-pointed ('link -> target'), or None.

    A link is trusted when it and the directory holding it are root's, and
    that directory is not writable by others (or is sticky, as /tmp). Links
    are followed as the kernel would, each checked in turn.
    """
    todo = [p for p in path.split('/') if p]
    here = '/'
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == '.':
            continue
        if part == '..':
            here = os.path.dirname(here)
            continue
        nxt = os.path.join(here, part)
        try:
            st = os.lstat(nxt)
        except OSError:
            return None  # missing: said elsewhere
        if not stat.S_ISLNK(st.st_mode):
            here = nxt
            continue
        hops += 1
        target = os.readlink(nxt)
        d = os.stat(here)
        open_dir = d.st_mode & 0o022 and not d.st_mode & stat.S_ISVTX
        if st.st_uid != 0 or d.st_uid != 0 or open_dir or hops > 40:
            return f'{nxt} -> {target}'
        if target.startswith('/'):
            here = '/'
        todo[:0] = [p for p in target.split('/') if p]
    return None


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def interpreter_paths(application: bool = True) -> List[Tuple[str, str]]:
    """(path, why): the interpreter, its prefixes, sys.path, the application's directory."""
    found = [(os.path.dirname(_real(sys.executable)), 'the interpreter'),
             (sys.executable, 'the interpreter (as run)')]
    for attr in ('prefix', 'base_prefix', 'exec_prefix', 'base_exec_prefix'):
        found.append((getattr(sys, attr), f'sys.{attr}'))
    for entry in sys.path:
        found.append((entry or os.getcwd(), 'sys.path'))
    main = sys.modules.get('__main__')
    scripts = (getattr(main, '__file__', None), sys.argv[0] if sys.argv else None)
    for script in scripts if application else ():
        if script and not script.startswith('-') and os.path.isfile(script):
            found.append((os.path.dirname(_real(script)), 'the application'))
    return found


def _resolve(section: Dict[str, Any], key: str, root_key: str) -> Optional[str]:
    value = section.get(key)
    if not isinstance(value, str) or not value:
        return None
    root = section.get(root_key)
    if not os.path.isabs(value) and isinstance(root, str) and root:
        value = os.path.join(root, value)
    return os.path.abspath(value)


def config_paths(sections: Iterable[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """(path, kind, why) for what CherryPy's config names: static files, error pages."""
    out = []
    for section in sections:
        d = _resolve(section, 'tools.staticdir.dir', 'tools.staticdir.root')
        if d:
            out.append((d, 'read', 'tools.staticdir.dir'))
        f = _resolve(section, 'tools.staticfile.filename', 'tools.staticfile.root')
        if f:
            out.append((f, 'read', 'tools.staticfile.filename'))
        for key, value in section.items():
            if key.startswith('error_page.') and isinstance(value, str) and value:
                out.append((os.path.abspath(value), 'read', key))
    return out


def scope_for(env: Dict[str, str]) -> Tuple[int, List[str]]:
    """The LANDLOCK_SCOPE_* bits (ABI 6), and notes on what was left out and why.

    Signals: a confined site may signal only its own process and what it
    started, not other processes of its user. Abstract UNIX sockets: it may
    connect only to those it created, unless NOTIFY_SOCKET is one (``@...``):
    sd_notify must still reach the service manager.
    """
    scoped = landlock.SCOPE_SIGNAL
    notes = []
    notify = env.get('NOTIFY_SOCKET', '')
    if notify.startswith('@'):
        notes.append(f'abstract UNIX sockets not scoped: NOTIFY_SOCKET={notify} is one, and '
                     f'sd_notify must reach it')
    else:
        scoped |= landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    return scoped, notes


def gather(*, sections: Iterable[Dict[str, Any]] = (), log_files: Sequence[str] = (),
           session_paths: Sequence[str] = (), tls_files: Sequence[str] = (),
           chown: Sequence[str] = (), read: Sequence[str] = (), write: Sequence[str] = (),
           connect: Sequence[int] = (), env: Optional[Dict[str, str]] = None,
           application: bool = True, config_files: Sequence[str] = (),
           created_at_start: Sequence[str] = ()) -> Tuple[Rules, List[str]]:
    """The rules, and one problem per named path that does not exist.

    System and interpreter paths that do not exist are left out quietly; a
    path the configuration or the user names must exist (a Landlock rule is
    an open file). ``/`` is never granted: it would grant everything, and the
    probe relies on it being denied. ``config_files`` (read: a restart's
    re-exec reads them again) are left out quietly when missing.
    ``created_at_start``: log files the check expects root to create before
    the rules are built (the start does), ruled as if they existed.
    """
    env = dict(os.environ) if env is None else env
    kinds: Dict[str, List[str]] = {}
    whys: Dict[str, List[str]] = {}
    order: List[str] = []
    problems: List[str] = []
    notes: List[str] = []
    created = {os.path.abspath(p) for p in created_at_start if not os.path.exists(p)}

    def add(path: str, kind: str, why: str, required: bool) -> None:
        path = os.path.abspath(path)
        if not os.path.exists(path) and path not in created:
            if required:
                problems.append(f'{path} ({why}) does not exist; a Landlock rule needs an '
                                f'existing file or directory: create it, or fix the setting')
            return
        link = planted_link(path) if required else None
        if link:
            problems.append(f'{path} ({why}) is reached through the symbolic link {link}, which '
                            f'a user other than root can change: the next start would grant '
                            f'wherever it points. Name the real path, in directories only root '
                            f'can write')
            return
        real = os.path.realpath(path)
        if real == '/':
            notes.append(f'{path} ({why}) is the root directory: not granted (it would grant '
                         f'everything); a module imported from there later fails')
            return
        if real not in kinds:
            order.append(real)
            kinds[real], whys[real] = [], []
        for word in kind.split('+'):
            if word not in kinds[real]:
                kinds[real].append(word)
        if why not in whys[real]:
            whys[real].append(why)

    for path, why in interpreter_paths(application):
        add(path, 'read+exec', why, False)
    for path, why in SYSTEM_EXEC:
        add(path, 'read+exec', why, False)
    for path, why in SYSTEM_READ:
        add(path, 'read', why, False)
    import mimetypes
    for known in mimetypes.knownfiles:
        add(str(known), 'read', 'mimetypes (static files)', False)
    for path, why in SYSTEM_WRITE:
        add(path, 'read+write', why, False)
    for path, kind, why in config_paths(sections):
        add(path, kind, why, True)
    for path in tls_files:
        add(path, 'read', 'TLS file (read again by a restart)', True)
    for path in config_files:
        add(path, 'read', 'config file (read again by a restart)', False)
    for path in log_files:
        fresh = os.path.abspath(path) in created
        add(path, 'read+write', 'log file (created by root at start)' if fresh else 'log file', True)
    for path in session_paths:
        add(path, 'read+write', 'tools.sessions.storage_path', True)
    for path in chown:
        add(path, 'read+write', 'chown', True)
    for path in read:
        add(path, 'read+exec', 'confine_read', True)
    for path in write:
        add(path, 'read+write', 'confine_write', True)
    ordered = ('read', 'exec', 'write')
    rules = tuple(PathRule(p, '+'.join(w for w in ordered if w in kinds[p]), ', '.join(whys[p]))
                  for p in order)
    scoped, scope_notes = scope_for(env)
    tmp = os.environ.get('TMPDIR') or '/tmp'
    if not any(r.path == _real(tmp) and 'write' in r.kind for r in rules):
        notes.append(f'the temporary directory {tmp} is not writable: CherryPy spools request '
                     f'bodies over 1000 bytes (file uploads) there; to accept them, add a private '
                     f'directory to confine_write and set TMPDIR to it')
    return Rules(rules, tuple(sorted(set(connect))), scoped, tuple(notes + scope_notes)), problems


def describe(rules: Rules, abi: int) -> List[str]:
    """The rules as lines, for the log (one line) and the check command."""
    lines = [f'{r.kind:<10} {r.path}  ({r.why})' for r in rules.paths]
    if abi == 0 or abi >= 4:
        ports = ', '.join(map(str, rules.connect_ports)) or 'none'
        lines.append(f'network: bind denied (no new listening port); connect only to TCP ports: {ports}')
    else:
        lines.append(f'network: NOT enforced (Landlock ABI {abi} < 4: no TCP rules on this kernel)')
    if abi == 0 or abi >= 6:
        scopes = [name for bit, name in ((landlock.SCOPE_SIGNAL, 'signals to other processes'),
                                         (landlock.SCOPE_ABSTRACT_UNIX_SOCKET,
                                          'abstract UNIX sockets of other processes'))
                  if rules.scoped & bit]
        lines.append(f'scoped (denied): {", ".join(scopes) or "nothing"}')
    lines.append('everything else on the filesystem: denied (read, write, execute, create, '
                 'remove, rename, truncate, device ioctl)')
    lines += [f'note: {n}' for n in rules.notes]
    return lines


def not_enforced(abi: int, why: str) -> Optional[str]:
    """What this kernel cannot enforce; None when everything is."""
    if abi == 0:
        return (f'{why}: nothing is confined (filesystem, network and scoping NOT enforced); '
                f'the site runs with all its user\'s access')
    if abi < 4:
        return (f'Landlock ABI {abi}: the filesystem rules are enforced, the network rules are NOT '
                f'(bind and connect need ABI 4, Linux 6.7)')
    return None


# -- on the bus (called from plugin.py) --------------------------------------------


def applied_config_files(registered: Iterable[object], argv: Sequence[str]) -> List[str]:
    """The config files this process read by name: a restart's re-exec reads them again.

    CherryPy records every file name given to ``cherrypy.config.update``,
    ``tree.mount(config=...)`` and ``Application.merge`` (so cherryd's ``-c``
    and quickstart's ``config``) in ``engine.autoreload.files``, whether the
    Autoreloader runs or not: ``registered``. The ``-c``/``--config`` values
    of ``argv`` cover a script that reads its file itself. Relative names are
    taken from the working directory, which the re-exec returns to. Existing
    regular files only.
    """
    names = [os.fsdecode(n) for n in registered if isinstance(n, (str, bytes))]
    for i, arg in enumerate(argv[1:], 1):
        if arg in ('-c', '--config') and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif arg.startswith('--config='):
            names.append(arg[len('--config='):])
    return [os.path.abspath(n) for n in dict.fromkeys(names) if n and os.path.isfile(n)]


def running_rules(plugin) -> Tuple[Rules, List[str]]:
    """The rules from the running configuration (cherrypy.config, mounted apps, servers,
    the config files read by name)."""
    import cherrypy

    from . import handoff, preflight

    sections: List[Dict[str, Any]] = [cherrypy.config]
    for app in cherrypy.tree.apps.values():
        conf = getattr(app, 'config', None)
        if isinstance(conf, dict):
            sections.extend(v for v in conf.values() if isinstance(v, dict))
    tls = [path for adapter in handoff.server_adapters(plugin.bus)
           for _role, path in handoff.tls_files(adapter)]
    env = dict(os.environ)
    systemd = getattr(plugin, '_systemd', None)
    if systemd is not None:  # the notifier took NOTIFY_SOCKET out of the environment
        env['NOTIFY_SOCKET'] = systemd.notifier.address
    registered = getattr(getattr(cherrypy.engine, 'autoreload', None), 'files', ())
    return gather(sections=sections, log_files=preflight.log_files(),
                  config_files=applied_config_files(registered, sys.argv),
                  session_paths=preflight.session_paths(), tls_files=tls, chown=plugin.chown,
                  read=plugin.confine_read, write=plugin.confine_write,
                  connect=plugin.confine_connect, env=env)


def arm(plugin, fail: Callable[[str, int], Any]) -> Optional[landlock.Confinement]:
    """At the arm listener: the ruleset, or None (no Landlock, and confine is not 'require')."""
    from .errors import EXIT_BAD_CONFIG, EXIT_DROP_FAILED

    abi, why = landlock.abi_version()
    missing = not_enforced(abi, why)
    if missing and plugin.confine == 'require':
        fail(f"confine='require': {missing}", EXIT_DROP_FAILED)
    if missing:
        plugin._log(f'WARNING: confine: {missing}', level=30)
    if abi == 0:
        return None
    rules, problems = running_rules(plugin)
    if problems:
        fail(f'confine: {"; ".join(problems)}', EXIT_BAD_CONFIG)
    try:
        confinement = landlock.Confinement(rules, abi)
    except OSError as e:
        fail(f'confine: building the Landlock ruleset: {e}', EXIT_DROP_FAILED)
    from . import drop, handoff

    trusted = not drop.holds_root() and handoff.KEEPER.adopted_from_exec
    if confinement.adopt_inherited(trusted):
        plugin._log('confine: already confined (the Landlock domain is inherited across the '
                    're-exec; no layer is added, and the rules of the first start stay in force)')
    return confinement


def thread_actions(confinement: landlock.Confinement) -> List[Callable[[], None]]:
    """The per-thread action for the server threads of this start (after no_new_privs)."""
    confinement.forget_probes()
    return [confinement.confine_thread]


def after_verified_drop(plugin, confinement: landlock.Confinement, adapters) -> None:
    """Confine the main thread, then require every thread's own probe; raises
    PrivilegeDropError (the plugin fails closed) naming each thread left out."""
    from . import drop, handoff
    from .errors import PrivilegeDropError, VerificationError
    from .kernel import thread_creds

    try:
        confinement.confine_process()
        handoff.KEEPER.exec_env.update(confinement.exec_environment())
    except OSError as e:
        raise PrivilegeDropError('landlock_restrict_self', 'the main thread could not be confined', e) from e
    run_in_workers(adapters, confinement.record_probe)

    def need(creds) -> Optional[str]:
        return None if not confinement.unconfined([creds.tid]) else 'not confined (no Landlock probe from it)'

    drop.apply_to_existing_threads([confinement.confine_thread], clear_caps=False,
                                   no_new_privs=False, need=need)
    threads = thread_creds('self')
    left = confinement.unconfined([t.tid for t in threads])
    if left:
        names = {t.tid: t.name for t in threads}
        raise VerificationError('landlock', 'threads not confined (their own probe did not '
                                f'answer EACCES): {", ".join(f"{t} ({names[t]})" for t in left)}')
    rules = confinement.rules
    how = 'inherited across the re-exec' if confinement.inherited else f'Landlock ABI {confinement.abi}'
    plugin._log(f'confined ({how}): {len(rules.paths)} path rules, connect to '
                f'{list(rules.connect_ports) or "no port"}, no bind; verified by a probe in each '
                f'of {len(threads)} threads')


class _WorkerJob:
    """Taken from a cheroot pool's queue like a connection: ``communicate()``
    runs ``fn`` in the worker, then waits for the other jobs of its pool, so
    that each job lands in a different worker."""

    class _NoStream:
        bytes_read = bytes_written = 0  # what a worker adds up when statistics are on

    requests_seen = 0
    remote_addr = remote_port = None
    rfile = wfile = _NoStream()

    def __init__(self, fn: Callable[[], None], barrier: threading.Barrier, timeout: float) -> None:
        self.fn, self.barrier, self.timeout = fn, barrier, timeout
        self.done = threading.Event()

    def communicate(self) -> bool:
        try:
            self.fn()
        finally:
            self.done.set()
            try:
                self.barrier.wait(self.timeout)
            except threading.BrokenBarrierError:
                pass
        return False  # "close the connection": there is none

    def close(self) -> None:
        return None


def run_in_workers(adapters, fn: Callable[[], None], timeout: float = 2.0) -> int:
    """Run ``fn`` once in every worker thread of each held server, before the
    gate opens (all workers idle then); how many ran within ``timeout``."""
    jobs: List[_WorkerJob] = []
    for adapter in adapters:
        pool = getattr(getattr(adapter, 'httpserver', None), 'requests', None)
        workers = len(getattr(pool, '_threads', None) or ())
        queue = getattr(pool, '_queue', None)
        if not workers or queue is None:
            continue
        barrier = threading.Barrier(workers)
        for _ in range(workers):
            job = _WorkerJob(fn, barrier, timeout)
            queue.put(job)
            jobs.append(job)
    deadline = time.monotonic() + timeout
    for job in jobs:
        job.done.wait(max(0.0, deadline - time.monotonic()))
    return sum(job.done.is_set() for job in jobs)
