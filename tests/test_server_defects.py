"""Defects that other servers showed (issue 14), proved against the lab's Dovecot made to look like them.

tests/rewrite_proxy.py rewrites the traffic: SELECT without ``[UIDNEXT]`` (and STATUS without UIDNEXT) as
Courier-IMAP answers, 8-bit header bytes of APPENDed messages turned into ``X`` as Cyrus's munge8bit does.
The special-use and automap cases need no disguise: Dovecot itself leaves special-use attributes out of a
LIST-STATUS that does not ask for them.
"""

from __future__ import annotations

import sqlite3
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from imapclient import IMAPClient

from mailmirror.config import load_config
from mailmirror.imap import Session
from mailmirror.lab import DovecotServer, LabUser
from tests.rewrite_proxy import ServerMask
from tests.support import Setup, account_yaml, simple_message

pytestmark = pytest.mark.dovecot

DATA_ERROR = 65


def masked_account(name: str, port: int, user: LabUser, directory: Path) -> str:
    """An account entry reaching the server through a ServerMask on ``port`` (plain IMAP: it rewrites)."""
    secret = directory / f"{name}.password"
    secret.write_text(user.password + "\n", encoding="utf-8")
    return (
        f"  {name}:\n    host: 127.0.0.1\n    port: {port}\n    tls: none\n"
        f"    username: {user.username}\n    password: {{file: {secret}}}\n    timeout: 30s\n"
    )


def masked_setup(
    source: DovecotServer,
    source_user: LabUser,
    destination: DovecotServer,
    destination_user: LabUser,
    *,
    source_mask: ServerMask | None = None,
    destination_mask: ServerMask | None = None,
    pair_options: str = "",
) -> Setup:
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-test-"))

    def account(name: str, server: DovecotServer, user: LabUser, mask: ServerMask | None) -> str:
        if mask is None:
            return account_yaml(name, server, user, directory)
        return masked_account(name, mask.port, user, directory)

    text = (
        f"state: {{path: {directory / 'state.db'}}}\n"
        'metrics: {listen: "127.0.0.1:0"}\n'
        "accounts:\n"
        + account("src", source, source_user, source_mask)
        + account("dst", destination, destination_user, destination_mask)
        + "pairs:\n  test:\n    source: src\n    destination: dst\n"
        + "".join(f"    {line}\n" for line in textwrap.dedent(pair_options).splitlines() if line.strip())
    )
    config_path = directory / "mailmirror.yaml"
    config_path.write_text(text, encoding="utf-8")
    return Setup(directory, config_path)


def append(client: IMAPClient, folder: str, *indexes: int, tag: str = "") -> None:
    for index in indexes:
        client.append(folder, simple_message(index, tag=tag))


def stored_markers(setup: Setup) -> list[tuple[str, int | None, int | None]]:
    with sqlite3.connect(setup.directory / "state.db") as db:
        return db.execute("SELECT src_folder, src_uidnext, dst_uidnext FROM folders ORDER BY src_folder").fetchall()


# -- 1. SELECT without UIDNEXT (Courier) -------------------------------------------------------------------


@pytest.fixture
def masks(source_server: DovecotServer, dest_server: DovecotServer, request: pytest.FixtureRequest) -> Iterator[
    tuple[ServerMask, ServerMask]]:  # fmt: skip
    strip_status = bool(getattr(request, "param", False))
    with ExitStack() as stack:
        yield tuple(  # type: ignore[misc]
            stack.enter_context(ServerMask(server.port, strip_uidnext=True, strip_status_uidnext=strip_status))
            for server in (source_server, dest_server)
        )


