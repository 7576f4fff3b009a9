"""Render the identity dict from kernel_identity as one self-contained HTML page."""

from __future__ import annotations

from html import escape
from typing import Any, Dict, Iterable, List, Optional

BANNERS = {
    'dropped': ('ok', 'Root dropped'),
    'not-root': ('warn', 'Not started as root'),
    'root': ('bad', 'STILL ROOT'),
}

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:62em;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em}
.banner{padding:.8em 1em;border-radius:6px;margin:1em 0}
.ok{background:#e3f5e1;border:1px solid #7bc47f} .warn{background:#fff6d6;border:1px solid #e0c050}
.bad{background:#fde2e2;border:1px solid #e06060}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:.3em .6em;vertical-align:top}
tr:nth-child(even){background:#f5f5f7} th{font-weight:600;white-space:nowrap}
code{font:13px ui-monospace,monospace} .zero{color:#2a7a2a} .set{color:#b02020}
small{color:#666}
"""


def _id(num: int, name: Optional[str]) -> str:
    return f'{num}({escape(name)})' if name else str(num)


def _row(label: str, value: str) -> str:
    return f'<tr><th>{escape(label)}</th><td>{value}</td></tr>'


def _ids(four: Dict[str, int], lookup: Dict[int, Optional[str]]) -> str:
    return ' '.join(f'{k}=<code>{_id(v, lookup.get(v))}</code>' for k, v in four.items())


def _cap(entry: Dict[str, Any], long: bool = False) -> str:
    hexval, names = escape(entry['hex']), entry['names']
    if not names:
        return f'<code class="zero">{hexval}</code> (none)'
    listed = escape(', '.join(names))
    if long:
        summary = f'<summary>{len(names)} capabilities</summary>'
        return f'<code>{hexval}</code> <details>{summary}{listed}</details>'
    return f'<code class="set">{hexval}</code> {listed}'


def _banner(d: Dict[str, Any]) -> str:
    css, title = BANNERS[d['status']]
    if d['status'] == 'dropped':
        text = (f'Started as root, now running as <code>{_id(d["uid"]["effective"], d["user"])}</code> '
                f'on all {d["threads"]["count"]} threads; no capabilities held.')
    else:
        text = escape(d['why_not_dropped'] or '')
    return f'<div class="banner {css}"><strong>{title}.</strong> {text}</div>'


def _same(ids: List[int]) -> str:
    """``65534 x4`` when real, effective, saved and fs agree."""
    return f'{ids[0]} &times;4' if len(set(ids)) == 1 else ' '.join(map(str, ids))


def _threads(summary: Dict[str, Any], names: Dict[int, Optional[str]]) -> str:
    agree = ('all threads have identical credentials' if summary['all_identical']
             else f'{len(summary["kinds"])} different credential sets')
    rows: List[str] = []
    for k in summary['kinds']:
        who = ', '.join(escape(t['name']) for t in k['threads'])
        groups = ','.join(_id(g, names.get(g)) for g in k['groups']) or '(none)'
        caps = [f'{c}={k[c]}' for c in ('CapPrm', 'CapEff', 'CapAmb') if int(k[c], 16)]
        rows.append(
            f'<tr><td>{k["count"]}</td><td><small>{who}</small></td>'
            f'<td><code>{_same(k["uid"])}</code></td><td><code>{_same(k["gid"])}</code></td>'
            f'<td><code>{groups}</code></td>'
            f'<td><code>{" ".join(caps) if caps else "none"}</code></td>'
            f'<td>{"yes" if k["no_new_privs"] else "no"}</td></tr>'
        )
    head = ('<tr><th>#</th><th>threads</th><th>Uid (r e s fs)</th><th>Gid (r e s fs)</th>'
            '<th>Groups</th><th>CapPrm/Eff/Amb</th><th>NoNewPrivs</th></tr>')
    return (f'<h2>Every thread ({summary["count"]}): {agree}</h2>'
            f'<p><small>From <code>/proc/self/task/*/status</code>; set*id calls apply to all '
            f'threads, capabilities and no_new_privs to one thread each.</small></p>'
            f'<table>{head}{"".join(rows)}</table>')


def _confinement(c: Dict[str, Any]) -> str:
    if c['confined']:
        head = (f'<div class="banner ok"><strong>Confined.</strong> Landlock (ABI {c["landlock_abi"]}) '
                f'denies this thread everything outside the rules '
                f'(<code>python -m cherrypy_dropprivs check --confine</code> prints them).</div>')
    elif c['requested']:
        head = ('<div class="banner bad"><strong>NOT confined</strong> although confine was asked '
                'for: see the log for the WARNING.</div>')
    else:
        head = ('<div class="banner warn"><strong>Not confined.</strong> Start the demo with '
                '<code>--confine</code> to restrict it with Landlock.</div>')
    rows = ''.join(_row(what, f'<code>{escape(result)}</code>') for what, result in c['probes'].items())
    return (f'<h2>Confinement</h2>{head}<p><small>Tried just now, from the thread serving this '
            f'request:</small></p><table>{rows}</table>')


def render(d: Dict[str, Any]) -> str:
    """The whole page: a verdict, the serving thread's identity, every thread."""
    names = {g['id']: g['name'] for g in d['groups']}
    users = {d['uid']['effective']: d['user']}
    gids = {d['gid']['effective']: d['group']}
    caps = d['capabilities']
    env = d['environment']
    rows: Iterable[str] = [
        _row('uids', _ids(d['uid'], users)),
        _row('gids', _ids(d['gid'], gids)),
        _row('groups', ' '.join(f'<code>{_id(g["id"], g["name"])}</code>' for g in d['groups']) or '(none)'),
        _row('CapPrm', _cap(caps['CapPrm'])),
        _row('CapEff', _cap(caps['CapEff'])),
        _row('CapAmb', _cap(caps['CapAmb'])),
        _row('CapBnd', _cap(caps['CapBnd'], long=True)),
        _row('umask', f'<code>{escape(d["umask"])}</code>'),
        _row('no_new_privs', 'yes' if d['no_new_privs'] else 'no'),
        _row('dumpable', f'{d["dumpable"]} <small>(core dumps {"on" if d["dumpable"] else "off"})</small>'),
    ] + [_row(k, '(unset)' if v is None else f'<code>{escape(v)}</code>') for k, v in env.items()]
    start = d['started_as']
    plugin = d['plugin']
    facts = [
        _row('started as', f'<code>{_id(start["uid"][1], start["user"])}</code>'),
        _row('listening on', f'<code>http://{escape(d["listening"]["host"])}:{d["listening"]["port"]}/</code>'),
        _row('plugin activated by', escape(plugin['activated_by'])),
        _row('plugin target', f'<code>{escape(plugin["target"] or "(keep the current user)")}</code>'),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<title>cherrypy-dropprivs demo: pid {d["pid"]}</title><style>{STYLE}</style></head><body>'
        f'<h1>Who is this process? <small>pid {d["pid"]}</small></h1>{_banner(d)}'
        f'<h2>This request was served by thread {d["served_by_thread"]}</h2>'
        f'<p><small>From <code>/proc/thread-self/status</code>: the kernel\'s view, not the '
        f'plugin\'s report.</small></p><table>{"".join(rows)}</table>'
        f'{_confinement(d["confinement"])}'
        f'{_threads(d["threads"], names)}'
        f'<h2>Start-up</h2><table>{"".join(facts)}</table>'
        '<p>The same data as JSON: <a href="identity.json">/identity.json</a></p>'
        '</body></html>'
    )
