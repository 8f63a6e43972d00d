"""The model harness's simulated process crash drops what a real one drops, and no more."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from mailmirror.state.locks import DestinationLock
from tests.model.harness import Harness, model_message
from tests.model.imap_model import Fault


def seeded(messages: int) -> Harness:
    harness = Harness(pair_options="transfer: {batch_messages: 1, prefetch: 0}")
    for n in range(messages):
        harness.world.source.deliver("alice", "INBOX", model_message(n), (), harness.world.now())
    return harness


def test_a_crashed_pass_holds_no_lock_and_writes_no_more_state() -> None:
    harness = seeded(3)
    harness.world.destination.arm(Fault("crash", 2, "APPEND"))
    assert harness.crashing_pass() is None
    harness.world.destination.disarm()
    harness.assert_no_process_left()
    with contextlib.closing(sqlite3.connect(harness.directory / "state.db")) as db:
        # the engine's finally block records the run's end; a dead process does not
        assert db.execute("SELECT finished_at, outcome FROM runs").fetchall() == [(None, None)]
    assert harness.run_pass().complete
    harness.cleanup()


def test_a_lock_left_held_fails_the_next_pass_at_once_instead_of_waiting_for_ever() -> None:
    harness = seeded(1)
    config = harness.config
    held = DestinationLock(config.daemon.lock_dir, config.accounts["dst"].identity, "dst", "a pass that never ended")
    assert held.acquire()
    try:
        with pytest.raises(AssertionError, match="still holds"):
            harness.run_pass()
    finally:
        held.release()
        harness.cleanup()
