"""Regressions from an independent safety review: each reproduced a way to lose, duplicate or wrongly
delete mail, or to leak a secret, before it was fixed. Against real Dovecot servers."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime

import pytest
from imapclient.exceptions import IMAPClientError

import mailmirror.engine.sync as sync
from mailmirror.config.model import load_config
from mailmirror.engine.sync import LogProgress
from mailmirror.errors import AuthenticationFailure, ServerRefused
from mailmirror.imap.session import Session
from mailmirror.lab.dovecot import LabUser, SeedMessage, seed
from mailmirror.state.store import StateStore
from tests.proxy import Fault, FaultProxy
from tests.support import make_setup, message_count, simple_message

pytestmark = pytest.mark.dovecot


def seed_inbox(client, messages, folder="INBOX"):
    return seed(client, folder, [SeedMessage(m, (), datetime(2024, 1, 2, tzinfo=UTC)) for m in messages])


# 1. No MULTIAPPEND on the destination + one refused message in a batch -> the messages before it twice.
def test_refused_message_duplicates_batch_without_multiappend(source_server, make_server, src_client, src_user):
    dest = make_server(drop_capabilities=["MULTIAPPEND"])
    dst_user = dest.add_user(max_mail_size=20_000)
    seed_inbox(src_client, [simple_message(1), simple_message(2), simple_message(3, size=50_000), simple_message(4)])
    setup = make_setup(source_server, src_user, dest, dst_user)
    report = setup.sync()
    client = dest.connect(dst_user)
    # expected: 3 messages (1, 2, 4) on the destination and UID 3 failed
    assert message_count(client) == 3, f"destination holds {message_count(client)} (report copied={report.copied})"


# 2. Source without CONDSTORE + mirror deletions: a pass cut after its first batch; the next pass
#    takes the copied-but-unsaved messages for expunged, deletes their copies and never copies them again.
#    The cut: the destination's connection dropped by the fault proxy as the second batch's APPEND goes out.
def test_cut_pass_then_mirror_deletes_live_messages(make_server, dest_server, dst_user, dst_client):
    source = make_server(drop_capabilities=["CONDSTORE", "QRESYNC"])
    src_user = source.add_user()
    src = source.connect(src_user)
    seed_inbox(src, [simple_message(i, tag="old") for i in range(40)])
    setup = make_setup(
        source,
        src_user,
        dest_server,
        dst_user,
        pair_options="deletions: {destination: mirror}\ntransfer: {batch_messages: 3, retries: 0}",
    )
    assert setup.sync().complete
    seed_inbox(src, [simple_message(i, tag="new") for i in range(6)])

    with FaultProxy(dest_server.host, dest_server.port) as proxy:
        direct = setup.config_path.read_text(encoding="utf-8")
        setup.config_path.write_text(_through_proxy(direct, "dst", proxy), encoding="utf-8")
        proxy.inject(Fault("up", pattern=b" APPEND ", count=2))
        assert setup.sync().error is not None  # the cut pass: 3 of 6 new copied (done), markers not saved
        assert proxy.triggered >= 1, "the fault never fired: the test did not test what it says"
        setup.config_path.write_text(direct, encoding="utf-8")
    report = setup.sync()
    print("deleted:", report.total("deleted"), "copied:", report.copied)
    setup.sync()
    assert message_count(src) == 46
    assert message_count(dst_client) == 46, f"destination holds {message_count(dst_client)} of 46"


def _through_proxy(config: str, account: str, proxy: FaultProxy) -> str:
    """The config with one account's entry pointed at the proxy (plain IMAP: the proxy sees the commands)."""
    lines = config.splitlines()
    start = lines.index(f"  {account}:")
    for index in range(start + 1, len(lines)):
        if not lines[index].startswith("    "):
            break
        field = lines[index].strip().split(":", 1)[0]
        if field == "port":
            lines[index] = f"    port: {proxy.port}"
        elif field == "tls":
            lines[index] = "    tls: none"
        elif field == "tls_ca":
            lines[index] = ""
    return "\n".join(line for line in lines if line) + "\n"


class _OnEachBatch(LogProgress):
    """A Progress that runs `then` after each batch the destination confirmed (a hook into a real pass)."""

    def __init__(self, then):
        self.then = then

    def advance(self, pair, folder, messages, size):
        self.then()


