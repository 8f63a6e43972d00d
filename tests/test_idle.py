"""IDLE through the IMAP layer, against a real Dovecot: `Session.wait_for_changes` reports news, ends when
asked, and raises mailmirror's own errors (the daemon's IDLE watchers never touch imapclient)."""

from __future__ import annotations

import threading

import pytest
from imapclient import IMAPClient

from mailmirror.config.config_file import load_config
from mailmirror.errors import ConnectionFailure
from mailmirror.imap.session import Session
from mailmirror.lab.dovecot import DovecotServer, LabUser, SeedMessage, seed
from tests.support import make_setup, simple_message

pytestmark = pytest.mark.dovecot

LONG = 600.0  # never reached: each wait below ends on news, on a set stop signal, or on an error


def open_source(source: DovecotServer, source_user: LabUser, destination: DovecotServer, user: LabUser) -> Session:
    setup = make_setup(source, source_user, destination, user)
    return Session.open("src", load_config(setup.config_path).accounts["src"])


def test_idle_reports_a_message_that_arrived(
    source_server: DovecotServer,
    src_user: LabUser,
    dest_server: DovecotServer,
    dst_user: LabUser,
    src_client: IMAPClient,
) -> None:
    with open_source(source_server, src_user, dest_server, dst_user) as session:
        assert session.has("IDLE")
        session.select("INBOX", readonly=True)
        seed(src_client, "INBOX", [SeedMessage(simple_message(1))])
        assert session.wait_for_changes(threading.Event(), LONG)
        session.select("INBOX", readonly=True)  # the connection is usable after IDLE


def test_idle_ends_without_news_when_asked_to_stop(
    source_server: DovecotServer, src_user: LabUser, dest_server: DovecotServer, dst_user: LabUser
) -> None:
    stopping = threading.Event()
    stopping.set()
    with open_source(source_server, src_user, dest_server, dst_user) as session:
        session.select("INBOX", readonly=True)
        assert not session.wait_for_changes(stopping, LONG)
        assert session.status("INBOX").messages == 0  # and the session goes on


def test_idle_on_a_lost_connection_is_a_connection_failure_naming_the_account(
    source_server: DovecotServer, src_user: LabUser, dest_server: DovecotServer, dst_user: LabUser
) -> None:
    with open_source(source_server, src_user, dest_server, dst_user) as session:
        session.select("INBOX", readonly=True)
        session.client.shutdown()
        with pytest.raises(ConnectionFailure, match="account 'src'") as raised:
            session.wait_for_changes(threading.Event(), LONG)
        assert raised.value.account == "src"
