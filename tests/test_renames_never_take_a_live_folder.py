"""Review (h11): a rename found by fingerprint after a UIDVALIDITY change must never rename a destination
folder that another source folder still fills (a merge) or whose source folder still exists."""

from __future__ import annotations

import pytest
from imapclient import IMAPClient

from mailmirror.lab.dovecot import DovecotServer, LabUser, SeedMessage, seed
from tests.support import make_setup, message_count, simple_message

pytestmark = pytest.mark.dovecot


def _names(client: IMAPClient) -> set[str]:
    return {name for _flags, _delimiter, name in client.list_folders()}


def test_a_merge_target_is_not_renamed_away_from_the_folder_still_filling_it(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    src_user: LabUser,
    dst_user: LabUser,
    src_client: IMAPClient,
    dst_client: IMAPClient,
) -> None:
    seed(src_client, "A", [SeedMessage(simple_message(1))])
    seed(src_client, "B", [SeedMessage(simple_message(10 + i)) for i in range(3)])
    setup = make_setup(
        source_server, src_user, dest_server, dst_user, pair_options="folders: {map: {A: Merged, B: Merged}}"
    )
    setup.sync()
    assert message_count(dst_client, "Merged") == 4
    # the user moves A's message into a new folder C and deletes A (Dovecot: C has its own UIDVALIDITY)
    seed(src_client, "C", [SeedMessage(simple_message(1)), SeedMessage(simple_message(20))])
    src_client.delete_folder("A")
    report = setup.sync()
    assert [f.renamed_from for f in report.folders if f.source == "C"] == [None]
    assert "Merged" in _names(dst_client)
    assert message_count(dst_client, "Merged") == 4  # B's copies stay where B goes
    assert message_count(dst_client, "C") == 2
    assert setup.verify().clean


def test_a_folder_still_on_the_source_but_no_longer_selected_is_not_renamed(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    src_user: LabUser,
    dst_user: LabUser,
    src_client: IMAPClient,
    dst_client: IMAPClient,
) -> None:
    seed(src_client, "Work", [SeedMessage(simple_message(1)), SeedMessage(simple_message(2))])
    setup = make_setup(source_server, src_user, dest_server, dst_user, pair_options="folders: {exclude: [Everything]}")
    setup.sync()
    # a folder holding every message (like Gmail's All Mail) is selected instead of Work: Work is no
    # longer mapped but still exists on the source; it was not renamed
    seed(src_client, "Everything", [SeedMessage(simple_message(i)) for i in (1, 2, 3)])
    setup.config_path.write_text(
        setup.config_path.read_text().replace("exclude: [Everything]", "exclude: [Work]"), encoding="utf-8"
    )
    report = setup.sync()
    assert [f.renamed_from for f in report.folders if f.source == "Everything"] == [None]
    assert "Work" in _names(dst_client) and message_count(dst_client, "Work") == 2
    assert message_count(dst_client, "Everything") == 3