# 3. Move (source: after_copy): a message arriving during the pass is skipped for ever.
def test_move_loses_message_arriving_during_pass(
    source_server, src_user, src_client, dest_server, dst_user, dst_client
):
    seed_inbox(src_client, [simple_message(i, tag="a") for i in range(5)])
    setup = make_setup(source_server, src_user, dest_server, dst_user, pair_options="deletions: {source: after_copy}")
    arrived = []

    def new_mail():  # after the folder was listed and copied, before its copies are deleted from the source
        if not arrived:
            arrived.append(seed_inbox(src_client, [simple_message(99, tag="late")]))

    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    sync.PairPass("test", config.effective_pairs()["test"], config, store, _OnEachBatch(new_mail)).run()
    store.close()
    assert arrived, "no batch was copied: the test did not test what it says"
    for _ in range(3):
        setup.sync()
    assert message_count(dst_client) == 6, (
        f"destination {message_count(dst_client)}, source {message_count(src_client)}"
    )


# 4. A renamed folder loses its deferred rows (messages.search): the message is never copied.
def test_rename_drops_deferred(source_server, src_user, src_client, dest_server, dst_user, dst_client):
    seed(src_client, "Work", [SeedMessage(simple_message(1), ()), SeedMessage(simple_message(2), ("\\Flagged",))])
    setup = make_setup(source_server, src_user, dest_server, dst_user, pair_options="messages: {search: FLAGGED}")
    setup.sync()
    src_client.rename_folder("Work", "Work2")
    setup.sync()  # rename followed on the destination
    src_client.select_folder("Work2")
    src_client.add_flags(src_client.search(["UNFLAGGED"]), ["\\Flagged"])
    src_client.unselect_folder()
    setup.sync()
    db = sqlite3.connect(setup.directory / "state.db")
    print("deferred rows:", db.execute("select src_folder, src_uid from deferred").fetchall())
    assert message_count(dst_client, "Work2") == 2, f"Work2 holds {message_count(dst_client, 'Work2')} of 2"


# 5. A FETCH answered NO escapes as a raw imaplib error; the run is recorded "ok".
def test_fetch_no_escapes_and_run_recorded_ok(source_server, src_user, src_client, dest_server, dst_user, monkeypatch):
    seed_inbox(src_client, [simple_message(i) for i in range(3)])
    setup = make_setup(source_server, src_user, dest_server, dst_user)

    def no(self, uids):
        raise IMAPClientError("fetch failed: [UNAVAILABLE] simulated")

    monkeypatch.setattr(Session, "fetch_bodies", no)
    report = setup.sync()
    assert report.error is not None and "internal error" in str(report.error)
    db = sqlite3.connect(setup.directory / "state.db")
    outcome = db.execute("select outcome from runs").fetchall()
    assert outcome != [("ok",)], outcome


# 6. A body the source leaves out of one FETCH answer is "skipped" and never looked at again.
def test_body_missing_from_one_fetch_is_never_copied(
    source_server, src_user, src_client, dest_server, dst_user, dst_client, monkeypatch
):
    seed_inbox(src_client, [simple_message(i) for i in range(3)])
    setup = make_setup(source_server, src_user, dest_server, dst_user)
    setup.sync()
    seed_inbox(src_client, [simple_message(i, tag="n") for i in range(3)])
    real = Session.fetch_bodies

    def drop_one(self, uids):
        bodies = real(self, uids)
        bodies.pop(max(bodies))
        return bodies

    monkeypatch.setattr(Session, "fetch_bodies", drop_one)
    report = setup.sync()
    print("complete:", report.complete, "skipped:", report.folders[0].skipped)
    monkeypatch.setattr(Session, "fetch_bodies", real)
    setup.sync()
    setup.sync()
    assert message_count(dst_client) == 6, f"destination {message_count(dst_client)} of 6"


