"""The CherryPy plugin: thin wiring of the drop into the bus lifecycle.

Two ``start`` listeners: ``arm`` (priority 10, before the Daemonizer, PIDFile
and the servers) validates the plan and makes every server wait at the gate;
``start`` (priority 77 by default, after the servers have bound at 75)
drops, verifies, and opens the gate. Any failure logs and ends the process
at once: CherryPy's bus would otherwise go on calling later start listeners,
as root. Importing the package creates ``cherrypy.engine.dropprivs``
(unsubscribed), so a config file can switch it on (``engine.dropprivs.on``),
also under ``cherryd``; a bad ``engine.dropprivs.*`` setting left uncaught
ends the process with EXIT_BAD_CONFIG and one line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple, Union

import cherrypy
from cherrypy.process.plugins import SimplePlugin

from . import gate, handoff, kernel, nameservice, patches, preflight
from .drop import (
    ALREADY_TARGET,
    DROPPED,
    NOT_ROOT,
    DropRecord,
    Snapshot,
    carry_out,
    classify,
    holds_root,
    thread_actions,
    verify,
)
from .errors import EXIT_BAD_CONFIG, EXIT_DROP_FAILED, OPTION_NAMES, ConfigError, PrivilegeDropError, exit_now
from .gate import Gate
from .handoff import HANDOFF_ENV, KEEPER
from .identity import (
    IdSpec,
    Plan,
    answers_for_exec,
    check_chown,
    check_groups_form,
    check_groups_type,
    check_id_form,
    make_plan,
    parse_umask,
    resolve_gid,
    resolve_uid,
)

#: The arm listener runs before the Daemonizer (65), PIDFile and Autoreloader
#: (70) and the servers (75), so that a bad plan stops the process before
#: anything is written or bound.
ARM_PRIORITY = 10

#: systemd's Type=notify socket, and our own re-exec's private copy of it
#: (notify.ENV): only when one is set is the notify code imported at all.
NOTIFY_VARIABLES = ('NOTIFY_SOCKET', 'CHERRYPY_DROPPRIVS_NOTIFY')


def _systemd_readiness():
    """The process's systemd notifier (readiness.Readiness), or None when
    systemd did not ask for one: then nothing is imported or sent."""
    if 'cherrypy_dropprivs.readiness' not in sys.modules and not any(
            name in os.environ for name in NOTIFY_VARIABLES):
        return None
    from . import readiness
    return readiness.current()


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be True or False; got {value!r}')
    return value


def _check_uid(name: str, value: Optional[IdSpec]) -> Optional[IdSpec]:
    if value is not None:
        resolve_uid(value)  # kept as given; resolved again at start
    return value


def _check_gid(name: str, value: Optional[IdSpec]) -> Optional[IdSpec]:
    if value is not None:
        resolve_gid(value)
    return value


def _check_groups(name: str, value: Optional[Sequence[IdSpec]]) -> Optional[List[IdSpec]]:
    check_groups_form(value)
    return None if value is None else list(value)


def _id_form(name: str, value: Optional[IdSpec]) -> Optional[IdSpec]:
    if value is not None:
        check_id_form(name, value)
    return value


def _groups_form(name: str, value: Optional[Sequence[IdSpec]]) -> Optional[List[IdSpec]]:
    check_groups_type(value)
    return None if value is None else list(value)


def _check_umask(name: str, value: Union[int, str, None]) -> Optional[int]:
    return parse_umask(value)


def _check_chown(name: str, value: Optional[Sequence[str]]) -> List[str]:
    return check_chown(value)


def _check_confine(name: str, value: object) -> object:
    if value is False:
        return False  # the default: confine.py (and Landlock) are never imported
    from .confine import check_confine
    return check_confine(name, value)


def _check_confine_paths(name: str, value: object) -> List[str]:
    if value is None or (isinstance(value, list) and not value):
        return []
    from .confine import check_paths
    return check_paths(name, value)


def _check_confine_ports(name: str, value: object) -> List[int]:
    if value is None or (isinstance(value, list) and not value):
        return []
    from .confine import check_ports
    return check_ports(name, value)


def _check_priority(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not ARM_PRIORITY < value <= 100:
        raise ValueError(
            f'priority must be an int in {ARM_PRIORITY + 1}..100, after the servers '
            f'start (75); got {value!r}'
        )
    return value


class Option:
    """One option of DropPrivileges: checked as it is set (in the constructor,
    as an attribute, or from a config file as ``engine.dropprivs.<name>``),
    so bad input fails before anything binds. ``check(name, value)`` returns
    what to store or raises ValueError/TypeError; ``after(plugin)`` reacts.
    ``form``, if given, is the check without name-service lookups, used in the
    constructor, whose plan then looks every name up in one go."""

    def __init__(self, check: Callable[[str, Any], Any],
                 after: Optional[Callable[[Any], None]] = None,
                 form: Optional[Callable[[str, Any], Any]] = None) -> None:
        self.check, self.after, self.form = check, after, form

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, '_' + name

    def __get__(self, plugin: Any, owner: Optional[type] = None) -> Any:
        return self if plugin is None else getattr(plugin, self.slot)

    def __set__(self, plugin: Any, value: Any) -> None:
        check = self.form if self.form and plugin.__dict__.get('_constructing') else self.check
        setattr(plugin, self.slot, check(self.name, value))
        if self.after is not None:
            self.after(plugin)


class DropPrivileges(SimplePlugin):
    """Drop root after the servers have bound; verified and fail-closed.

    Keyword-compatible with ``cherrypy.process.plugins.DropPrivileges``:
    ``uid``, ``gid`` and ``umask`` mean what they mean there.
    """

    def __init__(
        self,
        bus,
        uid: Optional[IdSpec] = 'nobody',
        gid: Optional[IdSpec] = None,
        *,
        groups: Optional[Sequence[IdSpec]] = None,
        umask: Union[int, str, None] = 0o077,
        require_root: bool = False,
        no_new_privs: bool = False,
        priority: int = 77,
        chown_logs: bool = True,
        chown: Optional[Sequence[str]] = None,
        confine: Union[bool, str] = False,
        confine_read: Optional[Sequence[str]] = None,
        confine_write: Optional[Sequence[str]] = None,
        confine_connect: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__(bus)
        self._constructing = True  # options are looked up together, by self.plan() below
        self._subscribed = False
        #: Whether this start holds the servers (decided at arm; see _must_hold).
        self._holding = True
        self.gate = Gate()
        #: The first drop's record; a second start only re-verifies.
        self.record: Optional[DropRecord] = None
        #: The plan and its outcome, decided once per start by the arm listener.
        self._plan: Optional[Plan] = None
        self._outcome = NOT_ROOT
        #: Tells systemd (Type=notify) how the start goes; None without NOTIFY_SOCKET.
        self._systemd: Any = None
        #: The Landlock ruleset and its per-thread state (confine.py), from the first arm.
        self._confinement: Any = None
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.umask = umask
        self.require_root = require_root
        self.no_new_privs = no_new_privs
        self.priority = priority
        self.chown_logs = chown_logs
        self.chown = chown
        self.confine = confine
        self.confine_read = confine_read
        self.confine_write = confine_write
        self.confine_connect = confine_connect
        # What the image before our own re-exec looked up, never at a root start.
        nameservice.take_handed_over(not holds_root() and HANDOFF_ENV in os.environ)
        self.plan()  # every name looked up, and the combination checked, before anything binds
        self._constructing = False

    # -- options: each value is checked as it is set (also from config) ---

    #: Public names that may be set: the options, and what SimplePlugin and
    #: this class set themselves. Anything else is a misspelt option.
    _settable = frozenset(OPTION_NAMES + ('bus', 'gate', 'record'))

    def __setattr__(self, name: str, value: object) -> None:
        # engine.dropprivs.<key> in a config file is a setattr on this object.
        if name.startswith('_'):
            return super().__setattr__(name, value)
        if name not in self._settable:
            raise ConfigError(name)
        try:
            super().__setattr__(name, value)
        except (ValueError, TypeError) as e:
            e.dropprivs_option = name  # type: ignore[union-attr]  # exit 78 if uncaught
            raise

    uid = Option(_check_uid, form=_id_form)
    gid = Option(_check_gid, form=_id_form)
    groups = Option(_check_groups, form=_groups_form)
    umask = Option(_check_umask)
    require_root = Option(_flag)
    no_new_privs = Option(_flag)
    #: Hand CherryPy's log files to the target before the drop (see preflight.py).
    chown_logs = Option(_flag)
    #: Paths that must belong to the target (e.g. a session directory).
    chown = Option(_check_chown)
    priority = Option(_check_priority, after=lambda plugin: plugin._listen_at_priority())
    #: Landlock after the drop: False, True, or 'require' (see confine.py).
    confine = Option(_check_confine)
    confine_read = Option(_check_confine_paths)
    confine_write = Option(_check_confine_paths)
    confine_connect = Option(_check_confine_ports)

    def _listen_at_priority(self) -> None:
        """The drop listener at the new priority (it matters once subscribed)."""
        if self._subscribed:
            self.bus.unsubscribe('start', self.start)
            self.bus.subscribe('start', self.start, priority=self.priority)

    def plan(self) -> Plan:
        """Resolve all options together (raises ValueError/TypeError); confine implies no_new_privs."""
        return make_plan(
            self.uid, self.gid, self.groups, self.umask, self.require_root,
            self.no_new_privs or self.confine is not False,
        )

    # -- bus wiring -----------------------------------------------------------

    def subscribe(self) -> None:
        self.bus.subscribe('start', self.arm, priority=ARM_PRIORITY)
        self.bus.subscribe('start', self.start, priority=self.priority)
        self._subscribed = True
        if self.record is None and self._must_hold():
            # Hold the servers already on the bus from now on, not only from the
            # arm: one whose start listener runs before it (priority < 10) would
            # otherwise serve, as root, until the arm fails closed.
            self.gate.close()
            gate.hold_servers_now(self.bus, self.gate)
            gate.hold_servers_subscribed_later(self.bus, self.gate)

    def unsubscribe(self) -> None:
        """Off the bus, and every CherryPy internal replaced since put back (patches)."""
        self.bus.unsubscribe('start', self.arm)
        self.bus.unsubscribe('start', self.start)
        self._subscribed = False
        if self._systemd is not None:
            self._systemd.unsubscribe()
        self.gate.open()  # no plugin, no drop: servers held for it must not wait forever
        patches.undo()

    def arm(self) -> None:
        """Before the servers: check the plan, close the gate, hook the servers."""
        try:
            self._arm()
        except Exception as e:  # the bus would go on and start the servers unheld, as root
            self._fail(f'holding the servers until the drop: {e!r}', EXIT_DROP_FAILED)

    def _arm(self) -> None:
        # Read before anything can fail, so that a failure reaches systemd
        # too, and while root: the socket is connected before the drop.
        self._systemd = _systemd_readiness()
        if self._systemd is not None:
            self._systemd.subscribe(self.bus)
        # Threads started from here on (servers, workers, plugins) inherit an
        # empty inheritable set; older ones are swept at the drop.
        kernel.clear_inheritable()
        self._plan, self._outcome = self._decide()
        self._holding = self._must_hold()
        if not self._holding:
            # Nothing to take away before serving: stay out of CherryPy's way
            # (no gate, no kept sockets, CherryPy's own readiness check).
            self.gate.open()
            self._fail_if_cannot_serve()
            return
        if self.confine is not False and self._confinement is None:
            from . import confine
            self._confinement = confine.arm(self, self._fail)
        preflight.secure_root_opens(self.bus)
        self._hold_servers()
        self._fail_if_cannot_serve()

    def _decide(self) -> Tuple[Plan, str]:
        """The plan and what carrying it out will do, once per start."""
        try:
            plan = self.plan()
        except (ValueError, TypeError) as e:
            self._fail(f'bad configuration: {e}', EXIT_BAD_CONFIG)
        if self.record is not None:  # a second start: already dropped (or never root)
            return plan, self.record.outcome
        self._adopt_handed_over_sockets()
        if KEEPER.daemonized:
            from . import reexec
            reexec.stay_daemonized(self.bus)
        if plan.require_root and not holds_root() and _proves_root_start():
            # Re-executed by our own restart: root was checked (and dropped)
            # before the exec, and a socket only root could bind proves it.
            plan = plan.replace(require_root=False)
        try:
            return plan, classify(plan)
        except PrivilegeDropError as e:
            self._fail(str(e), EXIT_DROP_FAILED)

    def _hold_servers(self) -> None:
        """Every server waits at the closed gate; its threads run the per-thread actions."""
        handoff.patch_port_checks()
        self.gate.close()
        self.gate.thread_actions = thread_actions(self._armed_plan(), self._outcome)
        if self._confinement is not None:
            from . import confine
            self.gate.thread_actions += confine.thread_actions(self._confinement)
        for adapter in handoff.server_adapters(self.bus):
            try:
                gate.arm(adapter, self.gate)
            except gate.UngateableServer as e:
                self._fail(str(e), EXIT_DROP_FAILED)

    def _adopt_handed_over_sockets(self) -> None:
        """Adopt what our own re-exec handed over, and nothing else."""
        expected = {handoff.adapter_key(a): a.bind_addr for a in handoff.server_adapters(self.bus)}
        refused = KEEPER.adopt_inherited(expected, holds_root())
        if refused:
            self._fail(f'refusing the listening sockets handed over in {HANDOFF_ENV}: '
                       f'{"; ".join(refused)}; only a listening socket on the address of a '
                       f'configured server is adopted', EXIT_DROP_FAILED)

    def _fail_if_cannot_serve(self) -> None:
        if not holds_root():  # e.g. re-executed after the drop: fail clearly, not in cheroot
            from . import reexec
            problem = reexec.cannot_serve(self.bus)
            if problem:
                self._fail(problem, EXIT_DROP_FAILED)

    def _must_hold(self) -> bool:
        """Whether the servers must wait at the gate until the drop is verified.

        Only when there is something to take away before serving: root, a
        capability in any thread, no_new_privs to set, or the sockets of a
        dropped process re-executed by a restart; or a socket from systemd
        socket activation, which CherryPy's re-exec would otherwise close.
        Otherwise (a process that is not root and holds nothing) the plugin
        stays out of CherryPy's way.
        """
        return bool(
            holds_root()
            or kernel.held_in_any_thread()
            or self.no_new_privs
            or self.confine is not False
            or KEEPER.adopted_from_exec
            or HANDOFF_ENV in os.environ
            or os.environ.get('LISTEN_PID') == str(os.getpid())  # fd 3 must outlive a restart
            or (self.record is not None and self.record.outcome == DROPPED)
        )

    def start(self) -> None:
        """After the servers have bound: drop, verify, then let them serve."""
        try:
            adapters = handoff.server_adapters(self.bus)
            self._check_servers_held(adapters)
            if self._systemd is not None:
                self._systemd.before_drop(KEEPER.daemonized or any(
                    d.finalized for d in handoff.daemonizers(self.bus)))
            if self.record is None:
                self.record = self._first_drop()
                self._warn_what_a_restart_would_trip_over(adapters)
            else:
                self._again(self.record)
            self._keep_sockets_for_restarts(adapters)
            if self._systemd is not None:  # READY=1 once the bus is STARTED
                self._systemd.started(self.record, adapters)
        except Exception as e:  # any failure at all: fail closed
            self._fail(f'{e}', EXIT_DROP_FAILED)
        self.gate.open()

    def _check_servers_held(self, adapters) -> None:
        if not self._holding:
            return
        unbound = list(gate.iter_unbound(adapters))
        if unbound:
            raise PrivilegeDropError(
                'servers',
                f'not bound when the drop ran (priority {self.priority}): '
                f'{"; ".join(unbound)}; every server must start before the drop',
            )

    def _warn_what_a_restart_would_trip_over(self, adapters) -> None:
        if self.record is not None and self.record.outcome == DROPPED:
            for warning in handoff.restart_warnings(self.bus, adapters):
                self._log(warning, logging.WARNING)

    def _keep_sockets_for_restarts(self, adapters) -> None:
        if self.record is not None and self.record.outcome == DROPPED:
            KEEPER.user_site_off = True  # HOME is the target's from now on
        if self._holding:
            # Confined, the process can bind no port at all: keep every socket.
            handoff.keep_sockets(adapters, keep_all=self._confinement is not None)
            handoff.install_execv_handoff(self.bus)
            KEEPER.exec_env[nameservice.HANDED_ENV] = answers_for_exec()


    # -- internals ------------------------------------------------------------

    def _armed_plan(self) -> Plan:
        if self._plan is None:  # the arm listener (priority 10) did not run
            raise PrivilegeDropError('plan', 'the start listener ran without the arm listener')
        return self._plan

    def _first_drop(self) -> DropRecord:
        plan, outcome = self._armed_plan(), self._outcome
        target = plan.target
        if outcome == DROPPED and target is not None:
            self._log(
                f'dropping privileges: from {Snapshot.take().describe()} to '
                f'{target.describe()} umask={_mask(plan.umask)}'
            )
        if self._holding:
            preflight.before_drop(self, plan, outcome)
        record = carry_out(plan)
        preflight.after_drop(self, plan, outcome)
        record = verify(plan, record)
        self._confine_every_thread()
        for line in record.terminal:
            self._log(line)
        if outcome == DROPPED:
            self._log(
                f'running as {record.after.describe()} HOME={os.environ.get("HOME")}; '
                f'verified on {record.threads_checked} threads'
            )
        elif outcome == ALREADY_TARGET and not KEEPER.adopted_from_exec:
            self._log(
                f'not started as root: no identity change, already running as the target '
                f'{record.after.describe()}; verified on {record.threads_checked} threads',
                level=logging.WARNING,
            )
        elif outcome == ALREADY_TARGET:
            self._log(
                f'already running as {record.after.describe()} (re-executed after a drop; '
                f'{len(KEEPER.fds())} listening sockets adopted); verified on '
                f'{record.threads_checked} threads'
            )
        else:
            self._log(
                f'not started as root: no identity change, running as {record.after.describe()}'
                + (f' (target {target.describe()} not applied)' if target else ''),
                level=logging.WARNING,
            )
        return record

    def _again(self, record: DropRecord) -> None:
        """A second start in the same process: no new drop, only a check."""
        n = verify(self._armed_plan(), record).threads_checked
        self._confine_every_thread()
        self._log(f'already dropped; running as {Snapshot.take().describe()}; verified on {n} threads')

    def _confine_every_thread(self) -> None:
        if self._confinement is not None:
            from . import confine
            confine.after_verified_drop(self, self._confinement, handoff.server_adapters(self.bus))

    def _log(self, msg: str, level: int = logging.INFO) -> None:
        self.bus.log(f'dropprivs: {msg}', level=level)

    def _fail(self, msg: str, status: int) -> NoReturn:
        exit_now(self.bus.log, msg, status)




def _proves_root_start() -> bool:
    from . import reexec
    return reexec.proves_root_start(KEEPER)


def _mask(umask: Optional[int]) -> str:
    return 'unchanged' if umask is None else f'{umask:04o}'


def _is_bad_config(exc: BaseException) -> bool:
    return isinstance(exc, ConfigError) or hasattr(exc, 'dropprivs_option')


def _exit_on_bad_config(previous):
    def excepthook(exc_type, exc, tb):
        if not _is_bad_config(exc):
            return previous(exc_type, exc, tb)
        detail = str(exc) if isinstance(exc, ConfigError) else f'{exc_type.__name__}: {exc}'
        line = (f'cherrypy_dropprivs: bad configuration: {detail}; exiting with status '
                f'{EXIT_BAD_CONFIG} before anything was bound')
        print(line, file=sys.stderr, flush=True)
        if any(name in os.environ for name in NOTIFY_VARIABLES):
            from .notify import from_environment
            notifier = from_environment()
            if notifier is not None:
                notifier.send(f'STATUS={line}')
        os._exit(EXIT_BAD_CONFIG)

    excepthook._dropprivs = True  # type: ignore[attr-defined]
    return excepthook


def install(engine=None) -> DropPrivileges:
    """``engine.dropprivs``, unsubscribed, for config files (at import)."""
    engine = cherrypy.engine if engine is None else engine
    existing = getattr(engine, 'dropprivs', None)
    if isinstance(existing, DropPrivileges):
        return existing
    # The default user is resolved at start, not at import: no name-service
    # lookup (and no NSS module loaded) for a process that never starts it.
    # Values a config file sets are still checked as they are set.
    plugin = DropPrivileges(engine, uid=None)
    plugin._uid = 'nobody'
    engine.dropprivs = plugin
    if not getattr(sys.excepthook, '_dropprivs', False):
        sys.excepthook = _exit_on_bad_config(sys.excepthook)
    return plugin
