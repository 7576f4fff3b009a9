#!/usr/bin/env python3
"""Run CherryPy's own test suite as nobody without and with the plugin; compare per test.

Why: cherrypy-dropprivs hooks CherryPy's bus and servers. With
``DropPrivileges(cherrypy.engine, uid=None)`` subscribed (keep the current
user: nothing to drop), CherryPy must behave exactly as without it, so every
test of CherryPy's suite must end the same way in both runs.

Runs (in this order): baseline 1, with the plugin, baselines 2..N. A test
whose outcome differs between the baseline runs is flaky on its own: it is
listed and left out of the comparison. Exit 0 when no other test's outcome
differs, 1 when some does (they are printed), 2 when the harness itself could
not produce a usable baseline or a run hit its timeout.

Needs root (to run the suite as nobody) and only python3, pip and
util-linux: it builds its own venv (outside the repo, see ``--venv``) with
``cherrypy[testing]`` and this repo installed editable.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOBODY = 65534
NOT_RUN = 'not run'


def default_venv() -> str:
    """Outside the repo (so neither git nor ruff sees it), one per clone."""
    tag = hashlib.sha1(str(REPO).encode()).hexdigest()[:8]
    return os.environ.get('CPTEST_VENV') or f'/var/tmp/cherrypy-dropprivs-cptest-{tag}'


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--baseline-runs', type=int, default=2,
                   help='baseline runs; tests whose outcome differs among them are flaky (default 2)')
    p.add_argument('--known-flaky', action='append', default=[], metavar='TEST_ID',
                   help='also leave this test id out of the comparison (repeatable)')
    p.add_argument('--timeout', type=float, default=600, help='seconds per run (default 600)')
    p.add_argument('--venv', default=default_venv(), help='venv for the suite (default %(default)s)')
    p.add_argument('--cherrypy', default='cherrypy[testing]', help='pip requirement for CherryPy')
    p.add_argument('--workdir', help='keep runs here (default: a new directory under /tmp)')
    p.add_argument('--table', action='store_true', help='also print every test id with its outcomes')
    p.add_argument('pytest_args', nargs='*', help='extra pytest arguments (after --), e.g. -k states')
    args = p.parse_args(argv)
    if args.baseline_runs < 1:
        p.error('--baseline-runs must be at least 1')
    return args


def log(msg: str) -> None:
    print(f'cptest: {msg}', flush=True)


# -- the environment ------------------------------------------------------


def ensure_venv(venv: Path, cherrypy_req: str) -> Path:
    """Create the venv if missing; install CherryPy's test extras and this repo (editable)."""
    python = venv / 'bin' / 'python'
    if not python.exists():
        log(f'creating {venv}')
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    pip = subprocess.run([str(python), '-m', 'pip', 'install', '-q', cherrypy_req, '-e', str(REPO)],
                         capture_output=True, text=True)
    if pip.returncode:  # its output only then: this machine's pip config warns on every package
        sys.stdout.write(pip.stdout + pip.stderr)
        raise SystemExit(f'cptest: pip install failed (exit {pip.returncode})')
    return python


