"""The lab's Cyrus IMAP and Courier-IMAP servers (mailmirror.lab.cyrus, mailmirror.lab.courier).

Server facts pinned down here (the contract suite and the engine meet them):

* Cyrus 3.6: "/" mode has no namespace prefix, "." mode puts folders under ``INBOX.``; CREATE of
  ``a/b`` also creates ``a``, listed as a selectable folder; 8-bit bytes in headers are replaced on
  APPEND (``munge8bit``, Cyrus' default); SPECIAL-USE, CREATE-SPECIAL-USE, CONDSTORE, QRESYNC,
  LIST-STATUS, UIDPLUS.
* Courier-IMAP 5.0: separator ".", prefix ``INBOX.``; SELECT has no ``[UIDNEXT]`` (STATUS has it); RENAME
  gives the folder a new UIDVALIDITY; no SPECIAL-USE, CONDSTORE, QRESYNC or LIST-STATUS; APPEND answers
  ``[APPENDUID]``; LSUB lists the \\Noselect parents of subscribed folders.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imapclient.exceptions import LoginError

from mailmirror.lab.dovecot import LabCA, LabUser, SeedMessage, seed
from mailmirror.lab.servers import LAB_KINDS, lab_kind_missing, make_lab_server
from tests.conftest import LabServerOf
from tests.contract_corpus import header_8bit_message, message

KINDS = ("cyrus-slash", "cyrus-dot", "courier")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tls", ["none", "starttls", "implicit"])
def test_login_each_transport_and_namespace(lab_server: LabServerOf, kind: str, tls: str) -> None:
    server = lab_server(kind)
    assert server.start_seconds is not None
    user = server.add_user()
    client = server.connect(user, tls=tls)
    try:
        sock = client.socket()
        assert isinstance(sock, ssl.SSLSocket) == (tls != "none")
        personal = client.namespace().personal[0]
        assert (personal[0], personal[1]) == (LAB_KINDS[kind][2], LAB_KINDS[kind][1])
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    finally:
        client.logout()


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_password_and_unknown_user_are_refused(lab_server: LabServerOf, kind: str) -> None:
    server = lab_server(kind)
    user = server.add_user()
    for bad in (LabUser(user.username, user.password + "x"), LabUser("nobody", "secret")):
        with pytest.raises(LoginError):
            server.connect(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_mail_survives_a_restart_and_the_folder_layout(
    lab_server: LabServerOf, lab_dir: Path, lab_ca: LabCA, kind: str
) -> None:
    lab_server(kind)  # fails (or skips) like the other tests when the kind is missing
    server = make_lab_server(kind, lab_dir / f"restart-{kind}", f"restart-{kind}", ca=lab_ca)
    user = server.add_user()
    server.start()
    with server.connect(user) as client:
        seed(client, server.folder_name("Lists/python"), [SeedMessage(message("x", 1), ("\\Seen", "kw"))])
        names = {name for _flags, _sep, name in client.list_folders()}
        assert server.folder_name("Lists/python") in names
    server.restart()
    with server.connect(user) as client:
        client.select_folder(server.folder_name("Lists/python"), readonly=True)
        flags = next(iter(client.fetch(client.search(), ["FLAGS"]).values()))[b"FLAGS"]
        assert {b"\\Seen", b"kw"} <= set(flags)
    server.stop()
    assert not server.running


def test_cyrus_rewrites_8bit_header_bytes(lab_server: LabServerOf) -> None:
    server = lab_server("cyrus-slash")
    user = server.add_user()
    raw = header_8bit_message()
    with server.connect(user) as client:
        seed(client, "INBOX", [SeedMessage(raw)])
        client.select_folder("INBOX", readonly=True)
        stored = next(iter(client.fetch(client.search(), ["BODY.PEEK[]"]).values()))[b"BODY[]"]
    assert stored != raw and len(stored) == len(raw)  # munge8bit: each 8-bit byte replaced
    assert stored.split(b"\r\n\r\n", 1)[1] == raw.split(b"\r\n\r\n", 1)[1]  # the body is kept


def test_courier_facts(lab_server: LabServerOf) -> None:
    server = lab_server("courier")
    user = server.add_user()
    with server.connect(user) as client:
        capabilities = set(client.capabilities())
        assert b"UIDPLUS" in capabilities and not {b"SPECIAL-USE", b"CONDSTORE", b"LIST-STATUS"} & capabilities
        seed(client, "INBOX.Old", [SeedMessage(message("old", 1))])
        selected = client.select_folder("INBOX.Old")
        assert b"UIDNEXT" not in selected  # issue 14 defect 1 comes from this
        assert client.folder_status("INBOX.Old", ["UIDNEXT"])[b"UIDNEXT"] == 2
        before = client.folder_status("INBOX.Old", ["UIDVALIDITY"])[b"UIDVALIDITY"]
        client.close_folder()
        client.rename_folder("INBOX.Old", "INBOX.New")
        assert client.folder_status("INBOX.New", ["UIDVALIDITY"])[b"UIDVALIDITY"] != before


def test_courier_keeps_old_trash_at_login(lab_server: LabServerOf) -> None:
    """Debian's IMAP_EMPTYTRASH=Trash:7 would purge this at the next login; the lab turns it off."""
    server = lab_server("courier")
    user = server.add_user()
    old = datetime(2020, 1, 1, tzinfo=UTC)
    with server.connect(user) as client:
        seed(client, "INBOX.Trash", [SeedMessage(message("trash", 1), ("\\Seen",), old)])
    with server.connect(user) as client:
        assert client.folder_status("INBOX.Trash", ["MESSAGES"])[b"MESSAGES"] == 1


def test_missing_kind_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import mailmirror.lab.servers as lab_servers

    monkeypatch.setattr(lab_servers, "LAB_SERVERS_DIR", lab_servers.Path("/nonexistent/lab-servers"))
    reason = lab_kind_missing("courier")
    assert reason is not None and "scripts/bootstrap --test" in reason
    with pytest.raises(ValueError):
        lab_kind_missing("exchange")
