"""A login costs as few round trips as the server allows (they add up on a WAN link: two logins per pass).

Against Dovecot, whose greeting announces its capabilities and which offers SASL-IR: nothing is asked
before STARTTLS, CAPABILITY is asked once over TLS (what was said before TLS is not trusted past it), and
SASL PLAIN goes with its initial response in one command.
"""

from __future__ import annotations

import pytest

from mailmirror.config.config_file import load_config
from mailmirror.imap.session import Session
from tests.support import Mirror

pytestmark = pytest.mark.dovecot


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_a_login_sends_only_the_commands_it_needs(mirror: Mirror, tls: str) -> None:
    account = load_config(mirror.setup(source_tls=tls).config_path).accounts["src"]
    with Session.open("src", account) as session:
        sent = session.client._imap.tagnum  # commands sent so far, counted by imaplib
        assert session.mechanism == "PLAIN"
        assert session.has("IMAP4REV1") and session.status("INBOX").messages == 0
    # STARTTLS, CAPABILITY (over TLS), AUTHENTICATE PLAIN <initial response>, NAMESPACE;
    # with implicit TLS the greeting's capabilities are trusted: AUTHENTICATE, NAMESPACE
    assert sent == (4 if tls == "starttls" else 2)
