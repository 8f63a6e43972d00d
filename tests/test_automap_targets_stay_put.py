"""Review (h11, fixed by h12): automap must not send a source folder elsewhere on the second pass than on the first
because the first pass created a destination folder the server marks with a special use."""

from __future__ import annotations

import pytest

from mailmirror.engine.mapping import Namespace, map_folders
from mailmirror.imap.types import Folder
from mailmirror.lab.dovecot import SeedMessage, seed
from tests.conftest import MakeMirror, MakeServer
from tests.support import Mirror, message_count, simple_message


@pytest.fixture
def mirror(make_server: MakeServer, make_mirror: MakeMirror) -> Mirror:
    """In this module, the source of the mirror marks "Sent Items" as \\Sent ("Sent" is an ordinary folder
    there)."""
    return make_mirror(source=make_server(special_use=(("Sent Items", "\\Sent"),)))


@pytest.mark.dovecot
def test_automap_targets_stay_put_after_the_first_pass_creates_a_special_use_folder(mirror: Mirror) -> None:
    seed(mirror.src, "Sent Items", [SeedMessage(simple_message(i)) for i in range(3)])
    seed(mirror.src, "Sent", [SeedMessage(simple_message(10 + i)) for i in range(2)])
    setup = mirror.setup()
    first = setup.sync()
    assert first.error is None
    targets = {folder.source: folder.destination for folder in first.folders}
    # the destination server marks the "Sent" the first pass created as \Sent (Dovecot's default config)
    second = setup.sync()
    assert second.error is None and second.copied == 0
    assert {folder.source: folder.destination for folder in second.folders} == targets
    total = sum(message_count(mirror.dst, name) for name in set(targets.values()) if name != "INBOX")
    assert total == 5
    assert setup.verify().clean


@pytest.mark.dovecot
def test_automap_target_stays_put_when_a_mail_client_creates_the_special_use_folder_mid_migration(
    mirror: Mirror,
) -> None:
    seed(mirror.src, "Sent Items", [SeedMessage(simple_message(i)) for i in range(3)])
    setup = mirror.setup()
    first = setup.sync()
    assert first.error is None and first.copied == 3
    assert {f.source: f.destination for f in first.folders}["Sent Items"] == "Sent Items"
    mirror.dst.create_folder("Sent")  # a mail client's first send: Dovecot marks it \Sent
    second = setup.sync()
    assert second.error is None and second.copied == 0
    assert {f.source: f.destination for f in second.folders}["Sent Items"] == "Sent Items"
    assert message_count(mirror.dst, "Sent Items") == 3 and message_count(mirror.dst, "Sent") == 0
    assert setup.verify().clean


@pytest.mark.dovecot
def test_an_explicit_rule_still_wins_over_the_folder_the_state_knows(mirror: Mirror) -> None:
    seed(mirror.src, "Sent Items", [SeedMessage(simple_message(i)) for i in range(2)])
    setup = mirror.setup()
    assert setup.sync().error is None
    text = setup.config_path.read_text()
    rule = "    destination: dst\n    folders:\n      map:\n        Sent Items: Outbox\n"
    setup.config_path.write_text(text.replace("    destination: dst\n", rule, 1))
    second = setup.sync()
    assert second.error is None
    assert {f.source: (f.destination, f.rule) for f in second.folders}["Sent Items"] == ("Outbox", "map")


def _sent_items_mapping(destination: list[Folder], known: dict[str, str]) -> tuple[str, str]:
    ns = Namespace("/", "")
    source = [Folder("INBOX", "/", frozenset()), Folder("Sent Items", "/", frozenset({"\\Sent"}))]
    mappings = map_folders(source, destination, ns, ns, known=known)
    return next((m.destination, m.rule) for m in mappings if m.source == "Sent Items")


def test_a_known_destination_folder_sticks_only_while_it_exists_and_receives_no_other_folder() -> None:
    sent = Folder("Sent", "/", frozenset({"\\Sent"}))
    items = Folder("Sent Items", "/", frozenset())
    assert _sent_items_mapping([sent, items], {"Sent Items": "Sent Items"}) == ("Sent Items", "default")
    assert _sent_items_mapping([sent], {"Sent Items": "Sent Items"}) == ("Sent", "automap")  # it was deleted
    assert _sent_items_mapping([sent, items], {}) == ("Sent", "automap")
    old = Folder("Old Sent", "/", frozenset())
    assert _sent_items_mapping([sent, old], {"Sent Items": "Old Sent"}) == ("Old Sent", "automap")
