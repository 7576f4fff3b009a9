"""``python -m cherrypy_dropprivs check``: a dry run of the drop, like ``nginx -t``.

Reads CherryPy config files with CherryPy's own reader (values are Python
literals), takes ``engine.dropprivs.*`` from their ``[global]`` sections,
lets the command line override them, resolves the target identity, prints
the plan, and runs the same stat-based checks the plugin runs at start (see
files' findings). Nothing is changed, nothing is opened for writing, and no
root is needed: as another user it reports what a start as root would do.
Exit status: 0 all sound, 1 problems found, 2 bad input (every malformed file
or value, said in one line).
"""

from __future__ import annotations

import argparse
import configparser
import io
import os
import stat
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import files
from .drop import login_environment, target_of
from .errors import OPTION_NAMES, ConfigError
from .files import UnsafePath, hand_over, hand_over_or_raise
from .identity import Plan, check_chown, format_ids, make_plan

EXIT_OK, EXIT_PROBLEMS, EXIT_BAD_INPUT = 0, 1, 2


#: engine.dropprivs.* keys the check understands (the plugin's options).
PLAN_KEYS = ('uid', 'gid', 'groups', 'umask', 'require_root', 'no_new_privs')


#: CherryPy's environments that switch the Autoreloader off.
QUIET_ENVIRONMENTS = ('production', 'embedded', 'test_suite')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m cherrypy_dropprivs check',
        description='Dry run: print the drop plan and check what the dropped '
                    'process could not do with the files the config names.')
    p.add_argument('configs', nargs='*', metavar='CONFIG', help='CherryPy config files')
    p.add_argument('--uid', help='target user (name or number); overrides engine.dropprivs.uid')
    p.add_argument('--gid', help='target primary group; overrides engine.dropprivs.gid')
    p.add_argument('--groups', nargs='*', metavar='GROUP',
                   help='exact supplementary groups (none given: no supplementary groups)')
    p.add_argument('--umask', help="e.g. 027 or 0o027; overrides engine.dropprivs.umask")
    p.add_argument('--pidfile', action='append', default=[], metavar='PATH',
                   help='a PID file the site writes (CherryPy PIDFile / cherryd -p)')
    p.add_argument('--chown', action='append', default=[], metavar='PATH',
                   help='one more path to hand to the target (like the chown option)')
    p.add_argument('--confine', action='store_true',
                   help='print the Landlock rules as if engine.dropprivs.confine were True')
    return p


