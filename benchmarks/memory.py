"""Memory: RSS of the running site with cherrypy-dropprivs vs without.

Run as root (one command):

    sudo python benchmarks/memory.py

The hello-world site (benchmarks/hello_site.py, one server on a free
privileged port of 127.0.0.1, default thread pool) is started as root,
alternating ``ours`` (cherrypy-dropprivs, dropped to nobody), ``none`` (plain
CherryPy, no plugin, stays root), ``builtin`` (CherryPy's own
DropPrivileges) and ``imported`` (plain CherryPy that only imports
cherrypy_dropprivs: splits the cost into importing and running). After it
answers, the script sends warm-up requests (keep-alive and new connections),
waits briefly, and reads VmRSS, RssAnon and RssFile from /proc/<pid>/status.
It prints every run, the medians and the difference ours - none (issue 12's
goal: at most 384 KiB), split into RssAnon and RssFile.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402

HELLO = str(h.HERE / 'hello_site.py')
VARIANTS = ('ours', 'none', 'builtin', 'imported')
FIELDS = ('VmRSS', 'RssAnon', 'RssFile')


def status_kib(pid: int) -> Dict[str, int]:
    out = {}
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            key = line.split(':', 1)[0]
            if key in FIELDS:
                out[key] = int(line.split()[1])
    return out


def warm_up(port: int, n: int) -> None:
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
    try:
        for _ in range(n):  # keep-alive
            conn.request('GET', '/')
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
    finally:
        conn.close()
    for _ in range(n):  # a new connection each
        status, _ = h.get(f'http://127.0.0.1:{port}/', timeout=5)
        assert status == 200, status


def one_run(variant: str, warm: int, settle: float) -> Dict[str, int]:
    port = h.free_privileged_port()
    proc = h.start_site([h.PYTHON, HELLO, '--plugin', variant, '--quiet', '--port', str(port)])
    try:
        h.wait_http(f'http://127.0.0.1:{port}/', popen=proc)
        warm_up(port, warm)
        time.sleep(settle)
        return status_kib(proc.pid)
    finally:
        h.stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rounds', type=int, default=7, help='runs per variant (default 7)')
    p.add_argument('--warm', type=int, default=200, help='warm-up requests per kind (default 200)')
    p.add_argument('--settle', type=float, default=0.5, help='seconds between warm-up and reading')
    args = p.parse_args()
    if os.geteuid() != 0:
        print('run as root: the plugin drops from root after binding a privileged port')
        return 2
    print(h.machine_header())
    print(f'site:     benchmarks/hello_site.py, 1 server, {args.warm} keep-alive + {args.warm} '
          f'new-connection warm-up requests, read after {args.settle:g} s; {args.rounds} runs per '
          f'variant, alternating {" / ".join(VARIANTS)}')
    res: Dict[str, List[Dict[str, int]]] = {v: [] for v in VARIANTS}
    print(f'\nraw runs (KiB):\n  {"variant":8} {"run":>3} ' + ' '.join(f'{f:>8}' for f in FIELDS))
    for i in range(args.rounds):
        for v in VARIANTS:
            r = one_run(v, args.warm, args.settle)
            res[v].append(r)
            print(f'  {v:8} {i + 1:3} ' + ' '.join(f'{r[f]:8d}' for f in FIELDS), flush=True)

    med = {v: {f: h.median([r[f] for r in res[v]]) for f in FIELDS} for v in VARIANTS}
    print(f'\nmedians (KiB):\n  {"variant":8}     ' + ' '.join(f'{f:>8}' for f in FIELDS))
    for v in VARIANTS:
        print(f'  {v:8}     ' + ' '.join(f'{med[v][f]:8.0f}' for f in FIELDS))
    d = med['ours']['VmRSS'] - med['none']['VmRSS']
    db = med['builtin']['VmRSS'] - med['none']['VmRSS']
    print(f'\nadded VmRSS, ours - none: {d:+.0f} KiB ({d / 1024:+.2f} MiB); goal (issue 12) at most '
          f'384 KiB: {"met" if d <= 384 else "NOT MET"}')
    da = med['ours']['RssAnon'] - med['none']['RssAnon']
    df = med['ours']['RssFile'] - med['none']['RssFile']
    print(f'  of which RssAnon {da:+.0f} KiB (the package\'s objects; varies by tens of KiB) and '
          f'RssFile {df:+.0f} KiB (pages of shared files: varies by about 100 KiB between runs)')
    print(f'added VmRSS, builtin - none: {db:+.0f} KiB ({db / 1024:+.2f} MiB)')
    di = med['imported']['VmRSS'] - med['none']['VmRSS']
    print(f'of ours - none: importing the package {di:+.0f} KiB, running the plugin {d - di:+.0f} KiB')
    print(h.load_footer())
    return 0


if __name__ == '__main__':
    sys.exit(main())
