"""Request throughput after the drop: cherrypy-dropprivs vs plain CherryPy.

Run as root (one command):

    sudo python benchmarks/throughput.py

Two hello-world sites (benchmarks/hello_site.py) run side by side on
127.0.0.1, both started as root on a free privileged port:

- ``ours``:  ``DropPrivileges(engine, 'nobody').subscribe()``, dropped to nobody;
- ``plain``: the same site without any plugin (it stays root: the reference
  for "what CherryPy costs").

The load generator is ``wrk`` (Debian: ``apt-get install -y wrk``); without it
a Python client (threads + http.client) is used instead. Two modes:
keep-alive, and a new connection per request (``Connection: close``). Runs
alternate between ours and plain for a fixed duration each, the order swapped
every round (ours, plain, plain, ours, ours, ...) so that neither always goes
first; each round gives one ratio from two adjacent runs. The script
prints every raw figure, the medians and the ratio ours/plain (target >= 0.98),
and the server's CPU time per request (from /proc/<pid>/stat), which other
load on the machine disturbs less than requests per second.

Last, a check that does not depend on timing at all: both sites are started
once more with ``--count-calls`` (a profile hook that counts every Python and
C function call in the server), and the functions one request runs are
compared, keep-alive and new connection. After the drop the plugin should add
nothing to that path: no cherrypy_dropprivs function, the same calls.
By default the servers share CPU 0 and the client runs on CPU 1 (``taskset``)
to cut noise on small machines; ``--no-pin`` turns that off.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402

HELLO = str(h.HERE / 'hello_site.py')
MODES = ('keep-alive', 'new-connection')
CLK_TCK = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_wrk(url: str, mode: str, duration: float, connections: int, pin: list) -> dict:
    argv = pin + ['wrk', '-t1', f'-c{connections}', f'-d{duration:g}s', '--timeout', '5s']
    if mode == 'new-connection':
        argv += ['-H', 'Connection: close']
    out = subprocess.run(argv + [url], capture_output=True, text=True,
                         timeout=duration + 30).stdout
    m = re.search(r'Requests/sec:\s+([\d.]+)', out)
    if not m:
        raise RuntimeError(f'unexpected wrk output:\n{out}')
    total = re.search(r'(\d+) requests in', out)
    errors = re.search(r'Socket errors: (.*)', out)
    non2xx = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    return {
        'rps': float(m.group(1)),
        'requests': int(total.group(1)) if total else None,
        'errors': (errors.group(1).strip() if errors else '') +
                  (f' non2xx {non2xx.group(1)}' if non2xx else ''),
    }


def run_python(url: str, mode: str, duration: float, connections: int, pin: list) -> dict:
    """Fallback client: ``connections`` threads, each one request at a time."""
    host, port, path = h._split(url)
    counts = [0] * connections
    errors = [0] * connections
    deadline = time.monotonic() + duration

    def worker(i: int) -> None:
        conn = None
        while time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=5)
                conn.request('GET', path, headers={'Connection': 'close'}
                             if mode == 'new-connection' else {})
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    counts[i] += 1
                else:
                    errors[i] += 1
                if mode == 'new-connection' or r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    elapsed = time.monotonic() - start
    return {'rps': sum(counts) / elapsed, 'requests': sum(counts),
            'errors': f'{sum(errors)} errors' if sum(errors) else ''}


def calls_per_request(port: int, mode: str, n: int) -> Dict[str, float]:
    """Function calls one request runs, from two /calls snapshots around ``n`` requests."""
    def snapshot() -> Counter:
        status, body = h.get(f'http://127.0.0.1:{port}/calls/', timeout=30)
        assert status == 200, status
        return Counter(json.loads(body))

    before = snapshot()
    if mode == 'keep-alive':
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
        try:
            for _ in range(n):
                conn.request('GET', '/')
                r = conn.getresponse()
                r.read()
        finally:
            conn.close()
    else:
        for _ in range(n):
            h.get(f'http://127.0.0.1:{port}/', timeout=30)
    after = snapshot()
    return {k: (after[k] - before[k]) / n for k in set(after) | set(before) if after[k] != before[k]}


def call_profile(n: int, server_pin: list) -> None:
    """The per-request code path of ours and plain, compared function by function."""
    print(f'\nper-request code path (hello_site.py --count-calls; {n} requests per mode, one '
          f'client connection; every Python and C function call counted in the server):')
    found = {}
    for name, plugin in (('ours', 'ours'), ('plain', 'none')):
        port = h.free_privileged_port()
        proc = h.start_site(server_pin + [h.PYTHON, HELLO, '--port', str(port), '--plugin', plugin,
                                          '--quiet', '--count-calls'])
        try:
            h.wait_http(f'http://127.0.0.1:{port}/', popen=proc, timeout=60)
            for mode in MODES:
                calls_per_request(port, mode, 20)  # warm-up
                found[name, mode] = calls_per_request(port, mode, n)
        finally:
            h.stop(proc)
    for mode in MODES:
        o, pl = found['ours', mode], found['plain', mode]
        ours_pkg = sorted(k for k in o if 'cherrypy_dropprivs' in k and o[k] >= 0.01)
        diff = sorted((k for k in set(o) | set(pl) if abs(o.get(k, 0) - pl.get(k, 0)) >= 0.5),
                      key=lambda k: -abs(o.get(k, 0) - pl.get(k, 0)))
        print(f'  {mode:15} calls per request: ours {sum(o.values()):.1f}, plain {sum(pl.values()):.1f}; '
              f'cherrypy_dropprivs functions per request: {len(ours_pkg)}; functions whose count '
              f'per request differs by >= 0.5: {len(diff)}')
        for k in ours_pkg[:10]:
            print(f'    in ours: {k} x{o[k]:.2f}')
        for k in diff[:10]:
            print(f'    differs: {k}: ours {o.get(k, 0):.2f}, plain {pl.get(k, 0):.2f}')


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--duration', type=float, default=5.0, help='seconds per run (default 5)')
    p.add_argument('--rounds', type=int, default=7, help='ours/plain pairs per mode (default 7)')
    p.add_argument('--connections', type=int, default=8)
    p.add_argument('--client', choices=['auto', 'wrk', 'python'], default='auto')
    p.add_argument('--no-pin', action='store_true', help='do not pin servers/client to CPUs')
    p.add_argument('--calls', type=int, default=300,
                   help='requests per mode for the per-request code path comparison (0: skip)')
    p.add_argument('--control', action='store_true',
                   help='A/A control: run plain CherryPy in both slots; the "ratio" then shows '
                        'what noise alone does on this machine')
    p.add_argument('--nice', type=int, default=0,
                   help='run servers and client at this nice value (e.g. -10 on a busy machine; '
                        'both sides alike)')
    args = p.parse_args()
    if os.geteuid() != 0:
        print('run as root: the plugin drops from root after binding a privileged port')
        return 2

    client = args.client
    if client == 'auto':
        client = 'wrk' if shutil.which('wrk') else 'python'
        if client == 'python':
            print('note: wrk not found (Debian: apt-get install -y wrk); using the Python client')
    run = run_wrk if client == 'wrk' else run_python
    can_pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which('taskset')
    server_pin = ['taskset', '-c', '0'] if can_pin else []
    client_pin = ['taskset', '-c', '1'] if can_pin and client == 'wrk' else []
    if can_pin and client == 'python':
        os.sched_setaffinity(0, {1})  # the Python client runs in this process
    if args.nice:
        server_pin = ['nice', '-n', str(args.nice)] + server_pin
        client_pin = ['nice', '-n', str(args.nice)] + client_pin
        if client == 'python':
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)

    print(h.machine_header())
    print(f'client:   {client} ({args.connections} connections, {args.duration:g} s per run, '
          f'{args.rounds} rounds per mode, alternating ours/plain, order swapped each round); '
          f'pinning: {"servers CPU 0, client CPU 1" if can_pin else "none"}; nice {args.nice}')

    ports = {'ours': h.free_privileged_port()}
    ports['plain'] = h.free_privileged_port()
    while ports['plain'] == ports['ours']:
        ports['plain'] = h.free_privileged_port()
    procs = {}
    try:
        for name, plugin in (('ours', 'none' if args.control else 'ours'), ('plain', 'none')):
            procs[name] = h.start_site(server_pin + [h.PYTHON, HELLO, '--port', str(ports[name]),
                                                     '--plugin', plugin, '--quiet'])
        for name, proc in procs.items():
            h.wait_http(f'http://127.0.0.1:{ports[name]}/', popen=proc)
        with open(f'/proc/{procs["ours"].pid}/status') as f:
            uid_line = next(line for line in f if line.startswith('Uid:'))
        print(f'ours:     pid {procs["ours"].pid} port {ports["ours"]} '
              + ('(CONTROL RUN: plain CherryPy here too, no plugin)' if args.control else
                 f'(after the drop: {" ".join(uid_line.split())})'))
        print(f'plain:    pid {procs["plain"].pid} port {ports["plain"]} (no plugin, root)')

        for name in procs:  # warm-up, not counted
            run(f'http://127.0.0.1:{ports[name]}/', 'keep-alive', 1, args.connections, client_pin)

        results = {mode: {'ours': [], 'plain': []} for mode in MODES}
        cpu_us = {mode: {'ours': [], 'plain': []} for mode in MODES}
        print('\nraw runs:')
        for mode in MODES:
            for i in range(args.rounds):
                # Swap the order every round, so neither always runs first.
                for name in (('ours', 'plain') if i % 2 == 0 else ('plain', 'ours')):
                    if procs[name].poll() is not None:
                        raise RuntimeError(f'{name} server exited: {procs[name].log_path}')
                    cpu0 = cpu_seconds(procs[name].pid)
                    r = run(f'http://127.0.0.1:{ports[name]}/', mode, args.duration,
                            args.connections, client_pin)
                    cpu = cpu_seconds(procs[name].pid) - cpu0
                    per = cpu / r['requests'] * 1e6 if r['requests'] else float('nan')
                    results[mode][name].append(r['rps'])
                    cpu_us[mode][name].append(per)
                    print(f'  {mode:15} round {i + 1} {name:5} {r["rps"]:9.1f} req/s '
                          f'{per:7.1f} server CPU us/req'
                          f'  ({r["requests"]} requests{"; " + r["errors"] if r["errors"] else ""})',
                          flush=True)

        print('\nsummary (median requests/s; ratio = ours / plain, target >= 0.98;'
              '\n"paired" = median of the per-round ratios, each from two adjacent runs):')
        print(f'  {"mode":15} {"ours":>9} {"plain":>9} {"ratio":>7} {"paired":>7}  per-round ratios')
        for mode in MODES:
            o, pl = results[mode]['ours'], results[mode]['plain']
            ratio = h.median(o) / h.median(pl)
            pairs = [a / b for a, b in zip(o, pl)]
            per = ' '.join(f'{r:.3f}' for r in pairs)
            print(f'  {mode:15} {h.median(o):9.1f} {h.median(pl):9.1f} {ratio:7.3f} '
                  f'{h.median(pairs):7.3f}  {per}  {"OK" if ratio >= 0.98 else "BELOW TARGET"}')
        print('\nserver CPU time per request (median us; less sensitive to other load on the machine;'
              '\nratio = plain / ours, so >= 0.98 means ours costs at most 2% more):')
        print(f'  {"mode":15} {"ours":>9} {"plain":>9} {"ratio":>7}')
        for mode in MODES:
            o, pl = h.median(cpu_us[mode]['ours']), h.median(cpu_us[mode]['plain'])
            print(f'  {mode:15} {o:9.1f} {pl:9.1f} {pl / o:7.3f}')
    finally:
        for proc in procs.values():
            h.stop(proc)
    if args.calls and not args.control:
        call_profile(args.calls, server_pin)
    print(h.load_footer())
    return 0


if __name__ == '__main__':
    sys.exit(main())
