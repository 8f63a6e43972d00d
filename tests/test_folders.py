"""Folder rules end to end, against real Dovecot servers (including a Cyrus/Courier-style layout)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from imapclient import IMAPClient

from mailmirror.lab.dovecot import DovecotServer, LabUser, SeedMessage, seed
from tests.support import Mirror, make_setup, message_count, simple_message

pytestmark = pytest.mark.dovecot

MakeServer = Callable[..., DovecotServer]


def names(client: IMAPClient) -> set[str]:
    return {name for flags, _delimiter, name in client.list_folders() if b"\\Noselect" not in flags}


def one(client: IMAPClient, folder: str, index: int) -> None:
    seed(client, folder, [SeedMessage(simple_message(index, tag=folder))])


def test_automap_map_rename_and_under_together(mirror: Mirror) -> None:
    for index, folder in enumerate(("INBOX", "Sent Messages", "Gesendete Objekte", "Old/2019", "Lists/python")):
        one(mirror.src, folder, index)
    mirror.dst.create_folder("Sent")
    options = """
    folders:
      map: {"Lists/python": "Mailing lists/Python"}
      rename: [{pattern: "^Old/(\\\\d+)$", replacement: "Archive/\\\\1"}]
    """
    setup = mirror.setup(pair_options=options)
    plan = json.loads(setup.run("plan", "--json").stdout)["pairs"][0]["folders"]
    rules = {folder["source"]: (folder["destination"], folder["rule"]) for folder in plan}
    assert rules == {
        "INBOX": ("INBOX", "default"),
        "Gesendete Objekte": ("Sent", "automap"),
        "Lists/python": ("Mailing lists/Python", "map"),
        "Old/2019": ("Archive/2019", "rename"),
        "Sent Messages": ("Sent Messages", "default"),  # Sent receives Gesendete Objekte: no merge by a name guess
    }
    setup.sync()
    assert message_count(mirror.dst, "Sent") == 1 and message_count(mirror.dst, "Sent Messages") == 1
    assert {"Mailing lists/Python", "Archive/2019"} <= names(mirror.dst)
    assert setup.verify().clean


def test_backup_under_a_folder_then_restore_from_under_it(mirror: Mirror) -> None:
    for index, folder in enumerate(("INBOX", "Sent", "Projects/Client Work")):
        one(mirror.src, folder, index)
    backup = mirror.setup(pair_options="folders: {under: Backup/old}")
    backup.sync()
    assert {"Backup/old/INBOX", "Backup/old/Sent", "Backup/old/Projects/Client Work"} <= names(mirror.dst)
    assert backup.verify().clean

    fresh = mirror.source_server.add_user()
    restore = make_setup(
        mirror.dest_server,
        mirror.dst_user,
        mirror.source_server,
        fresh,
        pair_options="folders: {from_under: Backup/old}",
    )
    report = restore.sync()
    assert report.copied == 3
    with mirror.source_server.connect(fresh) as client:
        assert {"INBOX", "Sent", "Projects/Client Work"} <= names(client)
        assert message_count(client, "Projects/Client Work") == 1


def test_include_exclude_with_subtrees_and_subscribed_only(mirror: Mirror) -> None:
    for index, folder in enumerate(("Archive", "Archive/2023", "Archive/2023/Q1", "Junk", "Work", "Hidden")):
        one(mirror.src, folder, index)
    mirror.src.unsubscribe_folder("Hidden")
    options = """
    folders:
      exclude: ["Archive/*/**", "re:^Junk$"]
      subscribed_only: true
    """
    setup = mirror.setup(pair_options=options)
    setup.sync()
    assert names(mirror.dst) == {"INBOX", "Archive", "Work"}  # "Archive/*/**": 2023 with all below
    assert setup.verify().clean


def test_cyrus_style_source_to_dovecot_destination(
    make_server: MakeServer, dest_server: DovecotServer, dst_user: LabUser, dst_client: IMAPClient
) -> None:
    cyrus = make_server(separator=".", prefix="INBOX.")
    user = cyrus.add_user()
    with cyrus.connect(user) as client:
        one(client, "INBOX.Archive.2024", 1)
        one(client, "INBOX.Reçus", 2)
        one(client, "INBOX", 3)
    setup = make_setup(cyrus, user, dest_server, dst_user)
    report = setup.sync()
    assert {(f.source, f.destination) for f in report.folders} >= {
        ("INBOX.Archive.2024", "Archive/2024"),
        ("INBOX.Reçus", "Reçus"),
        ("INBOX", "INBOX"),
    }
    assert {"Archive/2024", "Reçus"} <= names(dst_client)
    assert setup.verify().clean


def test_case_variants_merge_into_one_destination_folder(mirror: Mirror) -> None:
    one(mirror.src, "Projects", 1)
    one(mirror.src, "PROJECTS", 2)
    setup = mirror.setup()
    setup.sync()
    merged = {name for name in names(mirror.dst) if name.lower() == "projects"}
    assert len(merged) == 1
    assert message_count(mirror.dst, merged.pop()) == 2
    assert setup.sync().copied == 0
    assert setup.verify().clean
