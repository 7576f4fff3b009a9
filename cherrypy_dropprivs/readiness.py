"""Which systemd message at which moment of the bus (the protocol is notify.py).

- ``READY=1`` once the bus is STARTED: every start listener has run, the drop
  was verified and the gate is open. It is sent from a ``log`` listener that
  sees the bus log "Bus STARTED" (there is no channel for it), so a start
  listener that fails after the drop never lets READY=1 out. With it,
  ``STATUS=serving as USER (uid N), verified on N threads`` and, when
  daemonized, ``MAINPID=``.
- A failure that ends the process (errors.exit_now) sends its line as ``STATUS=``.
- ``engine.restart()``, the Autoreloader, SIGHUP: ``RELOADING=1`` with
  ``MONOTONIC_USEC=`` as the bus stops, before the servers close; the
  re-executed image sends READY=1 once verified. ``engine.graceful()``:
  ``RELOADING=1`` first, ``READY=1`` after the graceful listeners.
- ``STOPPING=1`` when the bus exits for good (not on a bare ``engine.stop()``,
  which may be followed by ``engine.start()`` in the same process: systemd
  would take STOPPING=1 as the end and kill the process after TimeoutStopSec).
- The watchdog, when systemd asked for one (``WATCHDOG_USEC``).

Imported only when the notify socket is set.
"""

from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Sequence

from cherrypy.process.wspbus import states

from . import errors, handoff
from .drop import NOT_ROOT, DropRecord
from .identity import user_name
from .liveness import Liveness
from .notify import ENV, Notifier, Watchdog, from_environment, monotonic_usec


