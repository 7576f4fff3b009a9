"""Private mount namespaces for tests: made-up users, and running as non-root.

Nothing here touches the host: every mount is made inside ``unshare -m``
(private propagation) and disappears with the process. ``unshare`` without
``--fork`` execs its command, so the pid the test holds is the python
process itself and is stopped by pid like any other.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from conftest import nobody_can_run


def in_namespace(argv: Sequence[str], *, files: Optional[Dict[str, Path]] = None,
                 run_as: Optional[int] = None, run_groups: Sequence[int] = (),
                 extra_paths: Sequence[str] = ()) -> List[str]:
    """argv wrapped to run in a private mount namespace.

    ``files`` maps a host path (``/etc/passwd``) to a file bind-mounted over it.
    ``run_as`` uid (its gid is the same number) runs the command unprivileged,
    with ``run_groups`` as supplementary groups (default none), where it can
    reach the interpreter, the venv and the repository (conftest.nobody_can_run).
    """
    prefix: List[str] = []
    if files:
        binds = [f'mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}' for dst, src in files.items()]
        script = '\n'.join(['set -e', *binds, 'exec "$@"'])
        prefix = ['unshare', '-m', '--propagation', 'private', 'sh', '-c', script, 'sh']
    if run_as is not None:
        groups = f'--groups={",".join(map(str, run_groups))}' if run_groups else '--clear-groups'
        prefix += nobody_can_run(*extra_paths, uid=run_as, gids=(run_as, *run_groups))
        prefix += ['setpriv', f'--reuid={run_as}', f'--regid={run_as}', groups, '--']
    return prefix + list(argv)


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
