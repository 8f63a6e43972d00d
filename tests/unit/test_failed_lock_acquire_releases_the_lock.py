"""Review (h11): the destination lock never stays held after an acquire that failed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mailmirror.config.mailboxes import mailbox_identity
from mailmirror.state.locks import DestinationLock


def test_a_holder_note_that_cannot_be_written_neither_fails_nor_wedges_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = mailbox_identity("mail.example.org", 993, "alice")

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "pwrite", full)  # the lock directory's file system is full
        first = DestinationLock(tmp_path, identity, "dst", "pair 'a'")
        assert first.acquire()
        first.release()
    second = DestinationLock(tmp_path, identity, "dst", "pair 'b'")
    assert second.acquire()  # nothing left held by the first
    second.release()
