"""Message and flag rules, end to end against real Dovecot servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from mailmirror.lab.dovecot import SeedMessage, seed
from mailmirror.state.store import StateStore
from tests.support import Mirror, message_count, simple_message

pytestmark = pytest.mark.dovecot

NOW = datetime.now(UTC).replace(microsecond=0)


def test_max_age_copies_only_recent_messages(mirror: Mirror) -> None:
    old = [SeedMessage(simple_message(i), (), NOW - timedelta(days=400)) for i in range(4)]
    recent = [SeedMessage(simple_message(10 + i), (), NOW - timedelta(days=3)) for i in range(3)]
    seed(mirror.src, "INBOX", old + recent)
    setup = mirror.setup(pair_options="messages: {max_age: 365d}")
    report = setup.sync()
    assert report.copied == 3 and report.skipped == 4
    assert message_count(mirror.dst) == 3
    assert setup.verify().clean


def test_min_age_defers_young_messages_until_they_are_old_enough(mirror: Mirror) -> None:
    seed(
        mirror.src,
        "INBOX",
        [SeedMessage(simple_message(1), (), NOW - timedelta(days=3)), SeedMessage(simple_message(2), (), NOW)],
    )
    setup = mirror.setup(pair_options="messages: {min_age: 1d}")
    assert setup.sync().copied == 1
    assert setup.sync().copied == 0
    later = NOW + timedelta(days=2)
    assert setup.sync(clock=lambda: later).copied == 1  # the folder did not change, but its deferred message is due
    assert message_count(mirror.dst) == 2


def test_search_rule_is_anded_and_rechecked_when_flags_change(mirror: Mirror) -> None:
    uids = seed(
        mirror.src,
        "INBOX",
        [SeedMessage(simple_message(i), ("\\Flagged",) if i < 2 else ()) for i in range(6)],
    )
    setup = mirror.setup(pair_options='messages: {search: "FLAGGED"}')
    assert setup.sync().copied == 2
    mirror.src.select_folder("INBOX")
    mirror.src.add_flags(uids[4:5], ["\\Flagged"])
    assert setup.sync().copied == 1
    assert message_count(mirror.dst) == 3
    assert setup.verify().clean


def test_keyword_rules_drop_and_rename(mirror: Mirror) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(1), ("\\Seen", "$Junk", "$Label1"))])
    options = "flags: {drop: ['^\\$Junk$'], rename: {$Label1: $Important}}"
    setup = mirror.setup(pair_options=options)
    setup.sync()
    mirror.dst.select_folder("INBOX", readonly=True)
    [flags] = [set(data[b"FLAGS"]) for data in mirror.dst.fetch(mirror.dst.search(), ["FLAGS"]).values()]
    assert flags - {b"\\Recent"} == {b"\\Seen", b"$Important"}
    assert setup.verify().clean


def test_cross_folder_duplicates_are_copied_once(mirror: Mirror) -> None:
    shared = [SeedMessage(simple_message(i, tag="label")) for i in range(4)]
    seed(mirror.src, "INBOX", shared[:2])
    seed(mirror.src, "Labels/Work", shared)
    seed(mirror.src, "Labels/Home", [*shared[2:], SeedMessage(simple_message(99))])
    options = "messages: {skip_cross_folder_duplicates: true}"
    setup = mirror.setup(pair_options=options)
    report = setup.sync()
    assert report.copied == 5 and report.skipped == 4
    assert [message_count(mirror.dst, f) for f in ("INBOX", "Labels/Home", "Labels/Work")] == [2, 3, 0]
    assert setup.sync().copied == 0
    assert setup.verify().clean


def test_skip_empty_creates_no_folder_for_an_empty_one(mirror: Mirror) -> None:
    mirror.src.create_folder("Nothing Here")
    seed(mirror.src, "Something", [SeedMessage(simple_message(1))])
    setup = mirror.setup(pair_options="folders: {skip_empty: true}")
    setup.sync()
    names = {name for _flags, _delimiter, name in mirror.dst.list_folders()}
    assert "Something" in names and "Nothing Here" not in names
    assert setup.verify().clean


def test_deferred_rows_hold_no_secret_and_are_inspectable(mirror: Mirror) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(1), (), NOW)])
    setup = mirror.setup(pair_options="messages: {min_age: 7d}")
    setup.sync()
    store = StateStore(setup.directory / "state.db")
    waiting, due = store.deferred_uids("test", "INBOX")
    store.close()
    assert (waiting, due) == ([], [])  # deferred with a date: not due yet
    assert setup.run("status").returncode == 0


def test_plan_shows_mapping_sizes_and_work_and_changes_nothing(mirror: Mirror) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(4)])
    seed(mirror.src, "Projects/Client Work", [SeedMessage(simple_message(10 + i)) for i in range(2)])
    seed(mirror.dst, "INBOX", [SeedMessage(simple_message(0))])
    setup = mirror.setup(pair_options="folders: {map: {INBOX: Inbox-Old}}")
    before = {name for _f, _d, name in mirror.dst.list_folders()}
    result = setup.run("plan", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    [pair] = json.loads(result.stdout)["pairs"]
    folders = {f["source"]: f for f in pair["folders"]}
    assert folders["INBOX"]["destination"] == "Inbox-Old" and folders["INBOX"]["rule"] == "map"
    assert folders["INBOX"]["create"] and folders["INBOX"]["copy"] == 4
    assert folders["INBOX"]["source_size"]["messages"] == 4
    assert folders["Projects/Client Work"]["copy"] == 2
    assert {name for _f, _d, name in mirror.dst.list_folders()} == before
    text = setup.run("plan")
    assert text.returncode == 0 and "Inbox-Old (to create)" in text.stdout and "Nothing was changed" in text.stdout
    assert not (setup.directory / "state.db").exists() or setup.run("status").returncode == 0
