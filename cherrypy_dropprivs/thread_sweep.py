"""Per-thread settings for threads that already exist when the drop runs.

Capabilities (capset, PR_CAP_AMBIENT; the inheritable set too, which
setresuid leaves alone) and no_new_privs are per thread: a call
in the main thread does not reach the Autoreloader's Monitor thread or any
other ``BackgroundTask`` started before the drop (priority 70). A thread can
only change its own, so each such task gets a one-shot wrapper around its
``function``: on its next run it applies the actions in its own thread,
then carries on as before. The drop waits for that, bounded; any thread
that still differs afterwards is named and the drop fails closed.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Sequence

from .errors import PrivilegeDropError
from .kernel_view import ThreadCreds, thread_creds

#: Longest the drop waits for a background task's next run (seconds).
MAX_WAIT = 5.0
#: Added to a task's interval: the time its function may itself take.
SLACK = 1.0


def _lacking(t: ThreadCreds, clear_caps: bool, no_new_privs: bool) -> List[str]:
    out = []
    if clear_caps:
        for label, value in (('CapPrm', t.cap_prm), ('CapEff', t.cap_eff), ('CapAmb', t.cap_amb),
                             ('CapInh', t.cap_inh)):
            if value:
                out.append(f'{label} {value:016x}')
    if no_new_privs and not t.no_new_privs:
        out.append('NoNewPrivs 0')
    return out


def _is_task(t: object) -> bool:
    """A CherryPy ``BackgroundTask`` (duck-typed: this module stays free of
    CherryPy imports): a thread that calls ``function`` every ``interval``."""
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


def apply_to_existing_threads(
    actions: Sequence[Callable[[], None]],
    clear_caps: bool,
    no_new_privs: bool,
    max_wait: float = MAX_WAIT,
) -> int:
    """Run ``actions`` in every older background thread that needs them.

    Returns how many threads were handled. Raises PrivilegeDropError naming
    each thread that still holds capabilities or lacks no_new_privs.
    """
    if not actions or not (clear_caps or no_new_privs):
        return 0
    me = threading.get_native_id()
    by_tid: Dict[int, Any] = {
        t.native_id: t for t in threading.enumerate() if t.native_id is not None
    }
    waits = []
    for creds in thread_creds('self'):
        if creds.tid == me or not _lacking(creds, clear_caps, no_new_privs):
            continue
        t: Any = by_tid.get(creds.tid)
        if _is_task(t) and getattr(t, 'running', False):
            waits.append((t, _wrap(t, actions), min(t.interval + SLACK, max_wait)))
    start = time.monotonic()
    for _task, done, limit in waits:
        done.wait(max(0.0, limit - (time.monotonic() - start)))
    problems = []
    for creds in thread_creds('self'):
        lacking = _lacking(creds, clear_caps, no_new_privs)
        if creds.tid == me or not lacking:
            continue
        t = by_tid.get(creds.tid)
        name = repr(t.name) if t is not None else f'{creds.name!r} (not a Python thread)'
        why = ', '.join(lacking)
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
            'threads', 'capabilities and no_new_privs are per thread, and these threads '
            'still differ: ' + '; '.join(problems))
    return len(waits)
