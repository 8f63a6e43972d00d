"""Review (h11, fixed by h12): automap must not send a source folder elsewhere on the second pass than on the first
because the first pass created a destination folder the server marks with a special use."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from imapclient import IMAPClient

from mailmirror.engine.mapping import Namespace, map_folders
from mailmirror.imap.session import Folder
from mailmirror.lab.dovecot import DovecotServer, LabUser, SeedMessage, seed
from tests.support import make_setup, message_count, simple_message


@pytest.mark.dovecot
def test_automap_targets_stay_put_after_the_first_pass_creates_a_special_use_folder(
    make_server: Callable[..., DovecotServer],
    dest_server: DovecotServer,
    dst_user: LabUser,
    dst_client: IMAPClient,
) -> None:
    source_server = make_server(special_use=(("Sent Items", "\\Sent"),))  # "Sent" is an ordinary folder there
    src_user = source_server.add_user()
    src_client = source_server.connect(src_user)
    seed(src_client, "Sent Items", [SeedMessage(simple_message(i)) for i in range(3)])
    seed(src_client, "Sent", [SeedMessage(simple_message(10 + i)) for i in range(2)])
    setup = make_setup(source_server, src_user, dest_server, dst_user)
    first = setup.sync()
    assert first.error is None
    targets = {folder.source: folder.destination for folder in first.folders}
    # the destination server marks the "Sent" the first pass created as \Sent (Dovecot's default config)
    second = setup.sync()
    assert second.error is None and second.copied == 0
    assert {folder.source: folder.destination for folder in second.folders} == targets
    total = sum(message_count(dst_client, name) for name in set(targets.values()) if name != "INBOX")
    assert total == 5
    assert setup.verify().clean


@pytest.mark.dovecot
def test_automap_target_stays_put_when_a_mail_client_creates_the_special_use_folder_mid_migration(
    make_server: Callable[..., DovecotServer],
    dest_server: DovecotServer,
    dst_user: LabUser,
    dst_client: IMAPClient,
) -> None:
    source_server = make_server(special_use=(("Sent Items", "\\Sent"),))
    src_user = source_server.add_user()
    seed(source_server.connect(src_user), "Sent Items", [SeedMessage(simple_message(i)) for i in range(3)])
    setup = make_setup(source_server, src_user, dest_server, dst_user)
    first = setup.sync()
    assert first.error is None and first.copied == 3
    assert {f.source: f.destination for f in first.folders}["Sent Items"] == "Sent Items"
    dst_client.create_folder("Sent")  # a mail client's first send: Dovecot marks it \Sent
    second = setup.sync()
    assert second.error is None and second.copied == 0
    assert {f.source: f.destination for f in second.folders}["Sent Items"] == "Sent Items"
    assert message_count(dst_client, "Sent Items") == 3 and message_count(dst_client, "Sent") == 0
    assert setup.verify().clean


@pytest.mark.dovecot
def test_an_explicit_rule_still_wins_over_the_folder_the_state_knows(
    make_server: Callable[..., DovecotServer],
    dest_server: DovecotServer,
    dst_user: LabUser,
    dst_client: IMAPClient,
) -> None:
    source_server = make_server(special_use=(("Sent Items", "\\Sent"),))
    src_user = source_server.add_user()
    seed(source_server.connect(src_user), "Sent Items", [SeedMessage(simple_message(i)) for i in range(2)])
    setup = make_setup(source_server, src_user, dest_server, dst_user)
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
