"""Where the startup difference goes: a breakdown, this package vs plain CherryPy.

Run as root from the repository root (one command):

    .venv/bin/python benchmarks/startup_parts.py [--rounds 10] [--lookup-here]

Each round starts two fresh processes on a free privileged port, alternating:
plain CherryPy and this package, each a one-page site (benchmarks/hello_site's
shape). Inside the process the steps are timed with time.perf_counter() by
wrapping them (the code itself is not changed): importing the package, making
the plugin (its name-service lookup, in a forked child), the arm listener,
each server's start (bind and readiness), the preflight, the drop (set*id),
the verification, keeping sockets, and the rest of the drop listener. A
client thread polls the port every 0.5 ms from engine.start() on and records
the first answer. ``--lookup-here`` adds ``ours-lookup-here``, the same with
the lookup made in the site itself (the path taken where the process already
has threads). Prints the medians and, for the total from engine.start() to
the first answer, the difference to plain CherryPy. The fork also costs after
it returns: each page the site writes again takes a copy-on-write fault, a
part of the later steps that ours-lookup-here shows (lookup_tradeoff.py weighs
startup against memory).
Not a test: numbers for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'tests'))
sys.path.insert(0, str(REPO / 'benchmarks'))

import conftest  # noqa: E402
from _harness import load_footer, machine_header  # noqa: E402

CHILD = r'''
import json, os, socket, sys, threading, time
t_begin = time.perf_counter()
times = {}
import cherrypy
times['import cherrypy'] = time.perf_counter() - t_begin
ours = sys.argv[2] != 'none'
if ours:
    t = time.perf_counter()
    import cherrypy_dropprivs
    if sys.argv[2] == 'ours-lookup-here':  # the what-if of --lookup-here
        from cherrypy_dropprivs import nameservice
        nameservice._one_thread = lambda: False
    from cherrypy_dropprivs import drop, handoff, plugin, preflight
    times['import cherrypy_dropprivs'] = time.perf_counter() - t

    def timed(owner, name, label):
        original = getattr(owner, name)
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                times[label] = times.get(label, 0.0) + time.perf_counter() - t0
        setattr(owner, name, wrapper)
    timed(plugin.DropPrivileges, '_arm', 'arm listener (10)')
    timed(plugin.DropPrivileges, 'start', 'drop listener (77), all of it')
    timed(preflight, 'before_drop', '  preflight (hand files over, check)')
    timed(plugin, 'carry_out', '  drop (limits, terminal, set ids, caps)')
    timed(plugin, 'verify', '  verification (ids, threads, children)')
    timed(preflight, 'after_drop', '  per-thread sweep')
    timed(handoff, 'restart_warnings', '  restart checks')
    timed(handoff, 'keep_sockets', '  keep sockets')
port = int(sys.argv[1])
cherrypy.config.update({'log.screen': False, 'engine.autoreload.on': False, 'checker.on': False,
                        'server.socket_host': '127.0.0.1', 'server.socket_port': port})
class Root:
    @cherrypy.expose
    def index(self):
        return 'hello'
cherrypy.tree.mount(Root(), '/')
def mark(label):
    def listener():
        times[label] = time.perf_counter() - t_start
    return listener
cherrypy.engine.subscribe('start', mark('at priority 11 (after arm)'), priority=11)
cherrypy.engine.subscribe('start', mark('at priority 76 (servers started)'), priority=76)
if ours:
    t = time.perf_counter()
    cherrypy_dropprivs.DropPrivileges(cherrypy.engine, uid='nobody').subscribe()
    times['making the plugin (its lookup)'] = time.perf_counter() - t
first = []
def poll():
    while not first:
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=2) as s:
                s.sendall(b'GET / HTTP/1.0\r\n\r\n')
                if s.recv(12).startswith(b'HTTP/1.1 200'):
                    first.append(time.perf_counter())
        except OSError:
            time.sleep(0.0005)
t_start = time.perf_counter()
threading.Thread(target=poll, daemon=True).start()
cherrypy.engine.start()
times['engine.start() returned'] = time.perf_counter() - t_start
deadline = time.monotonic() + 10
while not first and time.monotonic() < deadline:
    time.sleep(0.0005)
times['engine.start() to first answer'] = first[0] - t_start if first else float('nan')
print('TIMES ' + json.dumps({k: v * 1000 for k, v in times.items()}), flush=True)
os._exit(0)
'''


def run(variant: str) -> dict:
    port = conftest.free_privileged_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, '-c', CHILD, str(port), variant], capture_output=True,
                         text=True, env=env, timeout=60, cwd='/')
    for line in out.stdout.splitlines():
        if line.startswith('TIMES '):
            return json.loads(line[6:])
    raise RuntimeError(f'{variant}: no timings\n{out.stdout}\n{out.stderr}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--lookup-here', action='store_true',
                    help='also ours-lookup-here: the lookup made in the site, not in a child')
    args = ap.parse_args()
    print(machine_header())
    variants = ('none', 'ours', 'ours-lookup-here') if args.lookup_here else ('none', 'ours')
    rounds: dict = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            rounds[variant].append(run(variant))
    for variant in variants:
        print(f'\n{variant} (medians of {args.rounds}, ms):')
        keys = list(dict.fromkeys(k for r in rounds[variant] for k in r))
        for key in keys:
            print(f'  {key:42s} {statistics.median(r.get(key, 0.0) for r in rounds[variant]):8.2f}')
    key = 'engine.start() to first answer'
    plain = statistics.median(r[key] for r in rounds['none'])
    ours = statistics.median(r[key] for r in rounds['ours'])
    imp = statistics.median(r['import cherrypy_dropprivs'] for r in rounds['ours'])
    sub = statistics.median(r['making the plugin (its lookup)']
                            for r in rounds['ours'])
    print(f'\nengine.start() to first answer: plain {plain:.2f} ms, ours {ours:.2f} ms, '
          f'difference {ours - plain:+.2f} ms; plus importing the package {imp:.2f} ms and '
          f'making the plugin {sub:.2f} ms, before engine.start()')
    if args.lookup_here:
        here = statistics.median(r[key] for r in rounds['ours-lookup-here'])
        sub_here = statistics.median(r['making the plugin (its lookup)']
                                     for r in rounds['ours-lookup-here'])
        print(f'with the lookup in the site (ours-lookup-here): engine.start() to first answer '
              f'{here:.2f} ms ({here - plain:+.2f}), making the plugin {sub_here:.2f} ms')
    print(load_footer())


if __name__ == '__main__':
    main()
