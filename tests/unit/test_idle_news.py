"""What counts as news for an IDLE watcher: an EXISTS count other than the last seen, EXPUNGE, FETCH; not
an unchanged EXISTS some servers repeat on every NOOP (a watcher would otherwise push in a loop)."""

from __future__ import annotations

from mailmirror.imap.session import Session


def test_only_a_changed_exists_count_expunge_or_fetch_is_news() -> None:
    session = Session.__new__(Session)  # no connection: only the bookkeeping of untagged responses
    session.selected, session._exists_seen = "INBOX", None
    assert session._news([(3, b"EXISTS")])  # unknown before: news (one extra pass at most)
    assert not session._news([(3, b"EXISTS"), (0, b"RECENT")])
    assert session._news([(4, b"EXISTS")])
    assert session._news([(2, b"EXPUNGE")])
    assert session._news([(4, b"FETCH", (b"FLAGS", (b"\\Seen",)))])
    assert not session._news([(4, b"EXISTS")])
    session.selected = "Archive"  # another folder: its count is new
    assert session._news([(4, b"EXISTS")])
