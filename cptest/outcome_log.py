"""pytest plugin (``-p outcome_log``): one JSON line per test phase, as it happens.

Why not ``--junitxml``: pytest writes that file at the end of the session, so
a run that is killed (the plugin under test may end the process with
``os._exit``) would leave nothing. Here every line reaches the kernel the
moment it is written (line-buffered), so a killed run still tells which tests
finished, how, and which one was running when it died.

The file is named by the ``CPTEST_OUTCOMES`` environment variable.
"""

from __future__ import annotations

import json
import os
import time

_out = None


def _write(**event) -> None:
    if _out is not None:
        event['t'] = round(time.time(), 3)
        _out.write(json.dumps(event) + '\n')


def _message(report) -> str:
    """The short reason of a failed or skipped phase (the crash line, not the traceback)."""
    longrepr = report.longrepr
    if longrepr is None:
        return ''
    if isinstance(longrepr, tuple):  # a skip: (file, line, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, 'reprcrash', None)
    if crash is not None:
        return crash.message
    return str(longrepr).strip().splitlines()[-1] if str(longrepr).strip() else ''


def pytest_configure(config) -> None:
    global _out
    path = os.environ.get('CPTEST_OUTCOMES')
    if path and _out is None:
        _out = open(path, 'a', buffering=1, encoding='utf-8')  # kept open for the whole session
        _write(event='configure', pid=os.getpid(), uid=os.getuid(), euid=os.geteuid())


def pytest_collectreport(report) -> None:
    if report.failed:  # a module that cannot even be imported: count it as a test id of its own
        _write(event='report', nodeid=report.nodeid, when='collect', outcome='failed',
               message=_message(report))


def pytest_collection_finish(session) -> None:
    _write(event='collected', nodeids=[item.nodeid for item in session.items])


def pytest_runtest_logstart(nodeid, location) -> None:
    _write(event='start', nodeid=nodeid)


def pytest_runtest_logreport(report) -> None:
    _write(event='report', nodeid=report.nodeid, when=report.when, outcome=report.outcome,
           wasxfail=hasattr(report, 'wasxfail'), message=_message(report) if not report.passed else '')


def pytest_sessionfinish(session, exitstatus) -> None:
    _write(event='finish', exitstatus=int(exitstatus))
