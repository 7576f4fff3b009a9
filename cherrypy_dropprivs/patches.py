"""Every CherryPy and cheroot internal this package replaces: one table, one marker, one undo.

The drop needs hooks CherryPy has no API for (holding an accept loop,
adopting a socket instead of binding, carrying sockets across the bus's
re-exec, opening files root touches safely). Each replacement goes through
:func:`replace` (an attribute) or :func:`resubscribe` (a bus listener), which
records what was there, so that :func:`undo` puts everything back (the
plugin's ``unsubscribe``) and :func:`replaced` is the one marker. TABLE lists
them all: what they rely on is private, and a new CherryPy or cheroot release
is checked against it (see the README's supported versions).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

#: (object, attribute, module that replaces it, why).
TABLE: Tuple[Tuple[str, str, str, str], ...] = (
    ('cheroot.server.HTTPServer (instance)', 'bind, bind_unix_socket', 'gate',
     'adopt a kept listening socket instead of binding'),
    ('cheroot.server.HTTPServer (instance)', 'serve', 'gate', 'wait at the gate before the accept loop'),
    ('cheroot.server.HTTPServer (instance)', 'stop', 'gate', 'pause a kept socket on a stop for good'),
    ('cheroot.workers.threadpool.ThreadPool (instance)', 'start', 'gate',
     'per-thread actions before the worker threads exist'),
    ('cherrypy.process.servers.ServerAdapter (instance)', 'wait', 'gate',
     'readiness from the socket itself, not by connecting to it'),
    ('cherrypy._cpserver.Server (instance)', 'httpserver_from_self', 'gate',
     'hook the cheroot server it creates at start'),
    ('cherrypy.process.wspbus.Bus (instance)', 'subscribe', 'gate', 'hold servers subscribed later'),
    ('cherrypy.process.wspbus.Bus (instance)', '_do_execv, _set_cloexec', 'handoff',
     'carry the kept sockets across the re-exec'),
    ('cherrypy.process.wspbus.Bus (instance)', '_get_true_argv', 'handoff',
     'at the exec after a drop only: the interpreter with -s (no user site of the target)'),
    ('cherrypy.process.servers (module)', 'portend', 'handoff', 'a kept port counts as free'),
    ('cherrypy.process.plugins.Daemonizer (instance)', 'daemonize', 'handoff',
     'no second fork in a re-executed daemon'),
    ('cherrypy.process.plugins.Daemonizer (instance)', 'stdin, stdout, stderr', 'pidfile',
     'files opened through the safe walk, as root'),
    ('cherrypy.process.plugins.PIDFile (instance)', '__class__', 'pidfile',
     'SafePIDFile: the PID file written through the safe walk'),
    ('cherrypy._cplogging.LogManager (class)', '_add_builtin_file_handler, _set_file_handler', 'preflight',
     'log files opened through the safe walk, as root'),
    ('bus "graceful" listener', 'LogManager.reopen_files', 'preflight', 'a reopen that cannot hang'),
    ('cheroot.connections.ConnectionManager (instance)', '_expire', 'liveness',
     'the accept loop\'s heartbeat for the systemd watchdog (only with WATCHDOG_USEC)'),
    ('bus "exit" listener', 'PIDFile.exit', 'pidfile', 'say when the PID file cannot be removed'),
)

#: The marker: on each patched object, attribute name -> what was there.
MARK = '_dropprivs_replaced'
_MISSING = object()
_undo: List[Callable[[], None]] = []


def replace(obj: Any, name: str, new: Any, keep: bool = False) -> None:
    """``setattr(obj, name, new)``, remembered for :func:`undo` (once per name)
    unless ``keep`` (a replacement for the life of the process)."""
    marks: Dict[str, Any] = obj.__dict__.get(MARK) if MARK in vars(obj) else None  # type: ignore[assignment]
    if marks is None:
        marks = {}
        setattr(obj, MARK, marks)
    if name not in marks:
        marks[name] = obj.__class__ if name == '__class__' else vars(obj).get(name, _MISSING)
        if not keep:
            _undo.append(lambda: _restore(obj, name))
    setattr(obj, name, new)


def _restore(obj: Any, name: str) -> None:
    marks = vars(obj).get(MARK, {})
    old = marks.pop(name, _MISSING)
    if old is _MISSING:
        if name != '__class__' and name in vars(obj):
            delattr(obj, name)
    else:
        setattr(obj, name, old)
    if not marks and MARK in vars(obj):
        delattr(obj, MARK)


def replaced(obj: Any, name: str) -> bool:
    """Whether :func:`replace` put ``name`` on ``obj`` (and it was not undone)."""
    return name in vars(obj).get(MARK, {})


def resubscribe(bus: Any, channel: str, old: Callable, new: Callable) -> None:
    """Put ``new`` on ``channel`` in place of ``old``, at its priority."""
    priority = bus._priorities.get((channel, old), 50)
    bus.unsubscribe(channel, old)
    bus.subscribe(channel, new, priority=priority)

    def back() -> None:
        bus.unsubscribe(channel, new)
        bus.subscribe(channel, old, priority=priority)
    _undo.append(back)


def undo() -> None:
    """Put back everything replaced so far, newest first."""
    while _undo:
        _undo.pop()()
