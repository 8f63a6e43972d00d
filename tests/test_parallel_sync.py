"""`mailmirror sync` of several pairs: the passes run side by side under the connection limits, each summary
is printed as its pass ends, a failing pair does not hold up the others, and Ctrl-C / SIGTERM stop the
passes between batches so that the next sync completes the copy exactly once. Against real Dovecot."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from mailmirror.cli.report import RichProgress
from mailmirror.config.config_file import load_config
from mailmirror.engine.mapping import FolderMapping
from mailmirror.engine.parallel import ParallelPasses
from mailmirror.engine.sync import FolderReport, LogProgress
from mailmirror.engine.verify import verify_pair
from mailmirror.lab.dovecot import DovecotServer, LabUser, SeedMessage, seed
from tests.support import ROOT, Setup, account_yaml, folder_contents, fresh_count, simple_message

DATE = datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)
Users = list[tuple[LabUser, LabUser]]


def multi_setup(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    count: int,
    *,
    source_options: str = "",
    pair_options: str = "",
) -> tuple[Setup, Users]:
    """Pairs p1..pN, each from its own source user to its own destination user."""
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-test-"))
    users = [(source_server.add_user(), dest_server.add_user()) for _ in range(count)]
    accounts = pairs = ""
    for index, (src, dst) in enumerate(users, 1):
        accounts += account_yaml(f"src{index}", source_server, src, directory) + source_options
        accounts += account_yaml(f"dst{index}", dest_server, dst, directory)
        pairs += f"  p{index}:\n    source: src{index}\n    destination: dst{index}\n" + pair_options
    config_path = directory / "mailmirror.yaml"
    config_path.write_text(f"state: {{path: {directory / 'state.db'}}}\naccounts:\n{accounts}pairs:\n{pairs}")
    return Setup(directory, config_path), users


def seed_users(source_server: DovecotServer, users: Users, messages: int, *, size: int = 1500) -> None:
    for index, (src, _) in enumerate(users):
        with source_server.connect(src) as client:
            batch = [
                SeedMessage(simple_message(n, size=size, tag=f"u{index}"), ("\\Seen",) if n % 2 else (), DATE)
                for n in range(messages)
            ]
            seed(client, "INBOX", batch)


def assert_pairs_mirrored(
    setup: Setup, source_server: DovecotServer, dest_server: DovecotServer, users: Users, names: list[str]
) -> None:
    config = load_config(setup.config_path)
    for name in names:
        verdict = verify_pair(name, config.effective_pairs()[name], config)
        assert verdict.clean, verdict
        src, dst = users[int(name[1:]) - 1]
        with source_server.connect(src) as source, dest_server.connect(dst) as destination:
            assert folder_contents(destination) == folder_contents(source)  # each message exactly once


def mailmirror(config_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mailmirror", "-c", str(config_path), *args]


ENV = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "daemon")}


# ------------------------------------------------------------------------------------- pure: progress


def test_progress_bars_follow_each_folder_when_folders_and_pairs_interleave() -> None:
    progress = RichProgress(Console(file=io.StringIO()))
    progress.folder_started("p1", FolderMapping("INBOX", "INBOX", "default"), 10, 1000)
    progress.folder_started("p2", FolderMapping("INBOX", "INBOX", "default"), 4, 400)
    progress.folder_started("p1", FolderMapping("Work", "Work", "default"), 2, 200)
    progress.advance("p1", "INBOX", 5, 500)
    progress.advance("p2", "INBOX", 4, 400)
    progress.folder_finished("p2", FolderReport("INBOX", "INBOX", "default"))
    progress.advance("p2", "INBOX", 1, 100)  # after its end: ignored
    progress.advance("p1", "Work", 1, 100)
    completed = {task.description: task.completed for task in progress.bars.tasks}
    assert completed == {"p1: INBOX (5/10)": 500, "p1: Work (1/2)": 100}  # a finished folder's bar goes


def test_a_pass_that_crashes_is_reported_and_sync_does_not_wait_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailmirror.config.config_file import Config
    from mailmirror.engine.limits import ConnectionLimits
    from mailmirror.errors import InternalError

    secret = {"env": "UNUSED"}
    config = Config.model_validate(
        {
            "accounts": {
                "a": {"host": "a.example", "username": "u", "password": secret},
                "b": {"host": "b.example", "username": "u", "password": secret},
            },
            "pairs": {"p": {"source": "a", "destination": "b"}},
        }
    )

    def broken(self: ConnectionLimits, config: Config, pair: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ConnectionLimits, "for_pair", broken)
    passes = ParallelPasses(config, ["p"], LogProgress(), parallel=2)
    passes.start()
    report = passes.next_report(30)
    assert report is not None and isinstance(report.error, InternalError)
    assert "a bug" in str(report.error) and passes.remaining == 0


# ------------------------------------------------------------------------------------- against Dovecot


class MeetingProgress(LogProgress):
    """Each pair's first folder waits there for the other pairs' first folders: only passes running side
    by side all get past it."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=60)
        self.met: list[str] = []

    def folder_started(self, pair: str, mapping: FolderMapping, messages: int, size: int) -> None:
        super().folder_started(pair, mapping, messages, size)
        if messages:
            try:
                self.barrier.wait()
                self.met.append(pair)
            except threading.BrokenBarrierError:
                pass


