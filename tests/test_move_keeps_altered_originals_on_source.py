"""Review (h11): in move mode (deletions.source: after_copy) a message the destination stored with other
bytes (Cyrus munge8bit) is not deleted from the source: the source holds the only original."""

from __future__ import annotations

import pytest

from tests.rewrite_proxy import ServerMask
from tests.support import Mirror, message_count, simple_message
from tests.test_server_defects import eight_bit_message, masked_setup

pytestmark = pytest.mark.dovecot


def test_move_keeps_on_the_source_what_the_destination_altered(mirror: Mirror) -> None:
    for index in (1, 2):
        mirror.src.append("INBOX", simple_message(index))
    mirror.src.append("INBOX", eight_bit_message(3))
    with ServerMask(mirror.dest_server.port, munge_8bit=True) as mask:
        setup = masked_setup(
            mirror.source_server,
            mirror.src_user,
            mirror.dest_server,
            mirror.dst_user,
            destination_mask=mask,
            pair_options="deletions: {source: after_copy}",
        )
        first = setup.sync()
        assert first.error is None and first.copied == 3 and first.altered == 1
        assert message_count(mirror.src) == 1  # the two kept intact are moved; the altered one stays
        mirror.src.select_folder("INBOX", readonly=True)
        (kept,) = mirror.src.fetch(mirror.src.search(), ["BODY.PEEK[]"]).values()
        assert kept[b"BODY[]"] == eight_bit_message(3)

        again = setup.sync()  # and stays on later passes, never copied again
        assert again.error is None and again.copied == 0
        assert message_count(mirror.src) == 1
