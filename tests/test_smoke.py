"""The one-line promise: as root, the site serves as nobody, on every thread."""

from conftest import needs_root


@needs_root
def test_uid_only_drop_is_complete_on_every_thread(site):
    proc = site()
    body = proc.get('/whoami').json()
    assert body['uids'] == [65534] * 4
    threads = proc.threads()
    assert len(threads) >= 5
    for t in threads:
        assert t.uids == (65534,) * 4, t
        assert t.gids == (65534,) * 4, t
        assert t.groups == (65534,), t
        assert t.cap_prm == t.cap_eff == t.cap_amb == 0, t
