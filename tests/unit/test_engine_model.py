"""The engine against a model of IMAP: a Hypothesis state machine, and fault cases that need a server to
misbehave at an exact point.

The machine drives the real engine (PairPass with a real StateStore on a temporary SQLite file) against
the in-memory servers of tests/model: mail arrives, flags change, messages are expunged, folders
appear, UIDVALIDITY is reset on either side, the state database is lost, and passes run with
capabilities switched off, connections cut at the k-th command, commands refused, the process crashed
after k appends. After every pass that completed, the destination holds every source message exactly once
with its flags and INTERNALDATE, and an immediate second pass copies nothing.

CI runs a few dozen examples; MAILMIRROR_MODEL_EXAMPLES=5000 runs that many (docs/testing.md).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mailmirror.engine.outcome import PairReport
from mailmirror.errors import Stopped
from tests.model.harness import Harness, MessageKey, contents, folder_mapping, internaldate, model_message
from tests.model.imap_model import OPTIONAL_CAPABILITIES, Fault, World

#: Cut APPENDs executed after the client gave up (late writes), resolved by the late-write watch of
#: h1-exactly-once (transfer.late_write_window). False runs the machine without them.
LATE_WRITES = True

#: A defect this machine found: a UIDVALIDITY reset dropped a folder's late-write watches with its UID map
#: (a late copy that landed before stayed a duplicate). Fixed on main (df2ee5a, watches survive a
#: UIDVALIDITY change); True would keep resets away from open watches and expect the pinning test to fail.
WATCH_DROPPED_ON_RESET = False
#: A limit the machine found (docs/testing.md): a message deleted on the source while its late write is
#: watched for, then a UIDVALIDITY reset of the folder before the watch ended: the map is rebuilt by
#: fingerprint without it, the watch has no copy of ours to compare with, and a late copy stays. True keeps
#: such resets out of the machine and expects the pinning test to fail.
EXPUNGED_WATCH_LOST_ON_RESET = True
#: Limits, not checked by the machine (docs/testing.md): a state database lost during a late-write window
#: loses the watch (a late copy stays); in move mode a byte-identical message delivered again after the
#: first was moved is adopted as that copy (the destination keeps one).

EXAMPLES = int(os.environ.get("MAILMIRROR_MODEL_EXAMPLES", "100"))
SOURCE_FOLDERS = ("Work", "Work/Projects", "Archive", "Lists")
FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Draft", "$Forwarded", "$label1")
COMMANDS = ("APPEND", "FETCH", "SEARCH", "SELECT", "EXAMINE", "STORE", "LIST", "STATUS", "CREATE", "LOGIN", None)

flag_sets = st.frozensets(st.sampled_from(FLAGS), max_size=3)


class EngineAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.harness: Harness | None = None
        self.serial = 0
        self.mode = "keep"
        self.delivered: dict[str, Counter[bytes]] = {"INBOX": Counter()}  # every message ever put in a folder
        self.deleted_by_user: dict[str, Counter[bytes]] = {}  # expunged on the source by the user
        self.forgetful = False  # state lost or UIDVALIDITY reset: mirror may keep copies of expunged ones
        self.armed = False
        self.crash_armed = False
        self.changing = False  # the source changes during the next pass
        self.expunged_while_watching = False  # since the last pass that ended without late-write watches

    @property
    def h(self) -> Harness:
        assert self.harness is not None
        return self.harness

    @initialize(
        mode=st.sampled_from(["keep", "mirror", "move"]),
        separator=st.sampled_from(["/", "."]),
        # prefetch 0: a fetch thread running ahead by a varying number of batches would make the source's
        # k-th command, and so a whole example, differ between replays (Hypothesis needs them equal)
        prefetch=st.just(0),
        batch=st.integers(1, 4),
        stale_views=st.booleans(),
    )
    def configure(self, mode: str, separator: str, prefetch: int, batch: int, stale_views: bool) -> None:
        self.mode = mode
        world = World(destination_separator=separator)
        world.destination.stale_views = stale_views
        deletions = "{source: after_copy}" if mode == "move" else f"{{destination: {mode}, max_share: 1.0}}"
        # backoff 0.2s: a retry that is due after the worker's next look at its queue, every time (with 1ms
        # whether it went before another folder's task depended on the clock, and replays differed)
        transfer = f"{{workers: 1, batch_messages: {batch}, prefetch: {prefetch}, retries: 2, backoff: 0.2s}}"
        self.harness = Harness(world, pair_options=f"deletions: {deletions}\ntransfer: {transfer}")

    def teardown(self) -> None:
        if self.harness is not None:
            self.harness.cleanup()

    # -- the user's side -----------------------------------------------------------------------------

    @rule(
        data=st.data(),
        count=st.integers(1, 5),
        flags=flag_sets,
        message_id=st.booleans(),
        size=st.integers(0, 300),
        zone=st.integers(-3, 3),
    )
    def deliver(
        self, data: st.DataObject, count: int, flags: frozenset[str], message_id: bool, size: int, zone: int
    ) -> None:
        folder = data.draw(st.sampled_from(sorted(self.h.source)), label="folder")
        for _ in range(count):
            self.serial += 1
            raw = model_message(self.serial, message_id=message_id, size=size + self.serial % 7)
            self.h.world.source.deliver("alice", folder, raw, flags, internaldate(self.serial, zone))
            self.delivered.setdefault(folder, Counter())[raw] += 1

    @precondition(lambda self: self.mode != "move" and self._live())
    @rule(data=st.data(), flags=flag_sets)
    def deliver_same_message_again(self, data: st.DataObject, flags: frozenset[str]) -> None:
        """A byte-identical copy (a list message received twice, a client's copy): both must arrive."""
        _folder, message = data.draw(st.sampled_from(self._live()), label="message")
        folder = data.draw(st.sampled_from(sorted(self.h.source)), label="into")
        self.h.world.source.deliver("alice", folder, message.raw, flags, message.internaldate)
        self.delivered.setdefault(folder, Counter())[message.raw] += 1

    @precondition(lambda self: self._live())
    @rule(data=st.data(), flags=flag_sets)
    def change_flags(self, data: st.DataObject, flags: frozenset[str]) -> None:
        folder, message = data.draw(st.sampled_from(self._live()), label="message")
        self.h.source[folder].set_flags(message.uid, flags)

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def expunge(self, data: st.DataObject) -> None:
        folder, message = data.draw(st.sampled_from(self._live()), label="message")
        self.h.source[folder].expunge([message.uid])
        self.deleted_by_user.setdefault(folder, Counter())[message.raw] += 1
        self.expunged_while_watching = True

    @rule(name=st.sampled_from(SOURCE_FOLDERS))
    def create_folder(self, name: str) -> None:
        self.h.world.source.create("alice", name)
        for created in self.h.source:
            self.delivered.setdefault(created, Counter())

    @precondition(
        lambda self: (
            not (
                (WATCH_DROPPED_ON_RESET or (EXPUNGED_WATCH_LOST_ON_RESET and self.expunged_while_watching))
                and self._watches_open()
            )
        )
    )
    @rule(data=st.data(), side=st.sampled_from(["source", "destination"]))
    def reset_uidvalidity(self, data: st.DataObject, side: str) -> None:
        server = self.h.world.source if side == "source" else self.h.world.destination
        username = "alice" if side == "source" else "backup"
        folder = data.draw(st.sampled_from(sorted(server.accounts[username])), label="folder")
        server.reset_uidvalidity(username, folder)
        self.forgetful = True

    @precondition(lambda self: not self._watches_open())
    @rule()
    def lose_state_database(self) -> None:
        self.h.lose_state()
        self.forgetful = True

    # -- faults for the next pass -----------------------------------------------------------------------

    @rule(
        side=st.sampled_from(["source", "destination"]),
        action=st.sampled_from(["cut", "no", "throttle"]),
        at=st.integers(1, 12),
        command=st.sampled_from(COMMANDS),
        cut_append=st.sampled_from(["before", "after", "late"] if LATE_WRITES else ["before", "after"]),
        late_after=st.one_of(st.none(), st.integers(0, 20)),
    )
    def arm_fault(
        self, side: str, action: str, at: int, command: str | None, cut_append: str, late_after: int | None
    ) -> None:
        server = self.h.world.source if side == "source" else self.h.world.destination
        server.arm(Fault(action, at, command, cut_append, late_after))  # type: ignore[arg-type]
        self.armed = True

    @rule(
        at=st.integers(1, 6),
        cut_append=st.sampled_from(["before", "after", "late"] if LATE_WRITES else ["before", "after"]),
        late_after=st.one_of(st.none(), st.integers(0, 20)),
    )
    def arm_cut_append(self, at: int, cut_append: str, late_after: int | None) -> None:
        """The destination's connection cut during its k-th APPEND of the next pass."""
        self.h.world.destination.arm(Fault("cut", at, "APPEND", cut_append, late_after))  # type: ignore[arg-type]
        self.armed = True

    @rule(appends=st.integers(1, 6))
    def arm_crash_after_appends(self, appends: int) -> None:
        """The process dies right after the destination stored its k-th APPEND, before the answer."""
        self.h.world.destination.arm(Fault("crash", appends, "APPEND"))
        self.crash_armed = True

    @rule(data=st.data(), at=st.integers(1, 12), expunge=st.booleans())
    def arm_change_during_pass(self, data: st.DataObject, at: int, expunge: bool) -> None:
        """At the source's k-th command of the next pass, new mail arrives (or a message is expunged)."""
        folder = data.draw(st.sampled_from(sorted(self.h.source)), label="folder")
        if expunge:
            self.h.world.source.arm(Fault("hook", at, hook=lambda: self._expunge_first(folder)))
        else:
            self.serial += 1
            raw, date = model_message(self.serial), internaldate(self.serial)
            self.h.world.source.arm(Fault("hook", at, hook=lambda: self._deliver_now(folder, raw, date)))
        self.changing = True

    def _deliver_now(self, folder: str, raw: bytes, date: datetime) -> None:
        if folder in self.h.source:
            self.h.world.source.deliver("alice", folder, raw, (), date)
            self.delivered.setdefault(folder, Counter())[raw] += 1

    def _expunge_first(self, folder: str) -> None:
        box = self.h.source.get(folder)
        if box is not None and box.messages:
            self.deleted_by_user.setdefault(folder, Counter())[box.messages[min(box.messages)].raw] += 1
            box.expunge([min(box.messages)])
            self.expunged_while_watching = True

    @precondition(lambda self: LATE_WRITES and self.harness is not None and self.h.world.destination.late)
    @rule()
    def execute_late_appends(self) -> None:
        self.h.world.destination.execute_late()

    @rule()
    def late_write_window_passes(self) -> None:
        """transfer.late_write_window goes by (the model's clock): the server ran what it still held."""
        self.h.window_passes()

    # -- passes --------------------------------------------------------------------------------------

    @rule(
        source_off=st.frozensets(st.sampled_from(OPTIONAL_CAPABILITIES)),
        destination_off=st.frozensets(st.sampled_from(OPTIONAL_CAPABILITIES)),
    )
    def run_pass(self, source_off: frozenset[str], destination_off: frozenset[str]) -> None:
        for server, off in ((self.h.world.source, source_off), (self.h.world.destination, destination_off)):
            server.capabilities = set(server.capabilities | set(OPTIONAL_CAPABILITIES)) - off
        faulty = self.armed or self.crash_armed
        changing = self.changing
        report = self.h.crashing_pass()
        if not self._watches_open():
            self.expunged_while_watching = False
        fired = [
            f.action for server in (self.h.world.source, self.h.world.destination) for f in server.faults if f.fired
        ]
        self._disarm()
        for action in fired:
            event(f"fault fired: {action}")
        if self.h.world.destination.late:
            event("late appends pending after a pass")
        if report is None:
            event("pass: process crashed")
            return  # the process died: the next pass starts from what it left
        outcome = "complete" if report.complete else "incomplete"
        event(f"pass: {outcome}, {'copied' if report.copied else 'copied nothing'}")
        if changing:
            return  # what changed during the pass is the next pass's to copy
        if watching(report):
            self.operator_deletes_late_duplicates(report)
            return  # exactly once is proven when the window ends (exit 75 until then)
        if not report.complete:
            assert faulty or self.h.world.destination.late, (
                f"a pass without faults did not complete: {describe(report)}"
            )
            return
        self.check_mirrored(report)
        if self.h.world.destination.late:
            return  # a late APPEND may land any time: the next pass must clean up after it
        again = self.h.run_pass()
        assert again.complete or watching(again), f"second pass incomplete: {describe(again)}"
        assert again.copied == 0, f"the second pass copied {again.copied}: {describe(again)}"
        self.check_mirrored(again)

    @rule()
    def run_pass_with_every_capability(self) -> None:
        self.run_pass(frozenset(), frozenset())

    def _disarm(self) -> None:
        for server in (self.h.world.source, self.h.world.destination):
            server.disarm()
        self.armed = self.crash_armed = self.changing = False

    # -- checks --------------------------------------------------------------------------------------

    def check_mirrored(self, report: PairReport) -> None:
        """Every source message on the destination exactly once, with its flags and INTERNALDATE."""
        mapping = folder_mapping(report)
        for name, box in self.h.source.items():
            assert name in mapping, f"source folder {name} is missing from the report: {describe(report)}"
            target = self.h.destination.get(mapping[name])
            assert target is not None, f"destination folder {mapping[name]} of {name} does not exist"
            source, destination = contents(box), contents(target)
            if self.mode == "move":
                self.check_moved(name, source, destination)
                continue
            missing = source - destination
            assert not missing, f"{name}: {sum(missing.values())} source messages not (so) on the destination"
            raws = Counter(raw for raw, _flags, _date in destination.elements())
            delivered = self.delivered.get(name, Counter())
            extra = raws - delivered
            assert not extra, f"{name}: {sum(extra.values())} destination messages more than were ever delivered"
            live = Counter(raw for raw, _flags, _date in source.elements())
            expunged = delivered - live
            if (self.mode == "mirror" and not self.forgetful) or not expunged:
                assert source == destination, (
                    f"{name}: destination differs: {sum((destination - source).values())} extra messages"
                )

    def operator_deletes_late_duplicates(self, report: PairReport) -> None:
        """Without UIDPLUS the engine leaves late duplicates of its own to the operator ("delete them by
        hand"): the operator does, keeping the first copy."""
        if not any("delete them by hand" in (f.unresolved or "") for f in report.folders):
            return
        for name, target in folder_mapping(report).items():
            box = self.h.destination.get(target)
            if box is None:
                continue
            seen: Counter[bytes] = Counter()
            wanted = self.delivered.get(name, Counter())
            for message in sorted(box.messages.values(), key=lambda m: m.uid):
                seen[message.raw] += 1
                if seen[message.raw] > wanted[message.raw]:
                    box.expunge([message.uid])

    def check_moved(self, name: str, source: Counter[MessageKey], destination: Counter[MessageKey]) -> None:
        """Move: the source folder emptied, each message on the destination once (with its INTERNALDATE),
        none lost but those the user deleted before they were moved."""
        assert not source, f"{name}: {sum(source.values())} messages left on the source after a complete move"
        moved = Counter((raw, date) for raw, _flags, date in destination.elements())
        raws = Counter(raw for raw, _date in moved.elements())
        delivered = self.delivered.get(name, Counter())
        assert not raws - delivered, f"{name}: {sum((raws - delivered).values())} messages moved twice"
        lost = delivered - self.deleted_by_user.get(name, Counter()) - raws
        assert not lost, f"{name}: {sum(lost.values())} messages lost (gone from the source, not on the destination)"

    def _watches_open(self) -> bool:
        path = self.h.directory / "state.db"
        if self.harness is None or not path.exists():
            return False
        with contextlib.closing(sqlite3.connect(path)) as db:
            try:
                return bool(db.execute("SELECT COUNT(*) FROM late_writes").fetchone()[0])
            except sqlite3.OperationalError:  # no such table yet
                return False

    def _live(self) -> list[tuple[str, Any]]:
        if self.harness is None:
            return []
        return [
            (name, m)
            for name, box in sorted(self.h.source.items())
            for m in sorted(box.messages.values(), key=lambda m: m.uid)
        ]

    @invariant()
    def faults_do_not_outlive_a_pass(self) -> None:
        if self.harness is not None and not (self.armed or self.crash_armed or self.changing):
            assert not self.h.world.source.faults and not self.h.world.destination.faults


def watching(report: PairReport) -> bool:
    """The pass only lacks the end of a late-write window (or the operator's hand) to be complete."""
    return report.error is None and any(f.unresolved for f in report.folders) and not report.failed


def describe(report: PairReport) -> str:
    folders = "; ".join(
        f"{f.source}->{f.destination}: copied {f.copied}, failed {f.failed}, error {f.error}" for f in report.folders
    )
    return f"error {report.error}, copied {report.copied} [{folders}]"


# -------------------------------------------------------------- fault cases at an exact point of a pass
# (moved here from tests that patched FolderPass/Transfer methods; the Dovecot versions use the fault
# proxy or a Progress hook)

CAPABILITY_CASES = {
    "every capability": frozenset(),
    "no UIDPLUS": frozenset({"UIDPLUS"}),
    "no MULTIAPPEND, no LITERAL+": frozenset({"MULTIAPPEND", "LITERAL+"}),
    "no CONDSTORE": frozenset({"CONDSTORE", "ENABLE"}),
    "none of them": frozenset(OPTIONAL_CAPABILITIES),
}


def seeded_harness(messages: int, pair_options: str, off: frozenset[str]) -> Harness:
    harness = Harness(pair_options=pair_options)
    for server in (harness.world.source, harness.world.destination):
        server.capabilities -= off
    deliver(harness, range(messages))
    return harness


def deliver(harness: Harness, serials: range, folder: str = "INBOX") -> None:
    for n in serials:
        flags = {"\\Seen"} if n % 2 else {"$label1"}
        harness.world.source.deliver(
            "alice", folder, model_message(n, message_id=n % 5 != 0), flags, internaldate(n, n % 3)
        )


def assert_each_message_once(harness: Harness) -> None:
    for name, box in harness.source.items():
        assert contents(harness.destination[name]) == contents(box), f"{name} differs on the destination"


@pytest.mark.parametrize("off", list(CAPABILITY_CASES.values()), ids=list(CAPABILITY_CASES))
def test_pass_cut_after_its_first_batch_then_mirror_keeps_every_message(off: frozenset[str]) -> None:
    """The copied-but-unsaved messages of a cut pass are not taken for expunged (source without CONDSTORE)."""
    harness = seeded_harness(40, "deletions: {destination: mirror}\ntransfer: {batch_messages: 3, retries: 0}", off)
    harness.world.source.capabilities -= {"CONDSTORE"}
    assert harness.run_pass().complete
    deliver(harness, range(100, 106))
    cut = harness.world.destination.arm(Fault("cut", 2, "APPEND"))
    assert harness.run_pass().error is not None and cut.fired
    harness.world.destination.disarm()
    harness.run_pass()
    harness.window_passes()
    assert harness.run_pass().complete
    assert harness.run_pass().copied == 0
    assert harness.count("source") == harness.count("destination") == 46
    assert_each_message_once(harness)


@pytest.mark.parametrize("off", list(CAPABILITY_CASES.values()), ids=list(CAPABILITY_CASES))
def test_stop_between_batches_then_mirror_keeps_every_message(off: frozenset[str]) -> None:
    harness = seeded_harness(30, "deletions: {destination: mirror}\ntransfer: {batch_messages: 10}", off)
    harness.world.source.capabilities -= {"CONDSTORE"}
    assert harness.run_pass().complete
    deliver(harness, range(100, 115))
    stop = threading.Event()
    harness.world.destination.arm(Fault("hook", 1, "APPEND", hook=stop.set))  # SIGTERM during the first batch
    report = harness.run_pass(stop=stop)
    harness.world.destination.disarm()
    assert isinstance(report.error, Stopped) and 0 < report.copied < 15
    assert harness.run_pass().complete
    assert harness.run_pass().copied == 0
    assert harness.count("destination") == 45
    assert_each_message_once(harness)


@pytest.mark.parametrize("off", list(CAPABILITY_CASES.values()), ids=list(CAPABILITY_CASES))
def test_move_keeps_a_message_arriving_during_the_pass(off: frozenset[str]) -> None:
    harness = seeded_harness(5, "deletions: {source: after_copy}", off)
    late = model_message(99)
    harness.world.destination.arm(  # after the source was listed, before its copies are deleted there
        Fault(
            "hook", 1, "APPEND", hook=lambda: harness.world.source.deliver("alice", "INBOX", late, (), internaldate(99))
        )
    )
    harness.run_pass()
    harness.world.destination.disarm()
    for _ in range(3):
        harness.run_pass()
    assert harness.count("destination") == 6 and harness.count("source") == 0
    assert late in {m.raw for m in harness.destination["INBOX"].messages.values()}


@pytest.mark.parametrize("off", list(CAPABILITY_CASES.values()), ids=list(CAPABILITY_CASES))
@pytest.mark.parametrize("appends", [1, 2, 5])
def test_crash_after_appends_leaves_each_message_once(off: frozenset[str], appends: int) -> None:
    """The process dies after the destination stored the k-th APPEND, before the answer was read."""
    harness = seeded_harness(12, "transfer: {batch_messages: 2}", off)
    harness.world.destination.arm(Fault("crash", appends, "APPEND"))
    assert harness.crashing_pass() is None
    harness.world.destination.disarm()
    assert harness.count("destination") > 0
    harness.run_pass()
    harness.window_passes()  # the APPENDs of the dead process it did not find are watched until then
    report = harness.run_pass()
    assert report.complete, describe(report)
    assert harness.run_pass().copied == 0
    assert_each_message_once(harness)


@pytest.mark.parametrize("off", list(CAPABILITY_CASES.values()), ids=list(CAPABILITY_CASES))
def test_batch_stored_then_throttled_is_not_copied_again(off: frozenset[str]) -> None:
    """A server that stores a batch, then answers NO [UNAVAILABLE]: the retry finds it, copies the rest."""
    harness = seeded_harness(20, "transfer: {batch_messages: 4, backoff: 0.001s}", off)
    throttled = harness.world.destination.arm(Fault("throttle", 2, "APPEND"))
    report = harness.run_pass()
    assert throttled.fired and (report.complete or watching(report)), describe(report)
    harness.window_passes()
    assert harness.run_pass().complete
    assert harness.run_pass().copied == 0
    assert_each_message_once(harness)


def test_failure_of_a_message_expunged_before_the_folder_state_was_saved_is_not_retried_for_ever() -> None:
    """Found by the machine: a message expunged between the listing and the FETCH of a first pass that
    then crashed kept its failure row; every later pass retried it and ended incomplete."""
    harness = seeded_harness(2, "transfer: {batch_messages: 1, prefetch: 0}", frozenset())
    inbox = harness.source["INBOX"]
    harness.world.source.arm(Fault("hook", 3, "FETCH", hook=lambda: inbox.expunge([1])))  # flags, headers, then bodies
    harness.world.destination.arm(Fault("crash", 1, "APPEND"))
    assert harness.crashing_pass() is None
    for server in (harness.world.source, harness.world.destination):
        server.disarm()
    harness.run_pass()
    harness.window_passes()
    assert harness.run_pass().complete
    again = harness.run_pass()
    assert again.complete, describe(again)
    assert_each_message_once(harness)


@pytest.mark.parametrize("side", ["source", "destination"])
def test_crash_in_a_first_pass_then_uidvalidity_reset_copies_each_message_once(side: str) -> None:
    """Found by the machine: journal rows a crash left before the folder's state was first saved were read
    against the UIDs of a new UIDVALIDITY: a message copied twice, another never, and the pass complete."""
    harness = seeded_harness(3, "transfer: {batch_messages: 1, prefetch: 0}", frozenset())
    harness.source["INBOX"].expunge([1])  # the others stay at UIDs 2 and 3
    harness.world.destination.arm(Fault("crash", 1, "APPEND"))
    assert harness.crashing_pass() is None
    harness.world.destination.disarm()
    server = harness.world.source if side == "source" else harness.world.destination
    server.reset_uidvalidity("alice" if side == "source" else "backup", "INBOX")  # UIDs from 1 again
    harness.run_pass()
    harness.window_passes()
    assert harness.run_pass().complete
    assert harness.run_pass().copied == 0
    assert_each_message_once(harness)


@pytest.mark.xfail(WATCH_DROPPED_ON_RESET, reason="forget_folder drops late-write watches", strict=True)
def test_uidvalidity_reset_during_a_late_write_window_keeps_each_message_once() -> None:
    """Found by the machine: a late copy lands, then the source folder gets a new UIDVALIDITY before the
    next pass: the reset dropped the watch with the UID map, the late duplicate stayed for good."""
    harness = seeded_harness(2, "transfer: {batch_messages: 1, prefetch: 0, backoff: 0.001s}", frozenset())
    harness.world.destination.arm(Fault("cut", 1, "APPEND", "late"))
    harness.run_pass()  # cut, resumed: the first message copied again, watched
    harness.world.destination.disarm()
    assert harness.world.destination.execute_late() == 1  # the old APPEND lands: a duplicate for now
    harness.world.source.reset_uidvalidity("alice", "INBOX")
    harness.run_pass()
    harness.window_passes()
    assert harness.run_pass().complete
    assert_each_message_once(harness)


@pytest.mark.parametrize(
    "late_after",
    [
        pytest.param(0, id="executed before the pass looked for it"),
        pytest.param(5, id="executed after the pass resolved it"),
        pytest.param(None, id="executed after the pass ended"),
    ],
)
def test_append_executed_after_the_client_gave_up_leaves_each_message_once(late_after: int | None) -> None:
    """The connection is cut while the server still holds the APPENDs in its buffer; it executes them
    after the pass gave up on them (resumed, resolved, copied again): in the end each message once."""
    harness = seeded_harness(5, "transfer: {batch_messages: 3, backoff: 0.001s}", frozenset())
    cut = harness.world.destination.arm(Fault("cut", 1, "APPEND", "late", late_after))
    harness.run_pass()
    harness.world.destination.disarm()
    assert cut.fired
    harness.world.destination.execute_late()  # within the window
    harness.run_pass()  # removes the late copies of its own
    harness.window_passes()
    report = harness.run_pass()
    assert report.complete, describe(report)
    assert harness.run_pass().copied == 0
    assert_each_message_once(harness)


# ------------------------------------------------ examples the machine found, replayed step by step
# (Hypothesis has no @example for state machines: the shrunk steps as it printed them, run in order)


class Draws:
    """Stands for ``st.data()`` in a replayed step: the values the example drew, in order."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)

    def draw(self, strategy: object, label: object = None) -> object:
        return self.values.pop(0)


@contextlib.contextmanager
def replaying() -> Iterator[EngineAgainstModel]:
    machine = EngineAgainstModel()
    with mock.patch(f"{__name__}.event"):  # Hypothesis's statistics exist only inside its own run
        try:
            yield machine
        finally:
            machine.teardown()


def step(machine: EngineAgainstModel, rule: str, *args: object, **kwargs: object) -> None:
    """One rule, then the invariants, as the machine runs them."""
    getattr(machine, rule)(*args, **kwargs)
    machine.faults_do_not_outlive_a_pass()


@pytest.mark.parametrize("side", ["source", "destination"])
def test_machine_example_late_copy_in_the_window_then_uidvalidity_reset_after_it(side: str) -> None:
    """Found by the machine (random run; 'source' as it shrank): a late copy lands within the window, the
    window ends, a UIDVALIDITY is reset, and the next pass closed the watch as expired before the map was
    rebuilt: the duplicate stayed and the pass said complete. Against Dovecot: tests/test_late_writes_reset.py."""
    with replaying() as machine:
        step(machine, "configure", mode="keep", separator="/", prefetch=0, batch=1, stale_views=False)
        step(machine, "arm_cut_append", at=1, cut_append="late", late_after=None)
        step(machine, "deliver", Draws("INBOX"), count=1, flags=frozenset(), message_id=False, size=0, zone=0)
        step(machine, "run_pass_with_every_capability")
        step(machine, "late_write_window_passes")
        step(machine, "reset_uidvalidity", Draws("INBOX"), side=side)
        step(machine, "run_pass_with_every_capability")


@pytest.mark.xfail(EXPUNGED_WATCH_LOST_ON_RESET, reason="a limit: the watch lost its copy", strict=True)
def test_machine_example_message_deleted_during_a_late_write_window_then_uidvalidity_reset() -> None:
    """Found by the machine (random run, as it shrank): the message of a watched late write is deleted on the
    source, then its folder's UIDVALIDITY is reset before the watch ended. The map rebuilt by fingerprint
    lacks the message, so the watch has no copy of ours to compare with and the late copy stays (a limit,
    docs/testing.md; without the reset the row stays while watched: tests/test_late_writes_expunged.py)."""
    with replaying() as machine:
        step(machine, "configure", mode="keep", separator="/", prefetch=0, batch=1, stale_views=False)
        step(machine, "arm_cut_append", at=1, cut_append="late", late_after=None)
        step(machine, "deliver", Draws("INBOX"), count=1, flags=frozenset(), message_id=False, size=0, zone=0)
        step(machine, "run_pass_with_every_capability")
        step(machine, "expunge", Draws(machine._live()[0]))
        step(machine, "deliver", Draws("INBOX"), count=1, flags=frozenset(), message_id=False, size=0, zone=0)
        machine.reset_uidvalidity(Draws("INBOX"), side="source")  # what the precondition keeps out of the machine
        step(machine, "late_write_window_passes")
        step(machine, "run_pass_with_every_capability")


@pytest.mark.parametrize("mode", ["keep", "mirror"])
def test_message_deleted_during_a_late_write_window_gets_its_late_copy_removed(mode: str) -> None:
    """The same without the reset, with a pass between the deletion and the late write (the machine's
    example once the reset was kept out): the row (mirroring, our copy) stays while the watch is open."""
    with replaying() as machine:
        step(machine, "configure", mode=mode, separator="/", prefetch=0, batch=1, stale_views=False)
        step(machine, "arm_cut_append", at=1, cut_append="late", late_after=None)
        step(machine, "deliver", Draws("INBOX"), count=1, flags=frozenset(), message_id=False, size=0, zone=0)
        step(machine, "run_pass_with_every_capability")
        step(machine, "expunge", Draws(machine._live()[0]))
        step(machine, "deliver", Draws("INBOX"), count=1, flags=frozenset(), message_id=False, size=0, zone=0)
        step(machine, "run_pass_with_every_capability")
        step(machine, "late_write_window_passes")
        step(machine, "run_pass_with_every_capability")
        step(machine, "run_pass_with_every_capability")


def test_machine_example_failed_message_expunged_before_the_markers_counted_it() -> None:
    """Found by the machine (random run; Hypothesis gave up shrinking it): Work had markers from an empty
    first pass; two copies of a message arrive there, the pass that lists them loses the first to an
    expunge before its FETCH (a failure row) and crashes; the next passes took the incremental listing,
    whose count did not show the expunge: the failure was retried for ever. Against Dovecot:
    tests/test_failed_then_expunged.py."""
    every = frozenset(OPTIONAL_CAPABILITIES)
    with replaying() as machine:

        def message(folder: str, uid: int) -> tuple[str, Any]:
            return next(m for m in machine._live() if m[0] == folder and m[1].uid == uid)

        step(machine, "configure", mode="keep", separator="/", prefetch=0, batch=3, stale_views=False)
        step(machine, "create_folder", name="Work")
        step(machine, "run_pass", destination_off=every, source_off=frozenset({"UIDPLUS"}))
        step(machine, "arm_crash_after_appends", appends=1)
        step(machine, "deliver", Draws("INBOX"), count=5, flags=frozenset({"\\Seen"}), message_id=False, size=0, zone=0)
        step(machine, "late_write_window_passes")
        step(machine, "run_pass", destination_off=frozenset(), source_off=frozenset({"UIDPLUS"}))
        step(machine, "arm_change_during_pass", Draws("Work"), at=10, expunge=True)
        step(machine, "change_flags", Draws(message("INBOX", 1)), flags=frozenset())
        step(machine, "arm_crash_after_appends", appends=2)
        step(machine, "arm_change_during_pass", Draws("INBOX"), at=9, expunge=True)
        step(machine, "deliver_same_message_again", Draws(message("INBOX", 1), "Work"), flags=frozenset({"\\Seen"}))
        step(machine, "deliver_same_message_again", Draws(message("INBOX", 1), "Work"), flags=frozenset({"\\Seen"}))
        step(machine, "expunge", Draws(message("INBOX", 1)))
        step(machine, "run_pass_with_every_capability")
        step(machine, "run_pass_with_every_capability")


EngineAgainstModel.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    # CI runs the same examples every time (a red CI must come from the change, not the draw); long runs
    # with MAILMIRROR_MODEL_EXAMPLES draw new ones (docs/testing.md).
    derandomize="MAILMIRROR_MODEL_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineAgainstModel = EngineAgainstModel.TestCase