# 7. delete_missing_folders runs although the folder the mail moved to could not be created.
def test_folder_deleted_although_its_successor_failed(
    source_server, src_user, src_client, dest_server, dst_user, dst_client, monkeypatch
):
    seed_inbox(src_client, [simple_message(i, tag="p") for i in range(5)], folder="Projects")
    seed_inbox(src_client, [simple_message(i, tag="i") for i in range(5)])
    seed_inbox(src_client, [simple_message(i, tag="a") for i in range(5)], folder="Archive")
    seed_inbox(src_client, [simple_message(i, tag="s") for i in range(5)], folder="Sent")
    seed_inbox(src_client, [simple_message(i, tag="t") for i in range(5)], folder="Notes")
    setup = make_setup(
        source_server, src_user, dest_server, dst_user, pair_options="deletions: {delete_missing_folders: true}"
    )
    setup.sync()
    # the user moves the mail to a new folder and deletes the old one (UIDVALIDITY changes: no rename)
    src_client.create_folder("Projects-2024")
    src_client.select_folder("Projects")
    src_client.copy(src_client.search(), "Projects-2024")
    src_client.unselect_folder()
    src_client.delete_folder("Projects")
    real = Session.create_folder

    def refuse(self, name):
        if name == "Projects-2024":
            raise ServerRefused("simulated: NO [LIMIT] too many folders")
        return real(self, name)

    monkeypatch.setattr(Session, "create_folder", refuse)
    report = setup.sync()
    print([(f.source, f.destination, f.error, f.deleted) for f in report.folders])
    names = [n for _f, _d, n in dst_client.list_folders()]
    assert "Projects" in names or "Projects-2024" in names, (
        f"the 5 Projects messages are on no destination folder: {names}"
    )


# 8. A push pass (only_folders) ignores skip_cross_folder_duplicates' priority: the message is copied twice.
def test_push_pass_breaks_cross_folder_duplicates(
    source_server, src_user, src_client, dest_server, dst_user, dst_client
):
    setup = make_setup(
        source_server,
        src_user,
        dest_server,
        dst_user,
        pair_options="messages: {skip_cross_folder_duplicates: true, duplicate_priority: [Work]}",
    )
    seed_inbox(src_client, [simple_message(1, tag="x")], folder="Work")
    setup.sync()
    msg = simple_message(2, tag="labelled")
    seed_inbox(src_client, [msg], folder="Work")
    seed_inbox(src_client, [msg])  # the same message under two labels
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    sync.PairPass("test", config.effective_pairs()["test"], config, store, only_folders={"INBOX"}).run()  # push
    store.close()
    setup.sync()
    total = message_count(dst_client) + message_count(dst_client, "Work")
    assert total == 2, f"{total} copies on the destination (a full pass alone makes 2)"


def test_non_ascii_password_logs_in_and_never_reaches_error_text(source_server, dest_server, dst_user):
    user = source_server.add_user(password="Sécret-pässwörd")
    setup = make_setup(source_server, user, dest_server, dst_user)
    Session.open("src", load_config(setup.config_path).accounts["src"]).close()  # SASL PLAIN carries UTF-8

    wrong_password = "Fälschung-ünd-Straße"
    wrong = make_setup(source_server, LabUser(user.username, wrong_password), dest_server, dst_user)
    with pytest.raises(AuthenticationFailure) as refused:
        Session.open("src", load_config(wrong.config_path).accounts["src"]).close()
    assert user.username in str(refused.value)
    result = wrong.run("sync")
    assert result.returncode == 77, result.stdout + result.stderr
    assert "login as" in result.stderr + result.stdout
    for text in (str(refused.value), repr(refused.value), result.stdout, result.stderr):
        for secret in (wrong_password, "Fälschung", "Straße", "Sécret-pässwörd"):
            assert secret not in text


# 2b. Same as 2 with the daemon's own graceful stop (SIGTERM / reload) between batches; real batch size.
def test_graceful_stop_then_mirror_deletes_live_messages(make_server, dest_server, dst_user, dst_client):
    source = make_server(drop_capabilities=["CONDSTORE", "QRESYNC"])
    src_user = source.add_user()
    src = source.connect(src_user)
    seed_inbox(src, [simple_message(i, tag="old") for i in range(1000)])
    setup = make_setup(source, src_user, dest_server, dst_user, pair_options="deletions: {destination: mirror}")
    assert setup.sync().complete
    seed_inbox(src, [simple_message(i, tag="new") for i in range(150)])
    stop = threading.Event()
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    # SIGTERM arrives while the first batch is in flight: set once it is confirmed
    report = sync.PairPass(
        "test", config.effective_pairs()["test"], config, store, _OnEachBatch(stop.set), stop=stop
    ).run()
    store.close()
    print("stopped pass:", report.error, report.copied)
    assert report.copied == 100, "the pass was not stopped between its two batches"
    report = setup.sync()
    print("next pass: deleted", report.total("deleted"), "copied", report.copied)
    setup.sync()
    assert message_count(dst_client) == 1150, f"destination {message_count(dst_client)} of 1150"


