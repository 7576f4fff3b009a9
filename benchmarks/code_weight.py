"""What the package's code weighs in memory, and how much of it a start runs.

Run as root from the repository root (one command):

    .venv/bin/python benchmarks/code_weight.py

Most of what importing the package adds to a site's memory is code objects
(``marshal.loads`` of the .pyc files). This starts the benchmarks' one-page
site shape in a fresh process on a free privileged port, drops to nobody,
answers five requests, and records (``sys.setprofile``) which of the
package's functions ran. Then, for each module the start loaded, it weighs
every code object reachable from the module (functions, methods, nested
functions: the object with its bytecode, line and exception tables, names
and string constants, an estimate by ``sys.getsizeof``) and splits it into
code that ran at this start and code that did not (error paths, other
cases). Code that runs at every start cannot be left unloaded: only less of
it weighs less. Not a test: numbers for benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402

CHILD = r'''
import json, os, sys, threading, types, urllib.request
ran = set()
def profile(frame, event, arg):
    if event == 'call' and 'cherrypy_dropprivs' in frame.f_code.co_filename:
        ran.add(frame.f_code)
sys.setprofile(profile)
threading.setprofile(profile)
import cherrypy
port = int(sys.argv[1])
cherrypy.config.update({'log.screen': False, 'engine.autoreload.on': False, 'checker.on': False,
                        'server.socket_host': '127.0.0.1', 'server.socket_port': port})
class Root:
    @cherrypy.expose
    def index(self):
        return 'hello'
cherrypy.tree.mount(Root(), '/')
import cherrypy_dropprivs
cherrypy_dropprivs.DropPrivileges(cherrypy.engine, uid='nobody').subscribe()
cherrypy.engine.start()
for _ in range(5):
    urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=5).read()
sys.setprofile(None)
threading.setprofile(None)

def weight(code):
    size = (sys.getsizeof(code) + sys.getsizeof(code.co_linetable)
            + sys.getsizeof(code.co_exceptiontable) + sys.getsizeof(code.co_names))
    for c in code.co_consts:
        if isinstance(c, (str, bytes, tuple)):
            size += sys.getsizeof(c)
    return size

def codes_of(obj, seen):
    found = []
    if isinstance(obj, types.FunctionType):
        stack = [obj.__code__]
    elif isinstance(obj, type):
        stack = []
        for v in vars(obj).values():
            v = getattr(v, '__func__', v)
            v = getattr(v, 'fget', v)
            if isinstance(v, types.FunctionType):
                stack.append(v.__code__)
    else:
        return found
    while stack:
        c = stack.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        found.append(c)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return found

out = {}
for name, mod in sorted(sys.modules.items()):
    if not (name == 'cherrypy_dropprivs' or name.startswith('cherrypy_dropprivs.')):
        continue
    seen = set()
    total = hot = count = count_hot = 0
    for value in list(vars(mod).values()):
        if getattr(value, '__module__', None) != name:
            continue
        for c in codes_of(value, seen):
            w = weight(c)
            total += w
            count += 1
            if c in ran:
                hot += w
                count_hot += 1
    out[name] = [total, hot, count, count_hot]
print('WEIGHT ' + json.dumps(out), flush=True)
os._exit(0)
'''


def main() -> int:
    if os.geteuid() != 0:
        print('run as root: the site binds a privileged port and drops to nobody')
        return 2
    print(h.machine_header())
    port = h.free_privileged_port()
    env = dict(os.environ, PYTHONPATH=str(h.REPO))
    done = subprocess.run([h.PYTHON, '-c', CHILD, str(port)], capture_output=True, text=True,
                          env=env, timeout=60, cwd='/')
    lines = [line for line in done.stdout.splitlines() if line.startswith('WEIGHT ')]
    if not lines:
        print(f'no figures (exit {done.returncode}):\n{done.stdout}\n{done.stderr}')
        return 1
    data = json.loads(lines[0][len('WEIGHT '):])
    print('\ncode objects of each module a plain root start loaded (KiB, estimate by sys.getsizeof)')
    print(f'  {"module":34} {"functions":>9} {"ran":>5} {"KiB":>7} {"ran KiB":>8} {"share":>6}')
    total = hot = 0
    for name, (t, r, n, nr) in data.items():
        total += t
        hot += r
        print(f'  {name:34} {n:9d} {nr:5d} {t / 1024:7.1f} {r / 1024:8.1f} {r / t if t else 0:6.0%}')
    print(f'  {"all":34} {"":9} {"":5} {total / 1024:7.1f} {hot / 1024:8.1f} {hot / total:6.0%}')
    print(h.load_footer())
    return 0


if __name__ == '__main__':
    sys.exit(main())
