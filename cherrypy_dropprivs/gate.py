"""A gate that holds servers' accept loops until the drop has been verified.

The servers bind as root and their threads exist before the drop, but no
connection is accepted (let alone served) until the gate opens. Connections
that arrive meanwhile wait in the kernel's listen backlog and are served by
the dropped process; if the drop fails the process exits and the kernel
resets them.
"""

from __future__ import annotations

import threading
from typing import Callable, List


class Gate:
    def __init__(self) -> None:
        self._open = threading.Event()
        #: Per-thread work (capabilities, no_new_privs) each server thread runs
        #: before it creates its worker threads, so that they inherit it.
        self.thread_actions: List[Callable[[], None]] = []

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def wait(self, still_wanted: Callable[[], bool], poll: float = 0.1) -> bool:
        """Block until open; give up (False) once ``still_wanted()`` is false.

        The poll lets a server that is stopped before the drop (a failed start)
        leave, so the bus can join its thread.
        """
        while not self._open.wait(poll):
            if not still_wanted():
                return False
        return True

    def run_thread_actions(self) -> None:
        for action in self.thread_actions:
            action()
