"""The window between bind and drop, and startup time, measured from outside.

Run as root (one command):

    sudo python benchmarks/window.py

Part 1, the window. The hello-world site (benchmarks/hello_site.py) with two
servers on free privileged ports of 127.0.0.1 is started as root, alternating
``ours`` (cherrypy-dropprivs), ``builtin`` (CherryPy's own DropPrivileges) and
``none`` (plain CherryPy). Nothing inside the server is instrumented; this
process watches it from outside:

- *bound*: when each port first shows up in LISTEN state in /proc/net/tcp;
  "last bound" is the later of the two;
- *dropped*: when /proc/<pid>/status first shows no uid 0 (real, effective,
  saved, filesystem);
- *first 200*: one client per port connects as soon as the port listens and
  sends a request; the earliest 200 across the ports. With this package that
  request waits in the backlog until the drop has been verified and the gate
  opens, so "last bound -> first 200" bounds "last bound -> dropped and
  verified" from above.

Part 2, startup. Process start (just before ``Popen``) to the first 200 seen
by a client polling every 2 ms, ``ours`` vs ``none``, alternating.

All figures are in milliseconds; the script prints each run, then medians.
The watcher polls every 0.2 ms, so each time has roughly that resolution
(plus Python scheduling jitter).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402

HELLO = str(h.HERE / 'hello_site.py')
VARIANTS = ('ours', 'builtin', 'none')


def _listening(hex_ports: Dict[str, int]) -> List[int]:
    """Ports (of those wanted) in LISTEN state on 127.0.0.1 in /proc/net/tcp.

    The kernel lists listening sockets first, so reading stops at the first
    other state: a machine with thousands of TIME_WAIT entries would
    otherwise make each read take tens of milliseconds.
    """
    found = []
    with open('/proc/net/tcp') as f:
        next(f)
        for line in f:
            parts = line.split(None, 4)
            local, state = parts[1], parts[3]
            if state != '0A':
                break
            if local in hex_ports:
                found.append(hex_ports[local])
    return found


def _uid_dropped(pid: int) -> Optional[bool]:
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('Uid:'):
                    return all(int(x) != 0 for x in line.split()[1:])
    except OSError:
        return None
    return None


def _first_answer(port: int, deadline: float, out: dict) -> None:
    """Connect as soon as the port listens, send one request, note the 200."""
    while time.monotonic() < deadline:
        s = socket.socket()
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            s.connect(('127.0.0.1', port))
        except OSError:
            s.close()
            time.sleep(0.0005)
            continue
        try:
            s.sendall(b'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
            data = s.recv(64)
            if data.startswith(b'HTTP/1.1 200'):
                out[port] = time.monotonic()
                return
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.0005)


def window_run(variant: str, nservers: int, timeout: float) -> dict:
    ports: List[int] = []
    while len(ports) < nservers:
        p = h.free_privileged_port()
        if p not in ports:
            ports.append(p)
    hex_ports = {f'0100007F:{p:04X}': p for p in ports}
    argv = [h.PYTHON, HELLO, '--plugin', variant, '--quiet']
    for p in ports:
        argv += ['--port', str(p)]
    answers: Dict[int, float] = {}
    bound: Dict[int, float] = {}
    dropped: Optional[float] = None
    t0 = time.monotonic()
    deadline = t0 + timeout
    proc = h.start_site(argv)
    clients = [threading.Thread(target=_first_answer, args=(p, deadline, answers)) for p in ports]
    try:
        for c in clients:
            c.start()
        while time.monotonic() < deadline:
            now = time.monotonic()
            for p in _listening(hex_ports):
                bound.setdefault(p, now)
            if dropped is None and _uid_dropped(proc.pid):
                dropped = now
            if answers and len(bound) == len(ports) and (dropped or variant == 'none'):
                break
            if proc.poll() is not None:
                raise RuntimeError(f'{variant} exited with {proc.returncode}: {proc.log_path}')
            time.sleep(0.0002)
        for c in clients:
            c.join(max(0.1, deadline - time.monotonic()))
    finally:
        h.stop(proc)
        for c in clients:
            c.join(1)
    if len(bound) < len(ports) or not answers:
        raise RuntimeError(f'{variant}: incomplete run (bound {bound}, answers {answers}); '
                           f'log {proc.log_path}')
    last_bound = max(bound.values())
    first_200 = min(answers.values())
    ms = 1000.0
    return {
        'bound_spread': (last_bound - min(bound.values())) * ms,
        'to_dropped': None if dropped is None else (dropped - last_bound) * ms,
        'to_first_200': (first_200 - last_bound) * ms,
        'before_drop': None if dropped is None else (first_200 - dropped) * ms,
    }


def startup_run(variant: str, timeout: float) -> float:
    port = h.free_privileged_port()
    t0 = time.monotonic()
    proc = h.start_site([h.PYTHON, HELLO, '--plugin', variant, '--quiet', '--port', str(port)])
    try:
        t = h.wait_http(f'http://127.0.0.1:{port}/', timeout=timeout, popen=proc, interval=0.002)
    finally:
        h.stop(proc)
    return (t - t0) * 1000.0


def fmt(v: Optional[float]) -> str:
    return '     n/a' if v is None else f'{v:8.1f}'


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rounds', type=int, default=10, help='runs per variant (default 10)')
    p.add_argument('--servers', type=int, default=2, help='servers per site (default 2)')
    p.add_argument('--timeout', type=float, default=20.0, help='bound on each run, seconds')
    args = p.parse_args()
    if os.geteuid() != 0:
        print('run as root: the window is between binding a privileged port and dropping root')
        return 2
    print(h.machine_header())
    print(f'site:     benchmarks/hello_site.py, {args.servers} servers on privileged ports, '
          f'{args.rounds} runs per variant, alternating {" / ".join(VARIANTS)}')

    print('\npart 1: the window (ms, measured from outside the process)')
    print(f'  {"variant":8} {"run":>3} {"bind spread":>11} {"last bound->uid!=0":>19} '
          f'{"last bound->first 200":>22} {"first 200-uid!=0":>17}')
    res: Dict[str, List[dict]] = {v: [] for v in VARIANTS}
    for i in range(args.rounds):
        for v in VARIANTS:
            r = window_run(v, args.servers, args.timeout)
            res[v].append(r)
            print(f'  {v:8} {i + 1:3} {fmt(r["bound_spread"]):>11} {fmt(r["to_dropped"]):>19} '
                  f'{fmt(r["to_first_200"]):>22} {fmt(r["before_drop"]):>17}', flush=True)

    print('\n  medians (ms):')
    print(f'  {"variant":8} {"last bound->uid!=0":>19} {"last bound->first 200":>22} '
          f'{"max of that":>12} {"first 200-uid!=0":>17}')
    for v in VARIANTS:
        d = [r['to_dropped'] for r in res[v] if r['to_dropped'] is not None]
        f = [r['to_first_200'] for r in res[v]]
        b = [r['before_drop'] for r in res[v] if r['before_drop'] is not None]
        print(f'  {v:8} {fmt(h.median(d) if d else None):>19} {fmt(h.median(f)):>22} '
              f'{fmt(max(f)):>12} {fmt(h.median(b) if b else None):>17}')
    print('  negative "last bound->first 200": answered before the last server had bound;\n'
          '  negative "first 200-uid!=0": answered (as root) that long before the uid changed.\n'
          '  ours holds requests until the drop is verified, so its first 200 comes after the drop.')

    print('\npart 2: startup, process start -> first 200 (ms), client polling every 2 ms')
    st: Dict[str, List[float]] = {'ours': [], 'none': []}
    for i in range(args.rounds):
        for v in ('ours', 'none'):
            st[v].append(startup_run(v, args.timeout))
        print(f'  run {i + 1:2}  ours {st["ours"][-1]:7.1f}  none {st["none"][-1]:7.1f}', flush=True)
    mo, mn = h.median(st['ours']), h.median(st['none'])
    print(f'  median   ours {mo:7.1f}  none {mn:7.1f}  difference {mo - mn:+.1f} ms  '
          f'ratio {mo / mn:.3f}')

    print('\npart 3: the pieces of that difference (ms, medians of --rounds runs)')
    imp: Dict[str, List[float]] = {'cherrypy': [], 'cherrypy+dropprivs': []}
    for _ in range(args.rounds):
        for name, code in (('cherrypy', 'import cherrypy'),
                           ('cherrypy+dropprivs', 'import cherrypy, cherrypy_dropprivs')):
            t = time.monotonic()
            subprocess.run([h.PYTHON, '-c', code], check=True, timeout=args.timeout,
                           env=dict(os.environ, PYTHONPATH=str(h.REPO)))
            imp[name].append((time.monotonic() - t) * 1000.0)
    a, b = h.median(imp['cherrypy']), h.median(imp['cherrypy+dropprivs'])
    print(f'  interpreter + import: cherrypy {a:.1f}, cherrypy + cherrypy_dropprivs {b:.1f} '
          f'(import cost {b - a:+.1f})')
    calls = []
    for _ in range(args.rounds):
        out = subprocess.run([h.PYTHON, '-c', DROP_CALL], check=True, timeout=args.timeout,
                             capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(h.REPO))).stdout
        calls.append(float(out.split()[-1]))
    print(f'  drop_privileges(\'nobody\') call (resolve, set ids, verify), fresh process, one '
          f'thread: {h.median(calls):.2f} (min {min(calls):.2f}, max {max(calls):.2f})')
    print('  the rest of any startup difference is the hold itself: the first request waits until\n'
          '  every server has started and the drop (priority 77) is verified, where plain CherryPy\n'
          '  answers as soon as its first server listens.')
    print(h.load_footer())
    return 0


#: Times the plain-function drop in a fresh process (run as root, ends as nobody).
DROP_CALL = (
    'import time, cherrypy_dropprivs as d\n'
    't = time.perf_counter(); d.drop_privileges("nobody"); '
    'print((time.perf_counter() - t) * 1000.0)'
)


if __name__ == '__main__':
    try:
        sys.exit(main())
    except subprocess.TimeoutExpired as e:
        print(f'timed out: {e}')
        sys.exit(1)