def ask(python: Path, code: str, *args: str) -> str:
    return subprocess.run([str(python), '-c', code, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def nobody_prefix(python: Path, *paths: str) -> List[str]:
    """The tests' own ``nobody_can_run`` (tests/conftest.py), evaluated by the venv's python.

    It gives the argv prefix (a private mount namespace) under which nobody
    can execute that interpreter and read the repo, without changing host
    modes; [] when nothing is in the way. It must run under the venv's python
    because it looks at ``sys.executable`` and ``sys.prefix``.
    """
    code = ('import json, sys; sys.path.insert(0, sys.argv[1]); from conftest import nobody_can_run; '
            'print(json.dumps(nobody_can_run(*sys.argv[2:])))')
    return json.loads(ask(python, code, str(REPO / 'tests'), *paths))


def chown_tree(top: Path, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(top):
        os.chown(root, uid, gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


# -- one run ---------------------------------------------------------------


class Run:
    """One pytest run of CherryPy's suite as nobody, in a directory nobody owns."""

    def __init__(self, name: str, workdir: Path, with_plugin: bool):
        self.name = name
        self.dir = workdir / name
        self.with_plugin = with_plugin
        self.outcomes_file = self.dir / 'outcomes.jsonl'
        self.log_file = self.dir / 'pytest.log'
        self.subscriptions_file = self.dir / 'subscriptions.txt'
        self.seconds = 0.0
        self.returncode: Optional[int] = None
        self.timed_out = False
        self.leftovers: List[int] = []

    def prepare(self, cherrypy_src: Path) -> None:
        """A writable copy of the cherrypy package: its tests write logs, sessions and
        pid files next to themselves, and fail on PermissionError in a root-owned tree."""
        (self.dir / 'src').mkdir(parents=True)
        shutil.copytree(cherrypy_src, self.dir / 'src' / 'cherrypy',
                        ignore=shutil.ignore_patterns('__pycache__'))
        (self.dir / 'home').mkdir()
        (self.dir / 'pytest.ini').write_text('[pytest]\n')  # rootdir here, no repo config
        for f in (self.outcomes_file, self.subscriptions_file):
            f.touch()
        chown_tree(self.dir, NOBODY, NOBODY)

    def argv(self, prefix: List[str], python: Path, pytest_args: List[str]) -> List[str]:
        argv = [*prefix, 'setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups', '--',
                str(python), '-m', 'pytest', '--pyargs', 'cherrypy.test',
                '-c', str(self.dir / 'pytest.ini'), '--rootdir', str(self.dir),
                '-p', 'outcome_log', '-p', 'no:cacheprovider', '-p', 'no:sugar', '-rfE']
        if self.with_plugin:
            argv += ['-p', 'dropprivs_everywhere']
        return argv + list(pytest_args)

    def env(self, token: str) -> Dict[str, str]:
        path = [str(self.dir / 'src'), str(HERE)]
        if self.with_plugin:
            path.append(str(HERE / 'site'))  # sitecustomize: reaches CherryPy's subprocess servers
        env = {
            'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
            'HOME': str(self.dir / 'home'),
            'LANG': 'C.UTF-8',
            'PYTHONPATH': os.pathsep.join(path),
            'PYTHONUNBUFFERED': '1',
            'CPTEST_OUTCOMES': str(self.outcomes_file),
            'CPTEST_RUN_TOKEN': token,  # every process of the run inherits it: see sweep()
        }
        if self.with_plugin:
            env['DROPPRIVS_EVERYWHERE'] = '1'
            env['CPTEST_SUBSCRIPTIONS'] = str(self.subscriptions_file)
        return env

    def execute(self, argv: List[str], timeout: float) -> None:
        token = uuid.uuid4().hex
        started = time.monotonic()
        with open(self.log_file, 'wb') as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env(token), cwd=str(self.dir), start_new_session=True)
            try:
                self.returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.timed_out = True
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    _killpg(proc.pid, sig)
                    try:
                        self.returncode = proc.wait(timeout=10)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        self.seconds = time.monotonic() - started
        self.leftovers = sweep(token)

    def finished(self) -> bool:
        return any(e['event'] == 'finish' for e in read_events(self.outcomes_file))

    def describe_end(self) -> str:
        if self.timed_out:
            return f'TIMED OUT, killed (exit {self.returncode})'
        end = '' if self.finished() else ', pytest never finished (killed or exited)'
        return f'exit {self.returncode}{end}'

    def last_started(self) -> Optional[str]:
        starts = [e['nodeid'] for e in read_events(self.outcomes_file) if e['event'] == 'start']
        return starts[-1] if starts else None

    def dropprivs_failures(self, limit: int = 10) -> List[str]:
        """The plugin's own failure lines from the CherryPy logs the suite wrote into its copy
        (in-process and subprocess servers log there, not to pytest's output)."""
        lines: List[str] = []
        for path in sorted((self.dir / 'src').rglob('*.log')):
            for line in path.read_text(errors='replace').splitlines():
                if 'dropprivs' in line and ('FAILED' in line or 'exiting with status' in line):
                    text = f'{path.name}: {line.strip()}'
                    if text not in lines:
                        lines.append(text)
        return lines[:limit]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def sweep(token: str) -> List[int]:
    """Kill, by pid, any process still carrying this run's token (e.g. a server a killed
    pytest left behind, or a daemonized one in its own session); return their pids."""
    needle = f'CPTEST_RUN_TOKEN={token}'.encode()
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f'/proc/{entry}/environ', 'rb') as f:
                if needle in f.read().split(b'\0'):
                    found.append(int(entry))
        except OSError:
            continue
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found


# -- outcomes ----------------------------------------------------------------


def read_events(path: Path) -> List[dict]:
    events = []
    for line in path.read_text(encoding='utf-8', errors='replace').splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            continue
    return events


def outcome_of(phases: Dict[str, dict]) -> str:
    """One word for a test from its setup/call/teardown reports, as pytest counts them,
    plus what a killed run leaves: 'killed ...' when a phase never reported."""
    if 'collect' in phases:
        return 'error (collection)'
    setup, call, teardown = phases.get('setup'), phases.get('call'), phases.get('teardown')
    if setup is None:
        return 'killed in setup'
    if setup['outcome'] == 'failed':
        word = 'error'
    elif setup['outcome'] == 'skipped':
        word = 'xfailed' if setup.get('wasxfail') else 'skipped'
    elif call is None:
        return 'killed in call'
    elif call['outcome'] == 'passed':
        word = 'xpassed' if call.get('wasxfail') else 'passed'
    elif call['outcome'] == 'skipped':
        word = 'xfailed' if call.get('wasxfail') else 'skipped'
    else:
        word = 'failed'
    if teardown is None:
        return word + ', killed in teardown'
    if teardown['outcome'] == 'failed':
        return word + ' + teardown error'
    return word


def outcomes(path: Path) -> Dict[str, dict]:
    """nodeid -> {'outcome': ..., 'message': ...}; collected tests that never started are 'not run'."""
    phases: Dict[str, Dict[str, dict]] = collections.defaultdict(dict)
    collected: List[str] = []
    for e in read_events(path):
        if e['event'] == 'collected':
            collected = e['nodeids']
        elif e['event'] == 'start':
            phases.setdefault(e['nodeid'], {})  # started, maybe without any report
        elif e['event'] == 'report':
            phases[e['nodeid']][e['when']] = e
    result = {nodeid: {'outcome': NOT_RUN, 'message': ''} for nodeid in collected}
    for nodeid, by_when in phases.items():
        messages = [f'{w}: {r["message"]}' for w, r in by_when.items() if r.get('message')]
        result[nodeid] = {'outcome': outcome_of(by_when), 'message': '; '.join(messages)}
    return result


def summary(results: Dict[str, dict]) -> str:
    counts = collections.Counter(r['outcome'] for r in results.values())
    return ', '.join(f'{n} {word}' for word, n in counts.most_common()) or 'no test recorded'


def compare(baselines: List[Dict[str, dict]], plugin: Dict[str, dict], known_flaky: List[str]):
    """(flaky, differing): flaky = {id: [baseline outcomes]}; differing = {id: (baseline, plugin)}."""
    ids = sorted(set(plugin).union(*baselines))
    flaky, differing = {}, {}
    for nodeid in ids:
        seen = [b.get(nodeid, {'outcome': NOT_RUN})['outcome'] for b in baselines]
        if len(set(seen)) > 1:
            flaky[nodeid] = seen
            continue
        if nodeid in known_flaky:
            continue
        after = plugin.get(nodeid, {'outcome': NOT_RUN})['outcome']
        if after != seen[0]:
            differing[nodeid] = (seen[0], after)
    return flaky, differing


def write_table(path: Path, names: List[str], results: List[Dict[str, dict]]) -> None:
    ids = sorted(set().union(*results))
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\t'.join(['test id', *names]) + '\n')
        for nodeid in ids:
            f.write('\t'.join([nodeid, *(r.get(nodeid, {'outcome': NOT_RUN})['outcome'] for r in results)])
                    + '\n')


# -- main ----------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log('needs root: it runs the suite as nobody (setpriv) in a private mount namespace')
        return 2
    python = ensure_venv(Path(args.venv), args.cherrypy)
    versions = ask(python, 'import cherrypy, cheroot, pytest; '
                           'print(cherrypy.__version__, cheroot.__version__, pytest.__version__)')
    log('CherryPy {} cheroot {} pytest {} in {}'.format(*versions.split(), args.venv))
    cherrypy_src = Path(ask(python, 'import cherrypy, os; print(os.path.dirname(cherrypy.__file__))'))
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix='cptest-'))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # nobody must reach the runs' directories
    prefix = nobody_prefix(python, str(workdir))
    log(f'runs in {workdir}' + (' (nobody reaches the interpreter through a private mount namespace)'
                                if prefix else ''))

    runs = [Run('baseline1', workdir, False), Run('plugin', workdir, True)]
    runs += [Run(f'baseline{i}', workdir, False) for i in range(2, args.baseline_runs + 1)]
    for run in runs:
        run.prepare(cherrypy_src)
        argv = run.argv(prefix, python, args.pytest_args)
        log(f'{run.name}: ' + ' '.join(argv[len(prefix):]))
        run.execute(argv, args.timeout)
        results = outcomes(run.outcomes_file)
        log(f'{run.name}: {run.seconds:.0f} s, {run.describe_end()}: {summary(results)}')
        if not run.finished():
            log(f'{run.name}: the test running when pytest ended: {run.last_started()}')
        for line in run.dropprivs_failures():
            log(f'{run.name}: CherryPy log: {line[:400]}')
        if run.leftovers:
            log(f'{run.name}: killed processes left running: {run.leftovers}')
        if run.with_plugin:
            pids = [line.split()[0] for line in run.subscriptions_file.read_text().splitlines()]
            main_pid = next((str(e['pid']) for e in read_events(run.outcomes_file)
                             if e['event'] == 'configure'), None)
            log(f'{run.name}: plugin subscribed {len(pids)} times, in {len(set(pids))} processes '
                f'({len(set(pids) - {main_pid})} started by the suite; the same pid again '
                f'is a re-exec by engine.restart())')

    base_runs = [r for r in runs if not r.with_plugin]
    plugin_run = next(r for r in runs if r.with_plugin)
    baselines = [outcomes(r.outcomes_file) for r in base_runs]
    plugin = outcomes(plugin_run.outcomes_file)
    table = workdir / 'outcomes.tsv'
    write_table(table, [r.name for r in base_runs] + [plugin_run.name], baselines + [plugin])
    log(f'per-test outcomes of every run: {table} (logs: {workdir}/*/pytest.log)')
    if args.table:
        print(table.read_text(), end='')

    if not any(baselines) or not any(r['outcome'] == 'passed' for r in baselines[0].values()):
        log('no usable baseline: the suite did not run as nobody; see baseline1/pytest.log')
        return 2
    if not plugin_run.subscriptions_file.read_text().strip():
        log('the plugin was never subscribed in the plugin run; see plugin/pytest.log')
        return 2

    flaky, differing = compare(baselines, plugin, args.known_flaky)
    log(f'{len(flaky)} flaky on their own (left out):')
    for nodeid, seen in flaky.items():
        print(f'  FLAKY {nodeid}: {" / ".join(seen)}')
    cut = [r.name for r in runs if r.timed_out]
    if not differing:
        log(f'no test changes outcome with the plugin ({len(plugin)} tests compared)')
        if cut:  # the tests after the cut were compared as 'not run' = 'not run': not good enough
            log(f'but {", ".join(cut)} hit the {args.timeout:.0f} s timeout: part of the suite never ran')
            return 2
        return 0
    log(f'{len(differing)} tests change outcome with the plugin subscribed:')
    for nodeid, (before, after) in differing.items():
        print(f'  DIFF {nodeid}: {before} -> {after}')
        message = plugin.get(nodeid, {}).get('message')
        if message:
            print(f'       {message[:400]}')
    return 1


if __name__ == '__main__':
    sys.exit(main())
