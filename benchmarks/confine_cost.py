"""What ``confine`` costs: throughput and startup, confine on against off, same run.

Run as root:

    python benchmarks/confine_cost.py [--rounds 3] [--duration 3] [--starts 8]

Two hello-world sites (benchmarks/hello_site.py), both started as root on a
free privileged port and dropped to nobody by cherrypy-dropprivs; one with
``confine=True`` (Landlock on every thread), one without. Throughput: rounds
alternate (on, off, off, on, ...) for a fixed duration each, keep-alive and a
new connection per request, with the Python client of throughput.py; each
round gives one ratio on/off from two adjacent runs, and the median ratio is
printed. Startup: the time from starting the process to its first 200
(dropped, verified, and for ``on`` confined and probed on every thread),
alternating, median of ``--starts`` each. Landlock checks happen at open(),
connect() and bind(), not per request, so the expectation is a ratio near 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402
from throughput import run_python  # noqa: E402

HELLO = str(h.HERE / 'hello_site.py')


def argv(port: int, confine: bool) -> list:
    return [h.PYTHON, HELLO, '--port', str(port), '--plugin', 'ours', '--quiet'] + (
        ['--confine'] if confine else [])


def startup(confine: bool) -> float:
    port = h.free_privileged_port()
    t0 = time.monotonic()
    popen = h.start_site(argv(port, confine))
    try:
        return h.wait_http(f'http://127.0.0.1:{port}/', popen=popen) - t0
    finally:
        h.stop(popen)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--duration', type=float, default=3.0)
    p.add_argument('--connections', type=int, default=8)
    p.add_argument('--starts', type=int, default=8)
    args = p.parse_args()
    print(h.machine_header())
    sites = {}
    try:
        for confine in (True, False):
            port = h.free_privileged_port()
            popen = h.start_site(argv(port, confine))
            h.wait_http(f'http://127.0.0.1:{port}/', popen=popen)
            sites[confine] = (port, popen)
        for confine, (port, _popen) in sites.items():
            _status, body = h.get(f'http://127.0.0.1:{port}/confined')
            if body != (b'yes' if confine else b'no'):
                print(f'confine={confine}: the site says confined={body!r}')
                return 1
        for mode in ('keep-alive', 'new-connection'):
            ratios = []
            for r in range(args.rounds):
                order = (True, False) if r % 2 == 0 else (False, True)
                rps = {}
                for confine in order:
                    url = f'http://127.0.0.1:{sites[confine][0]}/'
                    res = run_python(url, mode, args.duration, args.connections, [])
                    rps[confine] = res['rps']
                    print(f'{mode:<15} round {r + 1} confine={"on " if confine else "off"} '
                          f'{res["rps"]:8.1f} req/s {res["errors"]}')
                ratios.append(rps[True] / rps[False])
            print(f'{mode}: throughput ratio confine on/off, median of {args.rounds}: '
                  f'{h.median(ratios):.3f} (rounds: {", ".join(f"{x:.3f}" for x in ratios)})')
    finally:
        for _port, popen in sites.values():
            h.stop(popen)
    times = {True: [], False: []}
    for i in range(args.starts):
        for confine in ((True, False) if i % 2 == 0 else (False, True)):
            times[confine].append(startup(confine))
    on, off = h.median(times[True]) * 1000, h.median(times[False]) * 1000
    print(f'startup to first answer (median of {args.starts}): confine on {on:.0f} ms, '
          f'off {off:.0f} ms, difference {on - off:+.0f} ms (ratio {on / off:.3f})')
    print(h.load_footer())
    return 0


if __name__ == '__main__':
    sys.exit(main())