# 9. (found by the model, tests/unit/test_engine_model.py) A message refused by the destination, then deleted on
#    the source, while the folder's first pass never finished (stopped, killed): its failure was retried,
#    and reported, on every pass for ever ("the source did not return the message's size and headers").
def test_failure_of_a_message_deleted_before_the_first_pass_finished_is_not_retried_for_ever(
    source_server, src_user, src_client, dest_server
):
    small = dest_server.add_user(max_mail_size=20_000)
    seed_inbox(src_client, [simple_message(1, size=50_000)] + [simple_message(i) for i in range(2, 8)])
    setup = make_setup(source_server, src_user, dest_server, small, pair_options="transfer: {batch_messages: 3}")
    stop = threading.Event()
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    report = sync.PairPass(
        "test", config.effective_pairs()["test"], config, store, _OnEachBatch(stop.set), stop=stop
    ).run()
    store.close()
    assert report.failed == 1 and report.error is not None, "the first batch's refusal and the stop did not happen"
    src_client.select_folder("INBOX")
    src_client.delete_messages([1])  # the user deletes the message the destination refused
    src_client.expunge()
    src_client.unselect_folder()
    assert setup.sync().complete
    again = setup.sync()
    assert again.complete, again.folders[0].failed
    with dest_server.connect(small) as client:
        assert message_count(client) == 6


# 10. (found by the model) A crash during a folder's first pass left journal rows without the UIDVALIDITY
#     they belong to; after the source folder was recreated (new UIDVALIDITY, new UIDs) the next pass read
#     them against the new UIDs: one message copied twice, another never copied, and the pass "complete".
def test_crash_in_first_pass_then_source_uidvalidity_reset_copies_each_message_once(
    source_server, src_user, src_client, dest_server, dst_user, dst_client
):
    messages = [simple_message(i, tag="work") for i in range(1, 4)]
    seed_inbox(src_client, messages, folder="Work")
    src_client.select_folder("Work")
    src_client.delete_messages([1])  # the others keep UIDs 2 and 3
    src_client.expunge()
    src_client.unselect_folder()
    setup = make_setup(source_server, src_user, dest_server, dst_user, pair_options="transfer: {batch_messages: 1}")

    def crash():
        raise KeyboardInterrupt("simulated crash after the first batch, before the folder's state was saved")

    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    with pytest.raises(KeyboardInterrupt):
        sync.PairPass("test", config.effective_pairs()["test"], config, store, _OnEachBatch(crash)).run()
    store.close()
    assert message_count(dst_client, "Work") == 1
    src_client.delete_folder("Work")  # the folder recreated: a new UIDVALIDITY, the messages at UIDs 1 and 2
    seed_inbox(src_client, messages[1:], folder="Work")
    assert setup.sync().complete
    assert setup.sync().copied == 0
    assert message_count(dst_client, "Work") == 2
    assert setup.verify().clean


# 11. A message another session expunged after the pass listed it: Dovecot answers its UID FETCH with
#     BODY[] NIL (OK [EXPUNGEISSUED]); that was a TypeError, and the pass ended with "internal error".
def test_message_expunged_by_another_session_mid_fetch_is_not_a_bug(source_server, src_user, src_client, dest_server):
    seed_inbox(src_client, [simple_message(i) for i in range(3)])
    setup = make_setup(source_server, src_user, dest_server, dest_server.add_user())
    with Session.open("src", load_config(setup.config_path).accounts["src"]) as session:
        session.select("INBOX", readonly=True)
        assert len(session.fetch_meta([1, 2, 3], ["Message-ID"])) == 3  # listed
        src_client.select_folder("INBOX")
        src_client.delete_messages([1])  # the user deletes one while the pass runs
        src_client.expunge()
        assert sorted(session.fetch_bodies([1, 2])) == [2]
