"""The planner is pure: these tests need no server."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from mailmirror.engine.planner import (
    DestinationMessage,
    Policy,
    SourceMessage,
    destination_flags,
    group_flag_changes,
    plan_folder,
)
from mailmirror.state.records import SyncedMessage

WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def source(uid: int, fingerprint: str = "", size: int = 100, flags: tuple[str, ...] = ()) -> SourceMessage:
    return SourceMessage(uid, size, frozenset(flags), WHEN, fingerprint or f"fp{uid}/{size}")


def done(uid: int, dst_uid: int, flags: tuple[str, ...] = ()) -> SyncedMessage:
    return SyncedMessage(uid, dst_uid, "done", f"fp{uid}/100", 100, frozenset(flags))


def test_new_messages_are_copied_with_their_flags_minus_recent() -> None:
    plan = plan_folder([source(1, flags=("\\Seen", "\\Recent", "$Forwarded"))], {1: frozenset()}, {}, None, Policy())
    assert [c.message.uid for c in plan.copy] == [1]
    assert plan.copy[0].flags == {"\\Seen", "$Forwarded"}


def test_message_already_on_destination_is_adopted_not_copied() -> None:
    destination = [DestinationMessage(7, "same/100", frozenset({"\\Seen"}))]
    plan = plan_folder([source(1, "same/100", flags=("\\Seen",))], {}, {}, destination, Policy())
    assert plan.copy == []
    assert [(a.message.uid, a.dst_uid) for a in plan.adopt] == [(1, 7)]
    assert plan.flag_changes == []


def test_adopted_message_gets_the_source_flags() -> None:
    destination = [DestinationMessage(7, "same/100", frozenset({"\\Flagged"}))]
    plan = plan_folder([source(1, "same/100", flags=("\\Seen",))], {}, {}, destination, Policy())
    [change] = plan.flag_changes
    assert change.dst_uid == 7 and change.add == {"\\Seen"} and change.remove == {"\\Flagged"}


def test_two_identical_source_messages_and_one_on_destination_copy_one() -> None:
    destination = [DestinationMessage(3, "dup/100", frozenset())]
    plan = plan_folder([source(1, "dup/100"), source(2, "dup/100")], {}, {}, destination, Policy())
    assert len(plan.adopt) == 1 and len(plan.copy) == 1


def test_destination_message_claimed_by_the_state_is_not_adopted_again() -> None:
    destination = [DestinationMessage(3, "dup/100", frozenset())]
    synced = {1: SyncedMessage(1, 3, "done", "dup/100", 100, frozenset())}
    plan = plan_folder([source(2, "dup/100")], {1: frozenset(), 2: frozenset()}, synced, destination, Policy())
    assert plan.adopt == [] and len(plan.copy) == 1


def test_flag_resync_is_a_diff_against_flags_last_synced() -> None:
    synced = {1: done(1, 11, ("\\Seen",)), 2: done(2, 12, ("\\Seen",)), 3: done(3, 13)}
    current = {1: frozenset({"\\Seen"}), 2: frozenset({"\\Seen", "\\Flagged"}), 3: frozenset({"\\Seen"})}
    plan = plan_folder([], current, synced, None, Policy())
    changes = {c.dst_uid: (c.add, c.remove) for c in plan.flag_changes}
    assert changes == {12: ({"\\Flagged"}, frozenset()), 13: ({"\\Seen"}, frozenset())}
    assert group_flag_changes(plan.flag_changes) == {
        (frozenset({"\\Flagged"}), frozenset()): [12],
        (frozenset({"\\Seen"}), frozenset()): [13],
    }


def test_flag_sync_off_plans_no_flag_changes_and_copies_without_flags() -> None:
    synced = {1: done(1, 11)}
    plan = plan_folder(
        [source(2, flags=("\\Seen",))], {1: frozenset({"\\Seen"})}, synced, None, Policy(sync_flags=False)
    )
    assert plan.flag_changes == [] and plan.copy[0].flags == frozenset()


def test_expunged_source_message_plans_nothing() -> None:
    plan = plan_folder([], {}, {1: done(1, 11, ("\\Seen",))}, None, Policy())
    assert plan.flag_changes == [] and plan.copy == []


def test_appendlimit_fails_with_reason_and_max_size_skips() -> None:
    plan = plan_folder(
        [source(1, size=5000), source(2, size=50), source(3, size=700)],
        {},
        {},
        None,
        Policy(append_limit=1000, max_size=600),
    )
    assert [c.message.uid for c in plan.copy] == [2]
    assert [(s.src_uid, "max_size" in s.reason) for s in plan.skip] == [(1, True), (3, True)]
    plan = plan_folder([source(1, size=5000)], {}, {}, None, Policy(append_limit=1000))
    assert plan.fail[0].src_uid == 1 and "APPENDLIMIT of 1000" in plan.fail[0].reason


def test_keywords_the_destination_refuses_are_dropped_and_reported() -> None:
    permanent = frozenset({"\\Seen", "\\Flagged"})
    flags, dropped = destination_flags({"\\Seen", "$Label1", "\\Recent", "\\Answered"}, permanent)
    assert flags == {"\\Seen", "\\Answered"} and dropped == {"$Label1"}
    plan = plan_folder([source(1, flags=("$Label1",))], {}, {}, None, Policy(destination_permanent_flags=permanent))
    assert plan.dropped_keywords == {"$Label1"}


FINGERPRINTS = st.sampled_from(["a/1", "b/1", "c/2", "d/3"])


@given(
    sources=st.lists(FINGERPRINTS, max_size=12),
    destinations=st.lists(FINGERPRINTS, max_size=12),
    synced_count=st.integers(min_value=0, max_value=12),
)
def test_every_source_message_is_copied_or_adopted_exactly_once(
    sources: list[str], destinations: list[str], synced_count: int
) -> None:
    """Property: no message is lost (each new source message is copied or adopted), no destination
    message is adopted twice, and copies are exactly the multiset difference (no duplicates)."""
    messages = [source(uid, fp) for uid, fp in enumerate(sources, start=1)]
    synced_count = min(synced_count, len(messages), len(destinations))
    synced = {
        m.uid: SyncedMessage(m.uid, 100 + i, "done", m.fingerprint, 1, frozenset())
        for i, m in enumerate(messages[:synced_count])
    }
    dest = [DestinationMessage(100 + i, fp, frozenset()) for i, fp in enumerate(destinations)]
    new = messages[synced_count:]
    plan = plan_folder(new, {m.uid: frozenset() for m in messages}, synced, dest, Policy())
    handled = [c.message.uid for c in plan.copy] + [a.message.uid for a in plan.adopt]
    assert sorted(handled) == [m.uid for m in new]
    adopted_uids = [a.dst_uid for a in plan.adopt]
    assert len(adopted_uids) == len(set(adopted_uids))
    assert not set(adopted_uids) & {s.dst_uid for s in synced.values()}
    unclaimed = Counter(d.fingerprint for d in dest if d.uid not in {s.dst_uid for s in synced.values()})
    wanted = Counter(m.fingerprint for m in new)
    assert len(plan.copy) == sum((wanted - unclaimed).values())
