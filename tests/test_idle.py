"""IDLE through the IMAP layer, against a real Dovecot: `Session.wait_for_changes` reports news, ends when
asked, and raises mailmirror's own errors (the daemon's IDLE watchers never touch imapclient)."""

from __future__ import annotations

import threading

import pytest

from mailmirror.config.config_file import load_config
from mailmirror.errors import ConnectionFailure
from mailmirror.imap.session import Session
from mailmirror.lab.dovecot import SeedMessage, seed
from tests.support import Mirror, simple_message

pytestmark = pytest.mark.dovecot

LONG = 600.0  # never reached: each wait below ends on news, on a set stop signal, or on an error


def open_source(mirror: Mirror) -> Session:
    return Session.open("src", load_config(mirror.setup().config_path).accounts["src"])


def test_idle_reports_a_message_that_arrived_before_it_began(mirror: Mirror) -> None:
    with open_source(mirror) as session:
        assert session.has("IDLE")
        session.select("INBOX", readonly=True)
        seed(mirror.src, "INBOX", [SeedMessage(simple_message(1))])
        assert session.wait_for_changes(threading.Event(), LONG)
        session.select("INBOX", readonly=True)  # the connection is usable after IDLE


def test_idle_reports_a_message_that_arrives_while_idling(mirror: Mirror) -> None:
    with open_source(mirror) as session:
        session.select("INBOX", readonly=True)
        arrival = threading.Timer(0.5, seed, (mirror.src, "INBOX", [SeedMessage(simple_message(2))]))
        arrival.start()
        try:
            assert session.wait_for_changes(threading.Event(), LONG)
        finally:
            arrival.join()
        assert session.status("INBOX").messages == 1


def test_idle_ends_without_news_when_asked_to_stop(mirror: Mirror) -> None:
    stopping = threading.Event()
    stopping.set()
    with open_source(mirror) as session:
        session.select("INBOX", readonly=True)
        assert not session.wait_for_changes(stopping, LONG)
        assert session.status("INBOX").messages == 0  # and the session goes on


def test_idle_on_a_lost_connection_is_a_connection_failure_naming_the_account(mirror: Mirror) -> None:
    with open_source(mirror) as session:
        session.select("INBOX", readonly=True)
        session.client.shutdown()
        with pytest.raises(ConnectionFailure, match="account 'src'") as raised:
            session.wait_for_changes(threading.Event(), LONG)
        assert raised.value.account == "src"