@pytest.mark.parametrize("masks", [False, True], ids=["select-only", "select-and-status"], indirect=True)
def test_passes_with_new_mail_work_when_select_has_no_uidnext(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    src_user: LabUser,
    dst_user: LabUser,
    src_client: IMAPClient,
    dst_client: IMAPClient,
    masks: tuple[ServerMask, ServerMask],
) -> None:
    """Courier's SELECT has no [UIDNEXT]: a 0 was stored and the next pass sent `UID SEARCH UID 0:*` (NO,
    exit 75 forever). Both sides behind the mask, several passes with new mail, expunges and no change."""
    src_client.create_folder("Work")
    append(src_client, "INBOX", 1, 2, 3)
    append(src_client, "Work", 4)
    setup = masked_setup(
        source_server, src_user, dest_server, dst_user, source_mask=masks[0], destination_mask=masks[1],
        pair_options="deletions: {destination: mirror}",
    )  # fmt: skip
    first = setup.sync()
    assert first.error is None and first.complete and first.copied == 4
    assert all(src and dst for _folder, src, dst in stored_markers(setup)), stored_markers(setup)

    append(src_client, "INBOX", 5, 6)
    append(dst_client, "INBOX", 90)  # delivered to the destination by someone else meanwhile
    second = setup.sync()
    assert second.error is None and second.complete and second.copied == 2, second

    src_client.select_folder("INBOX")
    src_client.delete_messages(src_client.search(["SUBJECT", "message 1"]))
    src_client.expunge()
    append(src_client, "INBOX", 7)
    third = setup.sync()
    assert third.error is None and third.complete and third.copied == 1
    assert third.total("deleted") == 1

    fourth = setup.sync()
    assert fourth.error is None and fourth.copied == 0 and fourth.total("deleted") == 0
    assert all(src and dst for _folder, src, dst in stored_markers(setup)), stored_markers(setup)
    verdict = setup.verify()
    assert verdict.clean, verdict
    dst_client.select_folder("INBOX", readonly=True)
    assert len(dst_client.search()) == 6  # 2, 3, 5, 6, 7 and the one delivered there


def test_a_stored_uidnext_of_zero_is_never_sent(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    src_user: LabUser,
    dst_user: LabUser,
    src_client: IMAPClient,
    masks: tuple[ServerMask, ServerMask],
) -> None:
    """A state database written by an affected version holds dst_uidnext = 0 (and src_uidnext = 0): the
    next pass must treat them as unknown, not search from UID 0."""
    append(src_client, "INBOX", 1, 2)
    setup = masked_setup(source_server, src_user, dest_server, dst_user, destination_mask=masks[1])
    assert setup.sync().copied == 2
    with sqlite3.connect(setup.directory / "state.db") as db:
        db.execute("UPDATE folders SET dst_uidnext = 0, src_uidnext = 0")
    append(src_client, "INBOX", 3)
    report = setup.sync()
    assert report.error is None and report.complete and report.copied == 1
    assert setup.verify().clean


@pytest.mark.parametrize("masks", [False, True], ids=["status-has-it", "status-lacks-it"], indirect=True)
def test_select_learns_uidnext_the_server_does_not_give(
    source_server: DovecotServer, src_user: LabUser, src_client: IMAPClient, masks: tuple[ServerMask, ServerMask]
) -> None:
    append(src_client, "INBOX", 1, 2, 3)
    src_client.select_folder("INBOX")
    src_client.delete_messages(src_client.search(["SUBJECT", "message 3"]))
    src_client.expunge()  # the highest UID is gone: UIDNEXT is 4, the last UID 2
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-test-"))
    text = "accounts:\n" + masked_account("src", masks[0].port, src_user, directory)
    text += masked_account("dst", masks[0].port, src_user, directory)
    text += "pairs:\n  p: {source: src, destination: dst}\n"
    (directory / "c.yaml").write_text(text, encoding="utf-8")
    account = load_config(directory / "c.yaml").accounts["src"]
    strip_status = masks[0].options[1]
    with Session.open("src", account) as session:
        for _ in range(2):  # the first SELECT finds out, the next ones know
            status = session.select("INBOX", readonly=True)
            assert status.uidnext == (3 if strip_status else 4)  # STATUS exact; else the last UID + 1
        session.create_folder("Empty")
        assert session.select("Empty", readonly=True).uidnext == 1
        session.select("INBOX", readonly=True)
        assert session.uids_from(0) == [1, 2] and session.uids_between(0, 5) == [1, 2]