class Readiness:
    """One per process (the socket belongs to the process): tells systemd how the site is."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.bus: Any = None
        self.daemonized = False
        self.status = 'starting'
        self.watchdog: Optional[Watchdog] = None
        self.liveness: Optional[Liveness] = None
        self._warned: List[str] = []
        #: READY=1 was sent by this image: only then may a graceful say it again.
        self.ready_sent = False
        errors.LAST_WORDS.append(self._last_words)

    # -- the plugin's calls ------------------------------------------------------

    def subscribe(self, bus: Any) -> None:
        self.bus = bus
        bus.subscribe('stop', self._stopping, priority=0)  # before the servers close (50)
        bus.subscribe('exit', self._exiting, priority=0)
        bus.subscribe('graceful', self._graceful_begins, priority=0)
        bus.subscribe('graceful', self._graceful_done, priority=101)

    def unsubscribe(self) -> None:
        if self.bus is None:
            return
        for channel, listener in (('stop', self._stopping), ('exit', self._exiting),
                                  ('graceful', self._graceful_begins),
                                  ('graceful', self._graceful_done), ('log', self._when_started)):
            self.bus.unsubscribe(channel, listener)

    def before_drop(self, daemonized: bool) -> None:
        """Still root: a daemon names its new pid now, so that systemd sees
        its exit status even if the drop then fails."""
        self.daemonized = daemonized
        if daemonized:
            self._send(f'MAINPID={os.getpid()}', 'STATUS=daemonized; dropping privileges')

    def started(self, record: DropRecord, adapters: Sequence[Any]) -> None:
        """The drop is verified and the gate open: READY=1 once the bus is STARTED."""
        after = record.after
        uid = after.uids[1]
        name = user_name(uid) or str(uid)
        how = ('not started as root: no identity change' if record.outcome == NOT_ROOT
               else f'verified on {record.threads_checked} threads')
        self.status = f'serving as {name} (uid {uid}), {how}'
        self._warn_if_unreachable()
        self.bus.subscribe('log', self._when_started)
        self._watch(adapters)

    # -- bus listeners ---------------------------------------------------------------

    def _when_started(self, msg: str = '', level: int = logging.INFO) -> None:
        if self.bus.state == states.STARTED:
            self.bus.unsubscribe('log', self._when_started)
            self._ready()

    def _ready(self) -> None:
        fields = ['READY=1', f'STATUS={self.status}']
        if self.daemonized:
            fields.append(f'MAINPID={os.getpid()}')
        self._send(*fields)
        self.ready_sent = True

    def _reloading(self, why: str) -> None:
        fields = ['RELOADING=1', f'MONOTONIC_USEC={monotonic_usec()}', f'STATUS={why}']
        if self.watchdog is not None:
            fields.append('WATCHDOG=1')  # a full interval for the reload
        self._send(*fields)

    def _stopping(self) -> None:
        if not getattr(self.bus, 'execv', False):
            return  # a stop for good says STOPPING=1 at exit; a bare stop says nothing
        self._reloading('restarting (re-executing the process)')
        carry = handoff.execv_handoff_installed(self.bus) and self.notifier.fd is not None
        if carry:
            handoff.KEEPER.also_inherit.add(self.notifier.fd)  # type: ignore[arg-type]
        os.environ[ENV] = self.notifier.exec_environment(carry_fd=carry)

    def _exiting(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if not getattr(self.bus, 'execv', False):
            self._send('STOPPING=1', 'STATUS=stopping')

    def _serving(self) -> bool:
        # A SIGUSR1 during the start (still root, the drop not done) must not
        # make systemd think the site is up: a graceful only re-confirms an
        # earlier READY=1 of this image.
        return self.ready_sent and self.bus.state == states.STARTED

    def _graceful_begins(self) -> None:
        if self._serving():
            self._reloading('reloading (graceful)')

    def _graceful_done(self) -> None:
        if self._serving():
            self._ready()

    # -- the watchdog ---------------------------------------------------------------

    def _watch(self, adapters: Sequence[Any]) -> None:
        usec = self.notifier.watchdog_usec
        if not usec:
            return
        self.liveness = Liveness(adapters, usec / 2e6)  # a new start: the servers now on the bus
        if self.watchdog is None:
            self.watchdog = Watchdog(self.notifier, usec, self._check, self._watchdog_verdict)
            self.watchdog.start()

    def _check(self) -> Optional[str]:
        if self.bus is not None and self.bus.state != states.STARTED:
            return None  # stopping or starting on purpose: nothing to judge (nor to report)
        liveness = self.liveness  # replaced by each start
        return None if liveness is None else liveness.problem()

    def _watchdog_verdict(self, problem: Optional[str]) -> None:
        if problem is None:
            self._log('watchdog: the servers serve again; pinging again')
            self._send(f'STATUS={self.status}')
            return
        self._log(f'watchdog: not pinging systemd: {problem}', logging.WARNING)
        self._send(f'STATUS=not serving, watchdog not pinged: {problem}')

    # -- sending --------------------------------------------------------------------

    def _send(self, *fields: str) -> None:
        if not self.notifier.send(*fields) and self.notifier.error not in self._warned:
            self._warned.append(self.notifier.error)
            self._log(f'a systemd notification was lost ({fields[0]}): {self.notifier.error}',
                      logging.WARNING)

    def _last_words(self, line: str) -> None:
        self.notifier.send(f'STATUS={line}')

    def _warn_if_unreachable(self) -> None:
        if 'unreachable' in self._warned:
            return
        if self.notifier.fd is None:
            self._warned.append('unreachable')
            self._log(f'{self.notifier.error or "no notify socket"}: each notification is tried '
                      f'anew and may be lost (READY=1, the watchdog)', logging.WARNING)
            return
        why = self.notifier.unreachable()
        if why:
            self._warned.append('unreachable')
            self._log(
                f'the notify socket {self.notifier.address} cannot be opened by '
                f'{handoff.whoami()} ({why}): notifications go through the connection opened '
                f'before the drop, which restarts carry over; if the service manager re-creates '
                f'its socket they are lost. Make it reachable, or use an abstract socket '
                f'(systemd\'s own /run/systemd/notify is reachable by every user)',
                logging.WARNING)

    def _log(self, msg: str, level: int = logging.INFO) -> None:
        if self.bus is not None:
            self.bus.log(f'dropprivs: {msg}', level=level)


#: The process's one Readiness, once NOTIFY_SOCKET was read (see plugin).
CURRENT: Optional[Readiness] = None


def current() -> Optional[Readiness]:
    """The Readiness of this process, created from the environment on first use."""
    global CURRENT
    if CURRENT is None:
        notifier = from_environment()
        if notifier is not None:
            CURRENT = Readiness(notifier)
    return CURRENT
