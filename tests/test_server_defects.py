"""Defects that other servers showed (issue 14), proved against the lab's Dovecot made to look like them.

tests/rewrite_proxy.py rewrites the traffic: SELECT without ``[UIDNEXT]`` (and STATUS without UIDNEXT) as
Courier-IMAP answers, 8-bit header bytes of APPENDed messages turned into ``X`` as Cyrus's munge8bit does.
The special-use and automap cases need no disguise: Dovecot itself leaves special-use attributes out of a
LIST-STATUS that does not ask for them.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imapclient import IMAPClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mailmirror.config.config_file import load_config
from mailmirror.engine.identity import loose_identity
from mailmirror.engine.outcome import FolderReport, PairReport
from mailmirror.engine.verify import FolderVerdict, compare_folder
from mailmirror.imap.session import Session
from mailmirror.imap.types import MessageDigest
from mailmirror.lab.dovecot import DovecotServer, LabUser
from mailmirror.service.metrics import Metrics
from tests.conftest import MakeServer
from tests.rewrite_proxy import ServerMask, munge_header_8bit
from tests.support import Mirror, Setup, account_yaml, simple_message, write_pair_setup

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

    source_account = account("src", source, source_user, source_mask)
    destination_account = account("dst", destination, destination_user, destination_mask)
    return write_pair_setup(directory, source_account, destination_account, pair_options)


def append(client: IMAPClient, folder: str, *indexes: int, tag: str = "") -> None:
    for index in indexes:
        client.append(folder, simple_message(index, tag=tag))


def flat(text: str) -> str:
    """Terminal output with its line wrapping undone."""
    return " ".join(text.split())


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
    mirror: Mirror, masks: tuple[ServerMask, ServerMask]
) -> None:
    """Courier's SELECT has no [UIDNEXT]: a 0 was stored and the next pass sent `UID SEARCH UID 0:*` (NO,
    exit 75 forever). Both sides behind the mask, several passes with new mail, expunges and no change."""
    mirror.src.create_folder("Work")
    append(mirror.src, "INBOX", 1, 2, 3)
    append(mirror.src, "Work", 4)
    setup = masked_setup(
        mirror.source_server, mirror.src_user, mirror.dest_server, mirror.dst_user,
        source_mask=masks[0], destination_mask=masks[1], pair_options="deletions: {destination: mirror}",
    )  # fmt: skip
    first = setup.sync()
    assert first.error is None and first.complete and first.copied == 4
    assert all(src and dst for _folder, src, dst in stored_markers(setup)), stored_markers(setup)

    append(mirror.src, "INBOX", 5, 6)
    append(mirror.dst, "INBOX", 90)  # delivered to the destination by someone else meanwhile
    second = setup.sync()
    assert second.error is None and second.complete and second.copied == 2, second

    mirror.src.select_folder("INBOX")
    mirror.src.delete_messages(mirror.src.search(["SUBJECT", "message 1"]))
    mirror.src.expunge()
    append(mirror.src, "INBOX", 7)
    third = setup.sync()
    assert third.error is None and third.complete and third.copied == 1
    assert third.total("deleted") == 1

    fourth = setup.sync()
    assert fourth.error is None and fourth.copied == 0 and fourth.total("deleted") == 0
    assert all(src and dst for _folder, src, dst in stored_markers(setup)), stored_markers(setup)
    verdict = setup.verify()
    assert verdict.clean, verdict
    mirror.dst.select_folder("INBOX", readonly=True)
    assert len(mirror.dst.search()) == 6  # 2, 3, 5, 6, 7 and the one delivered there


def test_a_stored_uidnext_of_zero_is_never_sent(mirror: Mirror, masks: tuple[ServerMask, ServerMask]) -> None:
    """A state database written by an affected version holds dst_uidnext = 0 (and src_uidnext = 0): the
    next pass must treat them as unknown, not search from UID 0."""
    append(mirror.src, "INBOX", 1, 2)
    setup = masked_setup(
        mirror.source_server, mirror.src_user, mirror.dest_server, mirror.dst_user, destination_mask=masks[1]
    )
    assert setup.sync().copied == 2
    with sqlite3.connect(setup.directory / "state.db") as db:
        db.execute("UPDATE folders SET dst_uidnext = 0, src_uidnext = 0")
    append(mirror.src, "INBOX", 3)
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
    text += masked_account("dst", masks[1].port, src_user, directory)  # another port: not the same mailbox
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


# -- 2, 3, 5. special-use folders, automap without merges, stable labels, deletions in the summary -------


def umlaut_setup(mirror: Mirror, pair_options: str = "") -> Setup:
    """A source with a real \\Drafts folder (the lab's Dovecot gives "Drafts" the attribute) and a folder
    with a well-known German name for drafts, as in issue 14."""
    for folder in ("Drafts", "Entwürfe", "Work"):
        mirror.src.create_folder(folder)
    append(mirror.src, "Drafts", 1, 2, tag="d")
    append(mirror.src, "Entwürfe", 3, 4, 5, tag="e")
    append(mirror.src, "Work", 6, tag="w")
    append(mirror.src, "INBOX", 7, tag="i")
    return mirror.setup(pair_options=pair_options)


def test_extended_list_carries_special_use(mirror: Mirror) -> None:
    mirror.src.create_folder("Drafts")
    setup = masked_setup(mirror.source_server, mirror.src_user, mirror.dest_server, mirror.dst_user)
    account = load_config(setup.config_path).accounts["src"]
    with Session.open("src", account) as session:
        folders, statuses, subscribed = session.list_folders_with_status()
    assert {f.name: f.special_use for f in folders}["Drafts"] == "\\Drafts"
    assert "Drafts" in statuses and subscribed is not None


@pytest.mark.parametrize("destination_has_drafts", [False, True], ids=["empty-destination", "destination-drafts"])
def test_verify_is_clean_right_after_a_sync_with_special_use_folders(
    mirror: Mirror, destination_has_drafts: bool
) -> None:
    """Sync saw no special-use attributes (LIST-STATUS did not ask), verify did: they mapped differently and
    verify exited 65 on a perfect copy; automap poured Entwürfe into Drafts depending on the destination."""
    if destination_has_drafts:
        mirror.dst.create_folder("Drafts")
    setup = umlaut_setup(mirror)
    first = setup.run("sync")
    assert first.returncode == 0, first.stdout + first.stderr
    verified = setup.run("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Drafts + " not in verified.stdout and "Entwürfe + " not in verified.stdout
    assert {name.decode() if isinstance(name, bytes) else name for _f, _d, name in mirror.dst.list_folders()} >= {
        "Drafts", "Entwürfe", "Work"}  # fmt: skip
    mirror.dst.select_folder("Entwürfe", readonly=True)
    assert len(mirror.dst.search()) == 3

    rules_first = {f.source: (f.destination, f.rule) for f in setup.sync().folders}
    append(mirror.src, "Entwürfe", 8, tag="e")
    rules_second = {f.source: (f.destination, f.rule) for f in setup.sync().folders}
    assert rules_first == rules_second  # the same destination and label on every pass
    assert setup.run("verify").returncode == 0


def test_pass_labels_do_not_flip_and_deletions_are_counted(mirror: Mirror) -> None:
    setup = umlaut_setup(mirror, pair_options="deletions: {destination: mirror, max_share: 0.5}")
    first = setup.run("sync")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "│ Drafts (new)" in first.stdout and "│ Entwürfe (new)" in first.stdout, first.stdout
    assert "0 deleted on the destination" in flat(first.stdout)

    mirror.src.select_folder("Entwürfe")
    mirror.src.delete_messages(mirror.src.search(["SUBJECT", "message 3"]))
    mirror.src.expunge()
    second = setup.run("sync")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 deleted on the destination" in flat(second.stdout), second.stdout
    assert "│ Drafts " in second.stdout and "(automap" not in second.stdout  # no label appears on pass 2
    row = next(line for line in second.stdout.splitlines() if line.startswith("│ Entwürfe"))
    assert [cell.strip() for cell in row.split("│")][3:5] == ["0", "0"] and "│       1 │" in row, row


def test_merges_a_rule_asks_for_are_marked_in_plan_and_pass(mirror: Mirror) -> None:
    for folder in ("Sent", "Sent 2019", "Work", "WORK"):
        mirror.src.create_folder(folder)
        append(mirror.src, folder, len(folder), tag=folder)
    setup = masked_setup(
        mirror.source_server,
        mirror.src_user,
        mirror.dest_server,
        mirror.dst_user,
        pair_options='folders: {map: {"Sent 2019": "Sent"}}',
    )
    plan = setup.run("plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "map, merged with Sent" in plan.stdout and "merged with WORK" in plan.stdout, plan.stdout
    assert "Folder " not in plan.stdout and "would copy 4 messages" in flat(plan.stdout), plan.stdout  # dry run too
    synced = setup.run("sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "Sent (map, merged with Sent" in synced.stdout and "(merged with WORK" in synced.stdout, synced.stdout
    assert setup.run("verify").returncode == 0


# -- 4. a destination that stores other bytes (Cyrus munge8bit) -----------------------------------------


def eight_bit_message(index: int) -> bytes:
    return (
        f"From: Jörg Müller <joerg{index}@example.org>\r\nTo: Alice <alice@example.org>\r\n"
        f"Subject: Grüße {index}\r\nDate: Tue, 2 Jan 2024 10:{index:02d}:00 +0000\r\n"
        f"Message-ID: <umlaut-{index}@example.org>\r\n\r\nHallo {index}\r\n"
    ).encode()


@pytest.mark.parametrize("appends", ["multiappend", "pipelined"])
def test_a_destination_that_alters_messages_is_reported(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    make_server: MakeServer,
    src_user: LabUser,
    src_client: IMAPClient,
    appends: str,
) -> None:
    assert munge_header_8bit(eight_bit_message(1)) != eight_bit_message(1)
    assert len(munge_header_8bit(eight_bit_message(1))) == len(eight_bit_message(1))
    if appends == "pipelined":  # one APPEND per message, LITERAL+ (Cyrus has no MULTIAPPEND)
        dest_server = make_server(drop_capabilities=["MULTIAPPEND"])
    dst_user = dest_server.add_user()
    append(src_client, "INBOX", 1, 2, 3)
    for index in (4, 5):
        src_client.append("INBOX", eight_bit_message(index))
    with ServerMask(dest_server.port, munge_8bit=True) as mask:
        setup = masked_setup(source_server, src_user, dest_server, dst_user, destination_mask=mask)
        synced = setup.run("sync")
        assert synced.returncode == 0, synced.stdout + synced.stderr
        text = flat(synced.stdout)
        assert "2 altered by the destination server" in text, synced.stdout
        assert "Complete: every" not in text and "Complete, but 2 messages were altered" in text
        assert "Altered by the destination server:" in text

        verified = setup.run("verify")
        assert verified.returncode == DATA_ERROR, verified.stdout + verified.stderr
        assert "altered by the destination server (same message, other bytes)" in flat(verified.stdout)
        assert "missing on the destination" not in verified.stdout, verified.stdout
        verdict = setup.verify()
        (folder,) = verdict.folders
        assert (len(folder.altered), folder.missing, folder.extra) == (2, [], [])

        again = setup.sync()  # nothing to do: the altered copies are known, never copied again
        assert again.error is None and again.copied == 0 and again.altered == 0


def test_a_destination_that_keeps_the_bytes_is_not_reported_as_altering(mirror: Mirror) -> None:
    for index in (1, 2):
        mirror.src.append("INBOX", eight_bit_message(index))
    setup = masked_setup(mirror.source_server, mirror.src_user, mirror.dest_server, mirror.dst_user)
    report = setup.sync()
    assert report.complete and report.copied == 2 and report.altered == 0
    assert setup.verify().clean


def test_verify_pairs_altered_copies_by_identity() -> None:
    """Pure: one message the destination rewrote, one really missing, one extra, one identical."""
    when = datetime(2024, 1, 2, 10, 0, tzinfo=UTC)

    def digest(uid: int, raw: bytes) -> MessageDigest:
        return MessageDigest(uid, hashlib.sha256(raw).hexdigest(), frozenset(), when, loose_identity(raw))

    same, rewritten, lost = eight_bit_message(1), eight_bit_message(2), eight_bit_message(3)
    source = [digest(1, same), digest(2, rewritten), digest(3, lost)]
    destination = [digest(7, same), digest(8, munge_header_8bit(rewritten)), digest(9, eight_bit_message(4))]
    verdict = FolderVerdict("INBOX", "INBOX")
    compare_folder(verdict, source, destination, None)
    assert (verdict.altered, verdict.missing, verdict.extra) == ([(2, 8)], [3], [9])
    assert verdict.differences == 2


def test_altered_copies_are_counted_in_the_metrics() -> None:
    metrics = Metrics()
    metrics.configure({"p": 60.0}, ["a"])
    metrics.pass_started("p")
    report = PairReport("p", folders=[FolderReport("INBOX", "INBOX", "default", altered=[(4, "x"), (5, "y")])])
    report.finished = report.started
    metrics.pass_finished("p", report, backlog=0)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
    }
    assert samples[("mailmirror_messages_altered_total", (("pair", "p"),))] == 2
