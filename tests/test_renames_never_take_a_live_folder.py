"""Review (h11): a rename found by fingerprint after a UIDVALIDITY change must never rename a destination
folder that another source folder still fills (a merge) or whose source folder still exists."""

from __future__ import annotations

import pytest
from imapclient import IMAPClient

from mailmirror.lab.dovecot import SeedMessage, seed
from tests.support import Mirror, message_count, simple_message

pytestmark = pytest.mark.dovecot


def _names(client: IMAPClient) -> set[str]:
    return {name for _flags, _delimiter, name in client.list_folders()}


def test_a_merge_target_is_not_renamed_away_from_the_folder_still_filling_it(mirror: Mirror) -> None:
    seed(mirror.src, "A", [SeedMessage(simple_message(1))])
    seed(mirror.src, "B", [SeedMessage(simple_message(10 + i)) for i in range(3)])
    setup = mirror.setup(pair_options="folders: {map: {A: Merged, B: Merged}}")
    setup.sync()
    assert message_count(mirror.dst, "Merged") == 4
    # the user moves A's message into a new folder C and deletes A (Dovecot: C has its own UIDVALIDITY)
    seed(mirror.src, "C", [SeedMessage(simple_message(1)), SeedMessage(simple_message(20))])
    mirror.src.delete_folder("A")
    report = setup.sync()
    assert [f.renamed_from for f in report.folders if f.source == "C"] == [None]
    assert "Merged" in _names(mirror.dst)
    assert message_count(mirror.dst, "Merged") == 4  # B's copies stay where B goes
    assert message_count(mirror.dst, "C") == 2
    assert setup.verify().clean


def test_a_folder_still_on_the_source_but_no_longer_selected_is_not_renamed(mirror: Mirror) -> None:
    seed(mirror.src, "Work", [SeedMessage(simple_message(1)), SeedMessage(simple_message(2))])
    setup = mirror.setup(pair_options="folders: {exclude: [Everything]}")
    setup.sync()
    # a folder holding every message (like Gmail's All Mail) is selected instead of Work: Work is no
    # longer mapped but still exists on the source; it was not renamed
    seed(mirror.src, "Everything", [SeedMessage(simple_message(i)) for i in (1, 2, 3)])
    setup.config_path.write_text(
        setup.config_path.read_text().replace("exclude: [Everything]", "exclude: [Work]"), encoding="utf-8"
    )
    report = setup.sync()
    assert [f.renamed_from for f in report.folders if f.source == "Everything"] == [None]
    assert "Work" in _names(mirror.dst) and message_count(mirror.dst, "Work") == 2
    assert message_count(mirror.dst, "Everything") == 3
