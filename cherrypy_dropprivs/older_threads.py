"""Threads that existed before the drop and still lack a per-thread setting.

capset, prctl and Landlock act on the calling thread only, so a thread
started before the drop must change itself. A CherryPy background task (the
Autoreloader, a Monitor) is made to run the actions at the start of its next
run, and waited for; any other thread cannot be reached, and the start fails
closed naming it. Loaded only when the drop's sweep found such a thread.
No CherryPy imports (tasks are duck-typed).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Sequence

from .errors import PrivilegeDropError
from .kernel import ThreadCreds, thread_creds

#: Longest the drop waits for a background task's next run (seconds).
MAX_WAIT = 5.0


#: Added to a task's interval: the time its function may itself take.
SLACK = 1.0


#: How long a thread that lacks something may take to finish exiting (e.g. the
#: accept thread of a server stopped just before an engine.start() in the same
#: process): gone, it serves nothing.
EXITING = 1.0


def reach(
    lacking: List[ThreadCreds],
    actions: Sequence[Callable[[], None]],
    lacks: Callable[[ThreadCreds], List[str]],
    max_wait: float = MAX_WAIT,
) -> int:
    """Have each thread of ``lacking`` run ``actions``; how many did.

    ``lacks(creds)`` says what a thread still lacks ([] when nothing).
    Raises PrivilegeDropError naming each thread that still lacks something.
    """
    me = threading.get_native_id()
    by_tid: Dict[int, Any] = {
        t.native_id: t for t in threading.enumerate() if t.native_id is not None
    }
    waits = []
    for creds in lacking:
        t: Any = by_tid.get(creds.tid)
        if _is_task(t) and getattr(t, 'running', False):
            waits.append((t, _wrap(t, actions), min(t.interval + SLACK, max_wait)))
    start = time.monotonic()
    for _task, done, limit in waits:
        done.wait(max(0.0, limit - (time.monotonic() - start)))
    left = [c for c in (thread_creds('self') if waits else lacking)  # read again only after waiting
            if c.tid != me and lacks(c)]
    if left:
        left = _still_there(left, EXITING)
    problems = []
    for creds in left:
        t = by_tid.get(creds.tid)
        name = repr(t.name) if t is not None else f'{creds.name!r} (not a Python thread)'
        why = ', '.join(lacks(creds))
        if _is_task(t):
            err = getattr(t, '_dropprivs_error', None)
            hint = (f'it failed to change itself: {err}' if err is not None else
                    f'it did not run within {min(t.interval + SLACK, max_wait):.1f}s '
                    f'(interval {t.interval}s); start it after the drop, or use an interval '
                    f'under {max_wait - SLACK:.0f}s')
        else:
            hint = ('it was started before the drop and cannot be reached from here; '
                    'start it after the drop (e.g. from a start listener above the drop\'s priority)')
        problems.append(f'thread {creds.tid} {name}: {why}; {hint}')
    if problems:
        raise PrivilegeDropError(
            'threads', 'capabilities, no_new_privs and Landlock are per thread, and these '
            'threads still differ: ' + '; '.join(problems))
    return len(waits)


def _is_task(t: object) -> bool:
    """A CherryPy ``BackgroundTask`` (duck-typed): a thread that calls
    ``function`` every ``interval``."""
    return callable(getattr(t, 'function', None)) and isinstance(getattr(t, 'interval', None), (int, float))


def _wrap(task, actions: Sequence[Callable[[], None]]) -> threading.Event:
    done = threading.Event()
    original = task.function

    def once(*args, **kwargs):
        task.function = original
        try:
            for action in actions:
                action()
        except Exception as e:  # the drop fails closed; never run the task as it was
            task._dropprivs_error = e
            raise
        finally:
            done.set()
        return original(*args, **kwargs)

    task.function = once
    return done


def _still_there(threads: List[ThreadCreds], within: float) -> List[ThreadCreds]:
    """The ones of ``threads`` still alive after up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        alive = {c.tid for c in thread_creds('self')}
        threads = [c for c in threads if c.tid in alive]
        if not threads or time.monotonic() >= deadline:
            return threads
        time.sleep(0.01)
