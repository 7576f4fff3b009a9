"""Startup against memory: where the package looks its user and groups up.

Run as root from the repository root (one command):

    .venv/bin/python benchmarks/lookup_tradeoff.py [--rounds 7]

Issue 12 asks for both: startup within +5 ms of plain CherryPy and at most
384 KiB of added VmRSS. On this machine the one step that decides between
them is the name-service lookup (``nameservice``). glibc loads one module per
nsswitch.conf source into the process that asks (Debian's ``files systemd``:
libnss_systemd with libcap and libm) and never unloads it, so the package asks
from a forked child. That fork costs time twice: the fork and the child's
answer, and afterwards a copy-on-write fault on each page the site writes
again. Asking in the site itself costs neither, but maps the modules.

Alternating, one server on a free privileged port of 127.0.0.1 each
(benchmarks/hello_site.py):

- ``none``: plain CherryPy;
- ``ours``: the package as shipped (lookup in a forked child);
- ``ours-lookup-here``: the same with the lookup made in the site (the path
  the package takes in a process that already has threads), a what-if.

``--files-only`` runs every site in a private mount namespace whose
/etc/nsswitch.conf names ``files`` alone for passwd and group (as on a small
box; musl has no modules at all): there glibc maps no module for the lookup.

For each: process start to first 200 (client polling every 2 ms, as
window.py's part 2), then VmRSS, RssAnon and RssFile after warm-up requests
(as memory.py). Prints the medians, each variant minus ``none``, and which of
issue 12's two goals each way meets. Not a test: numbers for
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402
from memory import FIELDS, status_kib, warm_up  # noqa: E402

HELLO = str(h.HERE / 'hello_site.py')
VARIANTS = ('none', 'ours', 'ours-lookup-here')
STARTUP_GOAL_MS = 5.0
MEMORY_GOAL_KIB = 384


def one_run(variant: str, warm: int, settle: float, prefix: List[str]) -> Dict[str, float]:
    port = h.free_privileged_port()
    t0 = time.monotonic()
    proc = h.start_site([*prefix, h.PYTHON, HELLO, '--plugin', variant, '--quiet', '--port', str(port)])
    try:
        t = h.wait_http(f'http://127.0.0.1:{port}/', timeout=20, popen=proc, interval=0.002)
        out: Dict[str, float] = {'startup': (t - t0) * 1000.0}
        warm_up(port, warm)
        time.sleep(settle)
        out.update(status_kib(proc.pid))
        with open(f'/proc/{proc.pid}/maps') as f:
            out['nss'] = float(any('/libnss_' in line for line in f))
        return out
    finally:
        h.stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rounds', type=int, default=7, help='runs per variant (default 7)')
    p.add_argument('--warm', type=int, default=200, help='warm-up requests per kind (default 200)')
    p.add_argument('--settle', type=float, default=0.5, help='seconds between warm-up and reading')
    p.add_argument('--files-only', action='store_true',
                   help="sites see an nsswitch.conf with 'files' alone for passwd and group")
    args = p.parse_args()
    if os.geteuid() != 0:
        print('run as root: the sites bind a privileged port and drop to nobody')
        return 2
    print(h.machine_header())
    prefix: List[str] = []
    nsswitch = '/etc/nsswitch.conf'
    if args.files_only:
        nsswitch = str(h.LOG_DIR / 'nsswitch.conf')
        with open(nsswitch, 'w') as f:
            f.write('passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n')
        prefix = ['unshare', '-m', '--propagation', 'private', 'sh', '-c',
                  f'mount --bind {nsswitch} /etc/nsswitch.conf && exec "$@"', 'sh']
    with open(nsswitch) as f:
        sources = [' '.join(line.split()) for line in f if line.startswith(('passwd:', 'group:'))]
    print(f'nsswitch: {"; ".join(sources)}' + (' (a private mount namespace)' if prefix else ''))
    print(f'site:     benchmarks/hello_site.py, one server, {args.rounds} runs per variant, '
          f'alternating {" / ".join(VARIANTS)}')
    keys = ('startup',) + FIELDS
    res: Dict[str, List[Dict[str, float]]] = {v: [] for v in VARIANTS}
    print(f'\nraw runs (startup in ms, memory in KiB):\n  {"variant":16} {"run":>3} '
          + ' '.join(f'{k:>8}' for k in keys) + '  NSS module mapped')
    for i in range(args.rounds):
        for v in VARIANTS:
            r = one_run(v, args.warm, args.settle, prefix)
            res[v].append(r)
            print(f'  {v:16} {i + 1:3} {r["startup"]:8.1f} '
                  + ' '.join(f'{r[f]:8.0f}' for f in FIELDS)
                  + f'  {"yes" if r["nss"] else "no"}', flush=True)
    med = {v: {k: h.median([r[k] for r in res[v]]) for k in keys} for v in VARIANTS}
    print('\nmedians, and minus none:')
    print(f'  {"variant":16} {"startup ms":>10} {"VmRSS KiB":>10} {"RssAnon":>8} {"RssFile":>8}')
    for v in VARIANTS:
        print(f'  {v:16} {med[v]["startup"]:10.1f} '
              + ' '.join(f'{med[v][f]:{w}.0f}' for f, w in zip(FIELDS, (10, 8, 8))))
    for v in VARIANTS[1:]:
        ds = med[v]['startup'] - med['none']['startup']
        dm = {f: med[v][f] - med['none'][f] for f in FIELDS}
        print(f'  {v + " - none":16} {ds:+10.1f} '
              + ' '.join(f'{dm[f]:{w}.0f}' for f, w in zip(FIELDS, (10, 8, 8)))
              + f'   startup {"met" if ds <= STARTUP_GOAL_MS else "NOT met"} '
                f'(<= +{STARTUP_GOAL_MS:.0f} ms), memory '
                f'{"met" if dm["VmRSS"] <= MEMORY_GOAL_KIB else "NOT met"} '
                f'(<= {MEMORY_GOAL_KIB} KiB)')
    print(h.load_footer())
    return 0


if __name__ == '__main__':
    sys.exit(main())
