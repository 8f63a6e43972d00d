"""Throughput features, for correctness (speed is measured in bench/): parallel folder workers, a big folder
split across workers, pipelined LITERAL+ appends, retries with backoff when a server throttles or drops
the connection, rate limits, a 25 MB message. Against real Dovecot servers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from mailmirror.config.config_file import load_config
from mailmirror.engine.folder_pass import FolderPass
from mailmirror.engine.pair_pass import PairPass
from mailmirror.engine.planner import Copy
from mailmirror.engine.transfer import TokenBucket, backoff_delay, split_evenly
from mailmirror.engine.workers import FolderJob, Transfer
from mailmirror.errors import Stopped, Throttled
from mailmirror.imap.session import Session
from mailmirror.imap.types import MessageToAppend
from mailmirror.lab.dovecot import DovecotServer, SeedMessage, seed
from mailmirror.state.store import StateStore
from tests.conftest import MakeMirror
from tests.proxy import Fault, FaultProxy
from tests.support import Mirror, Setup, folder_contents, make_setup, message_count, simple_message
from tests.test_faults import fault_setup, journal, proxies

__all__ = ["proxies"]  # the fixture, used by name

DATE = datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)


def seeded(client: IMAPClient, folders: dict[str, int], *, size: int = 1500) -> int:
    index = 0
    for folder, count in folders.items():
        messages = []
        for _ in range(count):
            flags = ("\\Seen",) if index % 3 == 0 else ("\\Flagged", "$Work") if index % 5 == 0 else ()
            messages.append(SeedMessage(simple_message(index, size=size, tag=folder), flags, DATE))
            index += 1
        seed(client, folder, messages)
    return index


def run_pass(setup: Setup) -> PairPass:
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    try:
        pass_ = PairPass("test", config.effective_pairs()["test"], config, store)
        pass_.run()
        return pass_
    finally:
        store.close()


def assert_mirrored(setup: Setup, source: IMAPClient, destination: IMAPClient, total: int) -> None:
    verdict = setup.verify()
    assert verdict.clean, verdict
    assert folder_contents(destination) == folder_contents(source)
    assert journal(setup) == {"done": total}


# ----------------------------------------------------------------------------------------- pure parts


def test_token_bucket_paces_by_rate_without_sleeping_for_real() -> None:
    now = [0.0]
    slept: list[float] = []
    bucket = TokenBucket(10, 10, clock=lambda: now[0], sleep=slept.append)
    bucket.take(10)  # the burst
    assert slept == []
    bucket.take(5)  # 5 tokens short at 10/s: half a second
    assert sum(slept) == pytest.approx(0.5)
    slept.clear()
    now[0] += 10  # refilled, but never beyond the burst
    bucket.take(10)
    assert slept == []
    assert bucket.take(100)  # larger than the burst: waits for it, never for ever
    assert sum(slept) == pytest.approx(10.0)
    assert max(slept) <= 0.25  # in slices, so that a stop request is seen within a quarter second


def test_a_rate_limited_wait_ends_early_on_a_stop_request() -> None:
    slept: list[float] = []
    bucket = TokenBucket(1000, 1000, clock=lambda: 0.0, sleep=slept.append)
    assert not bucket.take(61_000, cancelled=lambda: len(slept) == 3)  # a minute's wait, stopped at once
    assert sum(slept) == pytest.approx(0.75)


def test_backoff_doubles_up_to_a_cap() -> None:
    assert [backoff_delay(n, 2.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff_delay(30, 2.0) == 300.0


def test_split_evenly_keeps_uid_runs_contiguous() -> None:
    uids = list(range(1, 1001))
    runs = split_evenly(uids, 3, 200)
    assert len(runs) == 3 and [uid for run in runs for uid in run] == uids
    assert split_evenly(uids, 8, 400) == [uids[:500], uids[500:]]
    assert split_evenly(uids[:10], 3, 200) == [uids[:10]]
    assert split_evenly([], 3, 10) == []


# ------------------------------------------------------------------------------------------ workers


def test_parallel_folder_workers_copy_everything_exactly_once(mirror: Mirror) -> None:
    total = seeded(mirror.src, {"INBOX": 40, "Work": 30, "Work/Old": 20, "Archive": 25, "Sent": 15})
    setup = mirror.setup(pair_options="transfer: {workers: 3, batch_messages: 7}")
    first = run_pass(setup)
    assert first.report.complete and first.report.copied == total
    assert first.workers == 3
    assert_mirrored(setup, mirror.src, mirror.dst, total)
    again = setup.sync()
    assert again.complete and again.copied == 0


def test_a_big_folder_is_split_across_workers(
    mirror: Mirror,
    caplog: pytest.LogCaptureFixture,
) -> None:
    total = seeded(mirror.src, {"INBOX": 330, "Work": 5})
    setup = mirror.setup(pair_options="transfer: {workers: 3, split_above: 100, batch_messages: 25}")
    with caplog.at_level(logging.DEBUG, logger="mailmirror.engine.workers"):
        first = run_pass(setup)
    assert first.report.complete and first.report.copied == total
    assert any("in 3 runs" in record.getMessage() for record in caplog.records), "INBOX was not split"
    assert_mirrored(setup, mirror.src, mirror.dst, total)
    # every destination UID claimed once, by one source message
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    try:
        dst_uids = [m.dst_uid for m in store.messages("test", "INBOX").values()]
    finally:
        store.close()
    assert len(dst_uids) == len(set(dst_uids)) == 330


def test_workers_are_bounded_by_max_connections(mirror: Mirror) -> None:
    total = seeded(mirror.src, {"INBOX": 10, "Work": 10, "Archive": 10})
    setup = mirror.setup(pair_options="transfer: {workers: 8}")
    text = setup.config_path.read_text(encoding="utf-8")
    setup.config_path.write_text(text.replace("  dst:\n", "  dst:\n    max_connections: 2\n", 1), encoding="utf-8")
    first = run_pass(setup)
    assert first.report.complete and first.workers == 2
    assert_mirrored(setup, mirror.src, mirror.dst, total)


# ------------------------------------------------------------------------------------------ appends


@pytest.mark.parametrize("dropped", [["MULTIAPPEND"], ["MULTIAPPEND", "LITERAL+"]])
def test_appends_without_multiappend_pipelined_or_plain(
    dropped: list[str], make_server: Callable[..., DovecotServer], make_mirror: MakeMirror
) -> None:
    mirror = make_mirror(destination=make_server(drop_capabilities=dropped))
    total = seeded(mirror.src, {"INBOX": 30, "Work": 12}, size=6000)
    setup = mirror.setup(pair_options="transfer: {batch_messages: 8}")
    report = setup.sync()
    assert report.complete and report.copied == total
    assert_mirrored(setup, mirror.src, mirror.dst, total)


def test_pipelined_append_reports_each_message(make_server: Callable[..., DovecotServer]) -> None:
    """append_each against a server with LITERAL+ and no MULTIAPPEND: one UID per message, a refusal in
    the middle (over the user's size quota) does not hide the others."""
    destination = make_server(drop_capabilities=["MULTIAPPEND"])
    user = destination.add_user(max_mail_size=20_000)
    setup = make_setup(destination, user, destination, destination.add_user())
    account = load_config(setup.config_path).accounts["src"]
    with Session.open("src", account) as session:
        assert session.pipelines_appends
        messages = [
            MessageToAppend(simple_message(i, size=50_000 if i == 2 else 500), frozenset({"\\Seen"}), DATE)
            for i in range(5)
        ]
        results = session.append_each("INBOX", messages)
    assert [isinstance(r, int) for r in results] == [True, True, False, True, True]
    uids = [r for r in results if isinstance(r, int)]
    assert len(set(uids)) == 4


def test_a_25_mb_message_is_copied_intact(mirror: Mirror) -> None:
    big = simple_message(1, size=25 * 1024 * 1024, tag="big")
    seed(
        mirror.src,
        "INBOX",
        [SeedMessage(simple_message(0), (), DATE), SeedMessage(big, ("\\Seen",), DATE)]
        + [SeedMessage(simple_message(i), (), DATE) for i in range(2, 6)],
    )
    setup = mirror.setup(pair_options="transfer: {batch_size: 1MiB}")
    report = setup.sync()
    assert report.complete and report.copied == 6
    assert setup.verify().clean
    mirror.dst.select_folder("INBOX", readonly=True)
    sizes = sorted(int(d[b"RFC822.SIZE"]) for d in mirror.dst.fetch(mirror.dst.search(), ["RFC822.SIZE"]).values())
    assert sizes[-1] == len(big)
    assert journal(setup) == {"done": 6}


# -------------------------------------------------------------------------------- throttling, limits

THROTTLES = {
    # an APPEND the server did store, answered as throttled: must be found, not copied twice
    "destination [UNAVAILABLE] on APPEND": (
        "dst",
        Fault("down", pattern=b"OK [APPENDUID", action="answer", count=2),
    ),
    "destination Office 365 'Server Unavailable' NO": (
        "dst",
        Fault("down", pattern=b"OK [APPENDUID", action="answer", answer=b"NO Server Unavailable. 15", count=3),
    ),
    "source Gmail [THROTTLED] on FETCH": (
        "src",
        Fault(
            "down",
            pattern=b"OK Fetch completed",
            action="answer",
            answer=b"NO [THROTTLED] Account exceeded command or bandwidth limits",
            count=4,
        ),
    ),
    "destination connection reset mid-APPEND": ("dst", Fault("up", pattern=b" APPEND ", count=3, after=200)),
}


@pytest.mark.parametrize("case", list(THROTTLES))
def test_throttling_and_resets_are_retried_with_backoff_exactly_once(
    case: str, mirror: Mirror, proxies: Callable[..., FaultProxy], tmp_path: Path
) -> None:
    side, fault = THROTTLES[case]
    total = seeded(mirror.src, {"INBOX": 45, "Work": 25}, size=3000)
    proxy = proxies(mirror.source_server if side == "src" else mirror.dest_server)
    setup = fault_setup(
        tmp_path / "pair",
        mirror,
        proxy=proxy,
        proxied=side,
        transfer="{workers: 2, batch_messages: 5, retries: 30, backoff: 0.05s}",
    )
    proxy.inject(fault)  # on every connection, also the ones opened to retry
    report = setup.sync()
    assert proxy.triggered >= 1, "the fault never fired: the test did not test what it says"
    assert report.error is None and report.complete, report
    proxy.heal()
    assert_mirrored(setup, mirror.src, mirror.dst, total)
    assert setup.sync().copied == 0


def test_workers_cut_by_one_event_count_one_retry_and_wait_its_backoff(
    mirror: Mirror, proxies: Callable[..., FaultProxy], tmp_path: Path
) -> None:
    """A destination restart cuts the three workers of a split folder at once: that is one retry, not
    three (retries: 2 would have failed the pass), and the folder resumes after the backoff."""
    total = seeded(mirror.src, {"INBOX": 300}, size=3000)
    proxy = proxies(mirror.dest_server)
    setup = fault_setup(
        tmp_path / "pair",
        mirror,
        proxy=proxy,
        transfer="{workers: 3, split_above: 100, batch_messages: 10, retries: 2, backoff: 3s}",
    )
    proxy.inject(Fault("up", pattern=b" APPEND ", count=2))  # every connection, at its second APPEND
    healer = threading.Thread(target=lambda: proxy.wait_triggered(3) and proxy.heal(), daemon=True)
    healer.start()
    report = setup.sync()
    healer.join()
    assert proxy.triggered >= 3, "the workers were not all cut: the test did not test what it says"
    assert report.error is None and report.complete, report
    assert_mirrored(setup, mirror.src, mirror.dst, total)


def test_rate_limits_are_accepted_and_the_copy_is_complete(mirror: Mirror) -> None:
    total = seeded(mirror.src, {"INBOX": 30, "Work": 10})
    setup = mirror.setup()
    text = setup.config_path.read_text(encoding="utf-8")
    limits = "    max_messages_per_second: 400\n    max_bytes_per_second: 2MB\n"
    text = text.replace("  dst:\n", "  dst:\n" + limits, 1).replace("  src:\n", "  src:\n" + limits, 1)
    setup.config_path.write_text(text, encoding="utf-8")
    config = load_config(setup.config_path)
    assert config.accounts["dst"].max_bytes_per_second == 2_000_000
    report = setup.sync()
    assert report.complete and report.copied == total
    assert_mirrored(setup, mirror.src, mirror.dst, total)
    assert message_count(mirror.dst, "Work") == 10


def test_a_stop_request_ends_a_rate_limited_pass_promptly_and_the_next_pass_completes(mirror: Mirror) -> None:
    """At 20 KB/s a batch of 30 × 20 KB would hold a worker for 30 s: a SIGTERM must not wait for it."""
    total = seeded(mirror.src, {"INBOX": 30}, size=20_000)
    setup = mirror.setup(pair_options="transfer: {workers: 1}")
    text = setup.config_path.read_text(encoding="utf-8")
    setup.config_path.write_text(text.replace("  src:\n", "  src:\n    max_bytes_per_second: 20KB\n", 1))
    config = load_config(setup.config_path)
    stop = threading.Event()
    store = StateStore(config.state.path)
    try:
        threading.Timer(1.5, stop.set).start()
        report = PairPass("test", config.effective_pairs()["test"], config, store, stop=stop).run()
    finally:
        store.close()
    assert isinstance(report.error, Stopped), report
    assert message_count(mirror.dst, "INBOX") < total
    setup.config_path.write_text(text, encoding="utf-8")  # the limit off: the next pass finishes the copy
    assert setup.sync().complete
    assert_mirrored(setup, mirror.src, mirror.dst, total)


def test_connection_limits_lend_extra_connections_only_when_free() -> None:
    from mailmirror.config.config_file import Config
    from mailmirror.engine.limits import ConnectionLimits

    secret = {"env": "UNUSED"}
    config = Config.model_validate(
        {
            "daemon": {"max_connections": 6},
            "accounts": {
                "a": {"host": "a.example", "username": "u", "password": secret, "max_connections": 3},
                "b": {"host": "b.example", "username": "u", "password": secret, "max_connections": 10},
            },
            "pairs": {"p": {"source": "a", "destination": "b"}},
        }
    )
    limits = ConnectionLimits(config)
    pair = config.effective_pairs()["p"]
    with limits.for_pair(config, pair):
        extra = limits.extra(config, pair)
        assert extra.try_acquire()  # a: 2 of 3; 4 connections of 6
        assert extra.try_acquire()  # a: 3 of 3; 6 of 6
        assert not extra.try_acquire()  # never waits
        extra.release()
        extra.release()
        assert extra.try_acquire()
        extra.release()


def test_a_refused_message_alone_in_its_batch_is_recorded_and_the_pass_goes_on(mirror: Mirror) -> None:
    small_destination = mirror.dest_server.add_user(max_mail_size=20_000)
    seed(
        mirror.src,
        "INBOX",
        [SeedMessage(simple_message(i, size=50_000 if i == 2 else 500), (), DATE) for i in range(4)],
    )
    setup = mirror.setup(pair_options="transfer: {batch_messages: 1}", destination_user=small_destination)
    report = setup.sync()
    assert report.error is None and report.copied == 3
    assert [uid for uid, _reason in report.folders[0].failed] == [3]
    assert journal(setup) == {"done": 3}


def test_byte_budget_lets_a_huge_batch_through_alone() -> None:
    from mailmirror.engine.transfer import ByteBudget

    budget = ByteBudget(100)
    assert budget.acquire(60, lambda: False) and budget.acquire(40, lambda: False)
    assert not budget.acquire(1, lambda: True)  # full: waits, until cancelled
    budget.release(60)
    budget.release(40)
    assert budget.acquire(500, lambda: False)  # larger than the budget, nothing else held: goes alone
    assert not budget.acquire(1, lambda: True)
    budget.release(500)
    assert budget.used == 0 and budget.peak == 500


def test_appends_of_a_split_folder_are_resolved_through_a_fresh_view(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the server stored but answered "slow down" is resolved by whichever worker finishes the
    folder. That worker's session already has the folder open, and Dovecot shows the other session's
    appends only at a sync point: without a fresh SELECT the stored batch looked missing and was copied
    again (410 messages for 400)."""
    total = seeded(mirror.src, {"INBOX": 400})
    setup = mirror.setup(
        pair_options="transfer: {workers: 2, split_above: 100, batch_messages: 10, retries: 5, backoff: 0.05s}"
    )
    copy_run, copy_done, append = FolderPass.copy_run, Transfer._copy_done, Session.append
    main_appends = 0

    def late_second_half(self: FolderPass, source: Session, destination: Session, copies: list[Copy]) -> Any:
        if threading.current_thread() is threading.main_thread() and copies[0].message.uid > 1:
            time.sleep(0.5)  # the main thread's run ends last ...
        return copy_run(self, source, destination, copies)

    def slow_return(self: Transfer, job: FolderJob) -> None:
        copy_done(self, job)
        time.sleep(0.5)  # ... and the idle worker, whose session has the folder open, takes the finish

    def stored_then_throttled(self: Session, folder: str, messages: Sequence[MessageToAppend]) -> Any:
        nonlocal main_appends
        result = append(self, folder, messages)
        if threading.current_thread() is threading.main_thread():
            main_appends += 1
            if main_appends == 20:
                raise Throttled("NO [UNAVAILABLE] Server Unavailable. 15 (after storing the batch)")
        return result

    monkeypatch.setattr(FolderPass, "copy_run", late_second_half)
    monkeypatch.setattr(Transfer, "_copy_done", slow_return)
    monkeypatch.setattr(Session, "append", stored_then_throttled)
    pass_ = run_pass(setup)
    assert main_appends >= 20, "the throttled answer never came: the test did not test what it says"
    assert pass_.report.error is None, pass_.report.error
    monkeypatch.undo()
    assert_mirrored(setup, mirror.src, mirror.dst, total)
