"""Connection continuity across restarts: this package vs plain CherryPy vs the builtin plugin.

Run as root from the repository root (one command):

    /tmp/venv/bin/python benchmarks/restart_continuity.py [--restarts 10]

For each setup a real site (tests/sites/site.py) is started, a client opens a
fresh connection every 2 ms (tests/poller.py, the same client the tests use)
and the site is restarted with engine.restart() (GET /restart) N times. It
prints, per setup, the requests made, the refused/reset/empty/error counts
and the outage: the longest and the median time with no successful answer
around a restart. Not a test: numbers for the issue note.

Setups:
  dropprivs  this package, privileged port, dropped to nobody
  plain      CherryPy without any drop plugin, unprivileged port, as root
  builtin    CherryPy's own DropPrivileges(uid='nobody'), privileged port
             (the re-executed process cannot bind and exits: CherryPy #1211)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'tests'))

import conftest  # noqa: E402  (free ports, nobody_can_run, stop_process)
import poller  # noqa: E402

sys.path.insert(0, str(REPO / 'benchmarks'))
from _harness import machine_header  # noqa: E402

OUTAGE_MIN_MS = 20.0  # a gap between answers longer than this counts as an outage


def start_site(argv_tail, port, log_path, prefix):
    env = dict(os.environ, PYTHONUNBUFFERED='1',
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get('PYTHONPATH')) if p))
    log = open(log_path, 'wb')
    popen = subprocess.Popen(
        [*prefix, sys.executable, str(conftest.SITE), '--port', str(port), *argv_tail],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(REPO),
        start_new_session=True,
    )
    log.close()
    return popen


def outages_ms(p: poller.Poller):
    """Each gap between consecutive successful answers longer than OUTAGE_MIN_MS."""
    gaps, last = [], None
    for o in p.outcomes:
        if o.kind == poller.OK:
            if last is not None and (o.ended - last) * 1000 > OUTAGE_MIN_MS:
                gaps.append((o.ended - last) * 1000)
            last = o.ended
    if p.outcomes and p.outcomes[-1].kind != poller.OK and last is not None:
        gaps.append((p.outcomes[-1].ended - last) * 1000)
    return gaps


def run(name, argv_tail, port, restarts, interval, prefix, tmp, give_up_after=3.0):
    connect = poller.tcp('127.0.0.1', port)
    log = Path(tmp) / f'{len(os.listdir(tmp))}.log'
    popen = start_site(argv_tail, port, log, prefix)
    came_back = 0
    try:
        try:
            boot = poller.wait_started(connect, alive=lambda: popen.poll() is None)['boot']
        except AssertionError:
            sys.stderr.write(f'{name}: the site did not start:\n{log.read_text(errors="replace")}\n')
            raise
        p = poller.Poller(connect, '/boot', interval=interval, max_seconds=restarts * 10 + 20).start()
        time.sleep(0.1)
        for _ in range(restarts):
            poller.request(connect, '/restart')
            try:
                boot = poller.wait_started(connect, boot, timeout=10,
                                           alive=lambda: popen.poll() is None)['boot']
            except AssertionError:
                time.sleep(give_up_after)  # keep polling a dead port for a while, then stop
                break
            came_back += 1
            time.sleep(0.1)
        p.stop()
    finally:
        conftest.stop_process(popen)
    counts = p.counts()
    gaps = outages_ms(p)
    return {
        'setup': name,
        'restarts': f'{came_back}/{restarts}',
        'requests': len(p.outcomes),
        'ok': counts.get('ok', 0),
        'refused': counts.get('refused', 0),
        'reset': counts.get('reset', 0),
        'empty': counts.get('empty', 0),
        'other': sum(v for k, v in counts.items() if k not in ('ok', 'refused', 'reset', 'empty')),
        'outage_max_ms': round(max(gaps, default=0.0), 1),
        'outage_median_ms': round(statistics.median(gaps), 1) if gaps else 0.0,
        'exit': popen.returncode,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--restarts', type=int, default=10)
    ap.add_argument('--interval', type=float, default=0.002, help='client pause between requests (s)')
    ap.add_argument('--json', action='store_true', help='also print the rows as JSON')
    args = ap.parse_args()
    if os.geteuid() != 0:
        print('run as root: the privileged-port setups start as root and drop', file=sys.stderr)
        return 2
    print(machine_header())
    prefix = conftest.nobody_can_run()  # lets nobody re-exec the interpreter (see tests/conftest.py)
    nobody = json.dumps({'uid': 'nobody'})
    with tempfile.TemporaryDirectory(prefix='restart-continuity-') as tmp:
        rows = [
            run('dropprivs (port<1024, nobody)', ['--plugin', 'ours'], conftest.free_privileged_port(),
                args.restarts, args.interval, prefix, tmp),
            run('plain CherryPy (port>1024, root)', ['--plugin', 'none'], conftest.free_port(),
                args.restarts, args.interval, [], tmp),
            run('builtin DropPrivileges (port<1024)', ['--plugin', 'builtin', '--options', nobody],
                conftest.free_privileged_port(), args.restarts, args.interval, prefix, tmp),
        ]
    cols = ['setup', 'restarts', 'requests', 'ok', 'refused', 'reset', 'empty', 'other',
            'outage_max_ms', 'outage_median_ms', 'exit']
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print('  '.join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print('  '.join(str(r[c]).ljust(widths[c]) for c in cols))
    ours, plain = rows[0], rows[1]
    print()
    print(f"refused connections: dropprivs {ours['refused']} vs plain {plain['refused']} "
          f"(per restart: {ours['refused'] / max(args.restarts, 1):.1f} vs "
          f"{plain['refused'] / max(args.restarts, 1):.1f})")
    if plain['outage_max_ms']:
        print(f"longest outage ratio dropprivs/plain: {ours['outage_max_ms'] / plain['outage_max_ms']:.2f}; "
              f"median: {ours['outage_median_ms'] / max(plain['outage_median_ms'], 1e-9):.2f}")
    print(f"builtin plugin: {rows[2]['restarts']} restarts came back, exit status {rows[2]['exit']}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
