"""Private mount namespaces for tests: made-up users, and running as non-root.

Nothing here touches the host: every mount is made inside ``unshare -m``
(private propagation) and disappears with the process. ``unshare`` without
``--fork`` execs its command, so the pid the test holds is the python
process itself and is stopped by pid like any other.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _closed_ancestor(path: str) -> Optional[str]:
    """The highest ancestor of ``path`` that others may not search (e.g. /root, 0700)."""
    parts = Path(path).parts
    for i in range(2, len(parts)):
        d = os.path.join(*parts[:i])
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return d
        except OSError:
            return None
    return None


def _exposure_script(paths: Iterable[str], stage: Path) -> List[str]:
    """Shell lines that make ``paths`` reachable for any user inside the namespace.

    A closed directory (``/root`` here, where the interpreter lives) is covered
    by a tmpfs of mode 0755, and each needed path is bind-mounted back at its
    own place: permissions of host files are never changed.
    """
    by_closed: Dict[str, List[str]] = {}
    unique = sorted(set(os.path.realpath(p) for p in paths))
    # A path inside another needed path comes along with it.
    outer = [p for p in unique if not any(p != q and p.startswith(q.rstrip('/') + '/') for q in unique)]
    for p in outer:
        closed = _closed_ancestor(p)
        if closed is not None and p != closed:
            by_closed.setdefault(closed, []).append(p)
    lines = []
    n = 0
    for closed, needed in by_closed.items():
        staged = []
        for p in needed:
            s = stage / f's{n}'
            n += 1
            lines += [f'mkdir -p {shlex.quote(str(s))}',
                      f'mount --bind {shlex.quote(p)} {shlex.quote(str(s))}']
            staged.append((s, p))
        lines.append(f'mount -t tmpfs -o mode=0755 dropprivs-test {shlex.quote(closed)}')
        for s, p in staged:
            lines += [f'mkdir -p {shlex.quote(p)}',
                      f'mount --move {shlex.quote(str(s))} {shlex.quote(p)}']
    return lines


def in_namespace(argv: Sequence[str], stage: Path, *, files: Optional[Dict[str, Path]] = None,
                 run_as: Optional[int] = None, run_groups: Sequence[int] = (),
                 extra_paths: Sequence[str] = ()) -> List[str]:
    """argv wrapped to run in a private mount namespace.

    ``files`` maps a host path (``/etc/passwd``) to a file bind-mounted over it.
    ``run_as`` uid (its gid is the same number) runs the command unprivileged,
    with ``run_groups`` as supplementary groups (default none), after exposing the interpreter, the venv and
    the repository if a closed directory hides them.
    """
    stage.mkdir(parents=True, exist_ok=True)
    lines = ['set -e']
    for target, source in (files or {}).items():
        lines.append(f'mount --bind {shlex.quote(str(source))} {shlex.quote(target)}')
    tail = ['exec "$@"']
    if run_as is not None:
        needed = [os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),
                  sys.prefix, sys.base_prefix, str(REPO), *extra_paths]
        lines += _exposure_script(needed, stage)
        groups = f'--groups={",".join(map(str, run_groups))}' if run_groups else '--clear-groups'
        tail = [f'exec setpriv --reuid={run_as} --regid={run_as} {groups} -- "$@"']
    script = '\n'.join(lines + tail)
    return ['unshare', '-m', '--propagation', 'private', 'sh', '-c', script, 'sh', *argv]


def user_db(tmp: Path, users: Sequence[str], groups: Sequence[str]) -> Dict[str, Path]:
    """Copies of /etc/passwd and /etc/group with extra lines, for ``files=``."""
    tmp.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, extra in (('passwd', users), ('group', groups)):
        path = tmp / name
        path.write_text(Path(f'/etc/{name}').read_text() + ''.join(line + '\n' for line in extra))
        path.chmod(0o644)
        out[f'/etc/{name}'] = path
    return out