def test_passes_of_several_pairs_run_side_by_side(source_server: DovecotServer, dest_server: DovecotServer) -> None:
    # workers: 1, so that no pass takes the connections another pass is waiting for before the meeting
    setup, users = multi_setup(source_server, dest_server, 3, pair_options="    transfer: {workers: 1}\n")
    seed_users(source_server, users, 20)
    config = load_config(setup.config_path)
    progress = MeetingProgress(3)
    passes = ParallelPasses(config, ["p1", "p2", "p3"], progress, parallel=3)
    passes.start()
    reports = [passes.next_report(120) for _ in range(3)]
    assert sorted(progress.met) == ["p1", "p2", "p3"], [(r.pair, r.error) for r in reports if r is not None]
    for report in reports:
        assert report is not None and report.error is None and report.complete and report.copied == 20, report
    assert_pairs_mirrored(setup, source_server, dest_server, users, ["p1", "p2", "p3"])


def test_sync_of_several_pairs_prints_each_summary_and_a_failing_pair_does_not_hold_up_the_others(
    source_server: DovecotServer, dest_server: DovecotServer
) -> None:
    setup, users = multi_setup(source_server, dest_server, 3)
    seed_users(source_server, users, 15)
    (setup.directory / "src3.password").write_text("wrong\n", encoding="utf-8")
    result = setup.run("sync", "--parallel", "2")
    assert result.returncode == 77, result.stderr  # authentication failed, for p3
    for name in ("p1", "p2", "p3"):
        assert f"Pass of pair '{name}'" in result.stdout
    assert "pair 'p3'" in result.stderr and "src3" in result.stderr
    assert "wrong" not in result.stdout + result.stderr
    assert_pairs_mirrored(setup, source_server, dest_server, users, ["p1", "p2"])
    assert setup.run("sync", "p1", "p2").returncode == 0


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_passes_between_batches_and_the_next_sync_completes_exactly_once(
    source_server: DovecotServer, dest_server: DovecotServer, signum: signal.Signals, code: int
) -> None:
    slow = "    max_bytes_per_second: 100KB\n"  # 40 × 20 KB: about 8 s per pair, in batches of 3
    setup, users = multi_setup(
        source_server, dest_server, 2, source_options=slow, pair_options="    transfer: {batch_size: 64KiB}\n"
    )
    seed_users(source_server, users, 40, size=20_000)
    process = subprocess.Popen(
        mailmirror(setup.config_path, "sync"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    try:
        deadline = time.monotonic() + 60
        while max(fresh_count(dest_server, dst) for _, dst in users) < 1:
            assert process.poll() is None and time.monotonic() < deadline, "no copy started"
            time.sleep(0.1)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code, stderr
    assert "stopping" in stderr and "pass stopped" in stderr
    assert stdout.count("Pass of pair") == 2
    assert sum(fresh_count(dest_server, dst) for _, dst in users) < 80
    setup.config_path.write_text(setup.config_path.read_text().replace(slow, ""))
    result = subprocess.run(mailmirror(setup.config_path, "sync"), capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    assert_pairs_mirrored(setup, source_server, dest_server, users, ["p1", "p2"])
