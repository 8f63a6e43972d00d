"""Review (h11): in move mode (deletions.source: after_copy) a message the destination stored with other
bytes (Cyrus munge8bit) is not deleted from the source: the source holds the only original."""

from __future__ import annotations

import pytest
from imapclient import IMAPClient

from mailmirror.lab.dovecot import DovecotServer, LabUser
from tests.rewrite_proxy import ServerMask
from tests.support import message_count, simple_message
from tests.test_server_defects import eight_bit_message, masked_setup

pytestmark = pytest.mark.dovecot


def test_move_keeps_on_the_source_what_the_destination_altered(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    src_user: LabUser,
    dst_user: LabUser,
    src_client: IMAPClient,
) -> None:
    for index in (1, 2):
        src_client.append("INBOX", simple_message(index))
    src_client.append("INBOX", eight_bit_message(3))
    with ServerMask(dest_server.port, munge_8bit=True) as mask:
        setup = masked_setup(
            source_server,
            src_user,
            dest_server,
            dst_user,
            destination_mask=mask,
            pair_options="deletions: {source: after_copy}",
        )
        first = setup.sync()
        assert first.error is None and first.copied == 3 and first.altered == 1
        assert message_count(src_client) == 1  # the two kept intact are moved; the altered one stays
        src_client.select_folder("INBOX", readonly=True)
        (kept,) = src_client.fetch(src_client.search(), ["BODY.PEEK[]"]).values()
        assert kept[b"BODY[]"] == eight_bit_message(3)

        again = setup.sync()  # and stays on later passes, never copied again
        assert again.error is None and again.copied == 0
        assert message_count(src_client) == 1