def read_configs(paths: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Merge the files' sections (later files win), with CherryPy's reader."""
    from cherrypy.lib import reprconf

    merged: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        text = _read_config_text(path)
        try:
            sections = reprconf.Parser().dict_from_file(io.StringIO(text))
        except configparser.MissingSectionHeaderError:
            raise ValueError(f'{path}: no section header before the first setting; a CherryPy '
                             f'config file starts with a section such as [global]') from None
        except configparser.DuplicateSectionError as e:
            raise ValueError(f'{path}: section [{e.section}] appears more than once') from None
        except Exception as e:  # CherryPy's reader: values must be Python literals
            raise ValueError(f'{path}: {_reader_error(e)}') from None
        if not isinstance(sections, dict):
            raise ValueError(f'{path}: not a CherryPy config file')
        for section, values in sections.items():
            merged.setdefault(section, {}).update(values)
    return merged


def _read_config_text(path: str) -> str:
    """A config file's text, read without following what a non-root user planted.

    CherryPy evaluates config values as Python: reading a file runs its code.
    As root, the file is opened through the safe walk (files.open_existing:
    every directory root's, no symlink another user owns, a regular file with
    one link), and refused otherwise. Without root, anything but a regular
    file (a FIFO would block) is refused.
    """
    if os.geteuid() == 0:
        try:
            with files.open_existing(path) as opened:
                fd = os.dup(opened.fd)
        except UnsafePath as e:
            raise ValueError(f'{path}: refusing to read it as root: {e.reason}. CherryPy runs '
                             f'the Python in a config file: keep it, and every directory above '
                             f'it, owned by root and not writable by others') from None
    else:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f'{path}: not a regular file')
    with os.fdopen(fd, encoding='utf-8', errors='replace') as f:
        return f.read(MAX_CONFIG_BYTES + 1)[:MAX_CONFIG_BYTES]


#: A config file is read up to this size.
MAX_CONFIG_BYTES = 1 << 20


def _reader_error(e: Exception) -> str:
    """CherryPy's reader wraps a bad value as ValueError(message, kind, args)."""
    if isinstance(e, ValueError) and len(e.args) == 3 and isinstance(e.args[0], str):
        return f'{e.args[0]} ({e.args[1]}: {"; ".join(map(str, e.args[2]))})'
    return f'{type(e).__name__}: {e}'


def _options(conf: Dict[str, Dict[str, Any]], args: argparse.Namespace) -> Dict[str, Any]:
    glob = conf.get('global', {})
    prefix = 'engine.dropprivs.'
    opts = {k[len(prefix):]: v for k, v in glob.items() if k.startswith(prefix)}
    for name in opts:
        if name != 'on' and name not in OPTION_NAMES:
            raise ConfigError(name)
    for name in ('uid', 'gid', 'umask'):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    if args.groups is not None:
        opts['groups'] = list(args.groups)
    if args.confine and opts.get('confine', False) is False:
        opts['confine'] = True
    return opts


def _plan(opts: Dict[str, Any]) -> Plan:
    kwargs: Dict[str, Any] = {'uid': 'nobody', 'umask': 0o077}
    kwargs.update({k: v for k, v in opts.items() if k in PLAN_KEYS})
    if opts.get('confine', False) is not False:
        kwargs['no_new_privs'] = True  # confine implies it
    return make_plan(**kwargs)


def _flag(opts: Dict[str, Any], name: str, default: bool) -> bool:
    value = opts.get(name, default)
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be True or False; got {value!r}')
    return value


def _sections(conf) -> List[Tuple[str, Dict[str, Any]]]:
    return list(conf.items())


def _log_files(conf) -> List[str]:
    out = []
    for _, values in _sections(conf):
        for key in ('log.error_file', 'log.access_file'):
            if values.get(key):
                out.append(os.path.abspath(values[key]))
    return list(dict.fromkeys(out))


def _session_paths(conf) -> List[str]:
    out = [os.path.abspath(v['tools.sessions.storage_path'])
           for _, v in _sections(conf) if v.get('tools.sessions.storage_path')]
    return list(dict.fromkeys(out))


def _tls_files(conf) -> List[Tuple[str, str]]:
    glob = conf.get('global', {})
    names = (('certificate', 'server.ssl_certificate'), ('private key', 'server.ssl_private_key'),
             ('certificate chain', 'server.ssl_certificate_chain'))
    return [(what, glob[key]) for what, key in names if glob.get(key)]  # as configured


def _autoreload_on(conf) -> bool:
    glob = conf.get('global', {})
    if 'engine.autoreload.on' in glob:
        return bool(glob['engine.autoreload.on'])
    return glob.get('environment') not in QUIET_ENVIRONMENTS


def _watched_files(conf, config_paths: Sequence[str]) -> List[str]:
    """What an Autoreloader would watch: this interpreter's modules (the standard
    library, cherrypy) as a proxy for the site's, its config files, engine.autoreload.files."""
    import cherrypy

    files = {f[:-1] if f.endswith('.pyc') else f for f in cherrypy.engine.autoreload.sysfiles()}
    files.update(os.path.abspath(p) for p in config_paths)
    files.update(os.path.abspath(p) for p in conf.get('global', {}).get('engine.autoreload.files', ()))
    return sorted(files)


def problems_for(conf, config_paths, plan: Plan, chown_logs: bool, chown: Sequence[str],
                 pidfiles: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(notes, problems) for a start as root with ``plan``; changes nothing."""
    who = target_of(plan)
    user = who.user or str(who.uid)
    notes: List[str] = []
    problems: List[str] = []
    handed = set()
    for path in chown:
        if not os.path.lexists(path):
            problems.append(str(files.make('chown', files.CHOWN_MISSING, path, user=user)))
            continue
        try:  # the same walk the start does (files), changing nothing
            hand_over_or_raise(path, who, directory_ok=True, dry_run=True)
        except UnsafePath as e:
            problems.append(str(files.chown_unsafe(path, e.reason, who)))
        except OSError as e:
            reason = f'{e.filename or path}: {e.strerror}'
            problems.append(str(files.make('chown', files.CHOWN_REFUSED, path, user=user, reason=reason)))
        else:
            handed.add(path)
            notes.append(f'would hand {path} to {user}')
    for path in _log_files(conf):
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            problems.append(f'log file {path}: directory {parent} does not exist; CherryPy '
                            f'cannot open the log at start. Fix: create it')
            continue
        unsafe = files.problem(path)  # a start as root would refuse it (exit 77)
        if unsafe:
            problems.append(str(files.log_unsafe(path, unsafe, who)))
            continue
        if chown_logs:
            refusal = hand_over(path, who, dry_run=True) if os.path.lexists(path) else None
            if refusal is None:
                notes.append(f'would hand log file {path} to {user} (created by root first '
                             f'if missing)')
                continue
            problems.append(str(files.make('log', files.LOG_NOT_HANDED_OVER, path, user=user,
                                           reason=refusal)))
        found = files.check_log_file(path, who)
        if found:
            problems.append(str(found))
    for path in _session_paths(conf):
        if path in handed:
            continue
        found = files.check_session_path(path, who)
        if found:
            problems.append(str(found))
    if _autoreload_on(conf):
        found = files.check_watched_files(_watched_files(conf, config_paths), who)
        if found:
            problems.append(str(found))
    for which, path in _tls_files(conf):
        unsafe = files.read_problem(path)  # a start as root would refuse it (exit 77)
        if unsafe:
            problems.append(files.TLS_UNSAFE.format(which=which, path=path, reason=unsafe,
                                                    server='cherrypy.server'))
            continue
        found = files.check_tls_file(which, os.path.abspath(path), who)
        if found:
            problems.append(str(found))
    for path in pidfiles:
        path = os.path.abspath(path)
        unsafe = files.problem(path)  # a start as root would refuse to write it (exit 77)
        if unsafe:
            problems.append(str(files.pidfile_unsafe(path, unsafe)))
            continue
        found = files.check_pidfile(path, who)
        notes.append(f'PID file {path} would be written by root, mode 0644'
                     + (f'; {user} cannot remove it at exit, so it stays behind after a stop '
                        f'(remove it after the stop, e.g. ExecStopPost=-/bin/rm -f {path})'
                        if found else ''))
    return notes, problems


def _describe_plan(plan: Plan, opts: Dict[str, Any], chown_logs: bool) -> List[str]:
    me_uid, me_gid = os.geteuid(), os.getegid()
    now = format_ids(me_uid, me_gid, os.getgroups())
    lines = []
    if me_uid == 0:
        lines.append(f'from: {now} (this process, root: the drop would run)')
    else:
        lines.append(f'from: uid=0(root) when started as root; this process is {now}, and '
                     f'started like this the plugin would change no identity ('
                     + ('it would refuse to start: require_root' if plan.require_root
                        else 'a WARNING only; require_root=True makes that an error') + ')')
    t = target_of(plan)
    lines.append(f'to:   {t.describe()}')
    lines.append(f'groups: {", ".join(str(g) for g in t.groups) or "(none)"}'
                 f'{" (given)" if "groups" in opts else " (from the group database)"}')
    lines.append(f'umask: {"unchanged" if plan.umask is None else format(plan.umask, "04o")}')
    env = login_environment(t)
    lines.append('environment: ' + ' '.join(f'{k}={v}' for k, v in env.items()))
    lines.append(f'no_new_privs: {"on" if plan.no_new_privs else "off"}; '
                 f'chown_logs: {"on" if chown_logs else "off"}; '
                 f'require_root: {"on" if plan.require_root else "off"}')
    return lines


def confine_report(conf, opts: Dict[str, Any], chown: Sequence[str],
                   config_paths: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """(lines, problems): the rules ``confine`` would apply, from these files.

    The interpreter's paths are this interpreter's: run the check with the
    site's own Python to see the site's. A log file that does not exist yet
    is no problem here: the start creates it as root when the config is
    applied, before the rules are built (a missing directory is reported by
    problems_for).
    """
    from . import confine, landlock

    mode = confine.check_confine('confine', opts.get('confine', True))
    rules, problems = confine.gather(
        sections=[v for _, v in _sections(conf)], log_files=_log_files(conf),
        created_at_start=_log_files(conf), config_files=config_paths,
        session_paths=_session_paths(conf),
        tls_files=[os.path.abspath(p) for _, p in _tls_files(conf)],
        chown=chown,
        read=confine.check_paths('confine_read', opts.get('confine_read'), must_exist=False),
        write=confine.check_paths('confine_write', opts.get('confine_write'), must_exist=False),
        connect=confine.check_ports('confine_connect', opts.get('confine_connect')),
        application=False)
    abi, why = landlock.abi_version()
    lines = [f'confine: {mode!r}; this kernel: '
             + (f'Landlock ABI {abi}' if abi else why)
             + '; the rules (interpreter paths are those of the Python running this check; '
               'the directory of the script that starts the site is added at start):']
    lines += [f'  {line}' for line in confine.describe(rules, abi)]
    missing = confine.not_enforced(abi, why)
    if missing:
        (problems if mode == 'require' else lines).append(f'confine: {missing}')
    return lines, problems


def run(argv: Optional[Sequence[str]] = None, out=None) -> int:
    out = sys.stdout if out is None else out
    args = build_parser().parse_args(argv)

    def say(line: str = '') -> None:
        print(line, file=out)

    try:
        conf = read_configs(args.configs)
        opts = _options(conf, args)
        plan = _plan(opts)
        chown_logs = _flag(opts, 'chown_logs', True)
        chown = check_chown(check_chown(opts.get('chown')) + list(args.chown))
    except Exception as e:  # every bad file or value is bad input, said in one line
        say(f'error: {e}')
        return EXIT_BAD_INPUT
    if plan.target is None:
        say('error: uid is None: the process would keep its user; nothing to check '
            '(name a user with --uid or engine.dropprivs.uid)')
        return EXIT_BAD_INPUT
    say(f'cherrypy-dropprivs check: {", ".join(args.configs) or "(no config files)"}')
    if args.configs and not conf.get('global', {}).get('engine.dropprivs.on'):
        say('note: engine.dropprivs.on is not True in these files (fine if the plugin is '
            'subscribed in code)')
    for line in _describe_plan(plan, opts, chown_logs):
        say(line)
    notes, problems = problems_for(conf, args.configs, plan, chown_logs, chown, args.pidfile)
    if args.confine or opts.get('confine', False) is not False:
        try:
            lines, confine_problems = confine_report(conf, opts, chown, args.configs)
        except (ValueError, TypeError) as e:
            say(f'error: {e}')
            return EXIT_BAD_INPUT
        for line in lines:
            say(line)
        problems += confine_problems
    for note in notes:
        say(f'ok: {note}')
    for problem in problems:
        say(f'PROBLEM: {problem}')
    if problems:
        say(f'{len(problems)} problem(s) found (access computed from owner/group/mode bits '
            f'only; ACLs are not considered)')
        return EXIT_PROBLEMS
    say('all sound (access computed from owner/group/mode bits only; ACLs are not considered)')
    return EXIT_OK


USAGE = ('usage: python -m cherrypy_dropprivs check [CONFIG ...] [--uid U] [--gid G] '
         '[--groups ...] [--umask M] [--pidfile PATH] [--chown PATH] [--confine]')


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (['-h'], ['--help']):
        print('python -m cherrypy_dropprivs: one command, check, a dry run of the drop (like '
              'nginx -t).\nExit status of check: 0 all sound, 1 problems found, 2 bad input.\n')
        print(build_parser().format_help(), end='')
        return 0
    if not argv or argv[0] != 'check':
        print(USAGE, file=sys.stderr)
        print('(python -m cherrypy_dropprivs --help for the options)', file=sys.stderr)
        return 2
    try:
        return run(argv[1:])
    except BrokenPipeError:  # e.g. piped into head: not an error of the check
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == '__main__':
    sys.exit(main())
