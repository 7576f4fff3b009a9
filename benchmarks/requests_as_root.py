"""How many requests a site answers as root while it starts: ours vs CherryPy's built-in plugin.

Run as root (one command; about 30 s with the defaults):

    sudo python benchmarks/requests_as_root.py --startups 4

For each plugin (``ours``: cherrypy-dropprivs; ``builtin``: CherryPy 18's
``cherrypy.process.plugins.DropPrivileges``), both given
``uid=65534, gid=65534`` as keywords, and for one and for two servers on free
privileged ports of 127.0.0.1, tests/sites/site.py is started ``--startups``
times. For every startup, ``--per-port`` client threads per port poll from
before the process exists until every port has answered from a non-root thread,
and then ``--tail`` seconds more: each poll is a new connection with one
HTTP/1.0 GET, alternating the mounted app (``/whoami``) and the grafted WSGI
app (``/wsgi/whoami``), both of which answer with the credentials of the
thread that served the request (/proc/thread-self/status). The pollers are
tests/window_poller.py, the same ones tests/test_request_window.py uses.

Columns, summed over the startups:

- *answered*: complete HTTP responses;
- *by dropped*: answered by a thread with no uid, gid or group 0;
- *by root*: answered by a thread with euid 0 (the issue's measure);
  *any id 0* also counts a thread with any uid, gid or group 0;
- *root/startup*: the smallest and largest *by root* of one startup;
- *window*: connections the kernel accepted while the server process was
  still root (its euid, read from /proc right after connect, was 0).

With ``ours`` the window connections wait in the listen backlog and are
answered after the drop (by dropped); with ``builtin`` they are answered by
root. *answered* depends on the tail; *by root* does not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / 'tests'))
import _harness as h  # noqa: E402
from window_poller import Startup, WindowPoller, run_startup  # noqa: E402

OPTIONS = json.dumps({'uid': 65534, 'gid': 65534})


class _Started:
    def __init__(self, popen):
        self.popen = popen
        self.pid = popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


def distinct_ports(n: int) -> List[int]:
    ports: List[int] = []
    while len(ports) < n:
        p = h.free_privileged_port()
        if p not in ports:
            ports.append(p)
    return ports


def one_startup(plugin: str, servers: int, per_port: int, tail: float) -> Startup:
    ports = distinct_ports(servers)
    argv = [h.PYTHON, str(h.SITE), '--plugin', plugin, '--options', OPTIONS]
    for p in ports:
        argv += ['--port', str(p)]
    poller = WindowPoller(ports, per_port=per_port)
    started: List[_Started] = []

    def start():
        started.append(_Started(h.start_site(argv)))
        return started[-1]

    try:
        startup, proc = run_startup(start, poller, tail=tail, timeout=15)
        if not proc.alive():
            raise RuntimeError(f'{plugin} site exited with {proc.popen.returncode}; '
                               f'log: {proc.popen.log_path}')
        if not poller.answered_on_every_port_after_drop():
            raise RuntimeError(f'{plugin} site never came up; log: {proc.popen.log_path}')
        return startup
    finally:
        for s in started:
            h.stop(s.popen)


def euid0(startup: Startup) -> int:
    return sum(1 for a in startup.answered if a.body and a.body['uids'][1] == 0)


def measure(plugin: str, servers: int, startups: int, per_port: int, tail: float) -> Dict:
    runs = []
    for _ in range(startups):
        runs.append(one_startup(plugin, servers, per_port, tail))
        time.sleep(0.1)
    per_root = [euid0(s) for s in runs]
    return {
        'plugin': plugin, 'servers': servers, 'startups': startups,
        'answered': sum(len(s.answered) for s in runs),
        'dropped': sum(len(s.by_dropped) for s in runs),
        'root': sum(per_root),
        'any0': sum(len(s.by_root) for s in runs),
        'min': min(per_root), 'max': max(per_root),
        'window': sum(len(s.window) for s in runs),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--startups', type=int, default=4, help='startups per plugin and server count')
    p.add_argument('--servers', default='1,2', help='server counts to run, e.g. "1,2"')
    p.add_argument('--plugins', default='ours,builtin', help='"ours,builtin"')
    p.add_argument('--per-port', type=int, default=4, help='polling threads per port')
    p.add_argument('--tail', type=float, default=0.3, help='seconds to keep polling once up')
    args = p.parse_args()
    if os.geteuid() != 0:
        print('run as root: the point is what a site started as root serves before it drops',
              file=sys.stderr)
        return 2
    counts = [int(n) for n in args.servers.split(',')]
    plugins = args.plugins.split(',')

    print(h.machine_header())
    print(f'command:  {" ".join([os.path.basename(sys.executable), *sys.argv])}')
    print(f'options:  {OPTIONS} for both plugins; {args.per_port} pollers per port; '
          f'tail {args.tail}s\n')
    rows = []
    for servers in counts:
        for plugin in plugins:  # interleaved, so both see the same machine state
            rows.append(measure(plugin, servers, args.startups, args.per_port, args.tail))
            r = rows[-1]
            print(f'  ran {plugin} x{servers} server(s): {r["root"]} answered by root', flush=True)

    head = (f'{"plugin":<8} {"servers":>7} {"startups":>8} {"answered":>8} {"by dropped":>10} '
            f'{"by root":>7} {"any id 0":>8} {"root/startup":>12} {"window":>6}')
    print('\n' + head + '\n' + '-' * len(head))
    for r in rows:
        print(f'{r["plugin"]:<8} {r["servers"]:>7} {r["startups"]:>8} {r["answered"]:>8} '
              f'{r["dropped"]:>10} {r["root"]:>7} {r["any0"]:>8} '
              f'{str(r["min"]) + "-" + str(r["max"]):>12} {r["window"]:>6}')
    print()
    for servers in counts:
        by = {r['plugin']: r for r in rows if r['servers'] == servers}
        if 'ours' in by and 'builtin' in by:
            ours, builtin = by['ours']['root'], by['builtin']['root']
            ratio = f'{ours / builtin:.3f}' if builtin else 'n/a (builtin answered none as root)'
            print(f'{servers} server(s): answered by root: ours {ours}, builtin {builtin}; '
                  f'ratio ours/builtin = {ratio}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
