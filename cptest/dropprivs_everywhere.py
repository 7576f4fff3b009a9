"""Subscribe cherrypy-dropprivs on ``cherrypy.engine`` in every process of a test run.

Two ways in, one idempotent ``subscribe()``:

* as a pytest plugin (``-p dropprivs_everywhere``): at configure time, before
  any CherryPy test module is imported, in the pytest process itself; and
  again before each test if something took the listener off the bus;
* from ``site/sitecustomize.py`` (on PYTHONPATH, only when
  ``DROPPRIVS_EVERYWHERE=1``): an import hook that subscribes right after the
  ``cherrypy`` package is imported. That reaches the servers CherryPy's suite
  starts in subprocesses (``helper.CPProcess`` runs ``python -m cherrypy``,
  also daemonized, for test_states), which inherit the environment. A hook
  rather than importing cherrypy eagerly, so that a process that never imports
  cherrypy is left exactly as it was.

The plugin is ``DropPrivileges(cherrypy.engine, uid=None)``: keep the current
user (nobody here: there is nothing to drop), so any change in the suite's
outcomes comes from the plugin's wiring, not from a change of identity.
Each subscription appends ``pid argv`` to the file named by
``CPTEST_SUBSCRIPTIONS``, so the harness can show it reached the subprocesses.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

_plugin = None


def subscribe():
    """Create and subscribe the plugin once per process; return it."""
    global _plugin
    import cherrypy  # first: with the import hook installed, this may subscribe already

    if _plugin is None:
        import cherrypy_dropprivs

        _plugin = cherrypy_dropprivs.DropPrivileges(cherrypy.engine, uid=None)
        _plugin.subscribe()
        log = os.environ.get('CPTEST_SUBSCRIPTIONS')
        if log:
            with open(log, 'a', encoding='utf-8') as f:
                f.write(f'{os.getpid()} {" ".join(sys.argv)}\n')
    return _plugin


def _still_subscribed() -> bool:
    import cherrypy

    return _plugin.start in cherrypy.engine.listeners.get('start', ())


class _AfterCherryPyImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of ``cherrypy`` to subscribe after it runs."""

    def find_spec(self, fullname, path, target=None):
        if fullname != 'cherrypy':
            return None
        others = [f for f in sys.meta_path if f is not self]
        for finder in others:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, 'find_spec') else None
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_then_subscribe(module, _exec=exec_module):
                    _exec(module)
                    sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
                    subscribe()

                spec.loader.exec_module = exec_then_subscribe
                return spec
        return None


def install_import_hook() -> None:
    """Subscribe as soon as ``cherrypy`` is imported (now, if it already is)."""
    if 'cherrypy' in sys.modules:
        subscribe()
    elif not any(isinstance(f, _AfterCherryPyImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterCherryPyImport())


# -- pytest hooks -------------------------------------------------------------


def pytest_configure(config) -> None:
    subscribe()


def pytest_runtest_setup(item) -> None:
    if not _still_subscribed():  # a test rebuilt the bus's listeners: put the plugin back
        sys.stderr.write(f'cptest: re-subscribing DropPrivileges before {item.nodeid}\n')
        _plugin.subscribe()
