"""Fault tests against real Dovecot servers: "exactly once under failure" (DESIGN.md).

- kill -9 at random moments of a first copy and of incremental passes (tests/proxy.py not involved);
- the destination server restarted mid-pass;
- connections cut by a loopback proxy (tests/proxy.py): half-way through an APPEND literal, after the
  APPEND but before its OK, half-way through a FETCH of bodies, after any k-th server line (a seeded
  sweep), and right after LOGIN (between LOGIN and NAMESPACE: once a bug, exit 70; now 69);
- UIDVALIDITY reset on either side;
- the state database lost while appends were unconfirmed (appended or not).

A failed pass must exit 69 with one sentence naming the account and no traceback; the next pass must
complete without copying anything already there, and `verify` must find every source message on the
destination exactly once, byte-identical, with its flags and INTERNALDATE; no 'pending' row may be left.

Randomness is seeded; kill moments depend on timing (that is the point) but every assertion is about
correctness only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest
from imapclient import IMAPClient

from mailmirror.lab.corpus import generated_message
from mailmirror.lab.dovecot import DovecotServer, LabCA, LabUser, SeedMessage, seed
from tests.conftest import MakeMirror
from tests.proxy import Fault, FaultProxy, _Trigger
from tests.support import ROOT, Mirror, Setup, account_yaml, message_count, simple_message

pytestmark = pytest.mark.dovecot

ERROR_UNAVAILABLE = 69


# ------------------------------------------------------------------------------------------ helpers


def account_block(name: str, server: DovecotServer, user: LabUser, directory: Path, proxy: FaultProxy | None) -> str:
    """An account entry: STARTTLS straight to the server, or plain IMAP through ``proxy``."""
    if proxy is None:
        return account_yaml(name, server, user, directory)
    secret = directory / f"{name}.password"
    secret.write_text(user.password + "\n", encoding="utf-8")
    return (
        f"  {name}:\n"
        f"    host: {proxy.host}\n"
        f"    port: {proxy.port}\n"
        "    tls: none\n"
        f"    username: {user.username}\n"
        f"    password: {{file: {secret}}}\n"
        "    timeout: 30s\n"
    )


def fault_setup(
    directory: Path,
    mirror: Mirror,
    *,
    proxy: FaultProxy | None = None,
    proxied: str = "dst",
    destination_user: LabUser | None = None,
    transfer: str = "{retries: 0}",
) -> Setup:
    """The pair of a fault test between the mirror's accounts, the ``proxied`` one ("src" or "dst")
    reached through ``proxy`` (``destination_user``: another account on the mirror's destination server).
    Retries off by default: a fault ends the pass, as a crash would, and the next pass must clean up (the
    tests of retrying within a pass set ``transfer``).

    No late-write watch (late_write_window: 0s): these faults cut connections for good, so nothing can be
    executed late, and the next pass must prove itself complete at once. The watch and its exit 75 are
    tested in test_exactly_once.py."""
    directory.mkdir(parents=True, exist_ok=True)
    transfer = transfer.rstrip().removesuffix("}") + ", late_write_window: 0s}"
    source_proxy, destination_proxy = (proxy, None) if proxied == "src" else (None, proxy)
    destination_user = destination_user or mirror.dst_user
    text = (
        f"state: {{path: {directory / 'state.db'}}}\n"
        "accounts:\n"
        + account_block("src", mirror.source_server, mirror.src_user, directory, source_proxy)
        + account_block("dst", mirror.dest_server, destination_user, directory, destination_proxy)
        + f"pairs:\n  test:\n    source: src\n    destination: dst\n    transfer: {transfer}\n"
    )
    config_path = directory / "mailmirror.yaml"
    config_path.write_text(text, encoding="utf-8")
    return Setup(directory, config_path)


class SyncProcess:
    """`python -m mailmirror -c CONFIG sync` in the background (output in files); always reaped."""

    def __init__(self, setup: Setup, label: str) -> None:
        self.stdout_path = setup.directory / f"{label}.stdout"
        self.stderr_path = setup.directory / f"{label}.stderr"
        env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "daemon")}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailmirror", "-c", str(setup.config_path), "sync"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
            )
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL (kill -9) this process, by its pid, and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"mailmirror sync did not finish within {timeout}s\n{self.output}") from None

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", "replace")

    @property
    def output(self) -> str:
        return f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"

    def __enter__(self) -> SyncProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


def journal(setup: Setup) -> dict[str, int]:
    """Rows of the state DB's messages table by status ({} while there is no database or table yet)."""
    path = setup.directory / "state.db"
    if not path.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10)) as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM messages GROUP BY status").fetchall()
    except sqlite3.Error:
        return {}
    return {str(status): int(count) for status, count in rows}


def delete_state(setup: Setup) -> None:
    for suffix in ("", "-wal", "-shm"):
        (setup.directory / f"state.db{suffix}").unlink(missing_ok=True)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, process: SyncProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"mailmirror exited ({process.poll()}) before {what}\n{process.output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{process.output}" if process else ""))
        time.sleep(0.005)


def seed_fast(client: IMAPClient, folder: str, messages: Sequence[SeedMessage], chunk: int = 50) -> None:
    """Like lab.seed, with one MULTIAPPEND per ``chunk`` messages (order, flags and dates kept)."""
    if folder.upper() != "INBOX" and not client.folder_exists(folder):
        client.create_folder(folder)
        client.subscribe_folder(folder)
    for start in range(0, len(messages), chunk):
        batch = [
            {"msg": m.raw, "flags": list(m.flags), "date": m.internaldate} for m in messages[start : start + chunk]
        ]
        typ, data = client.multiappend(folder, batch)
        assert str(typ).upper() == "OK", (typ, data)


def seed_mailbox_fast(client: IMAPClient, mailbox: Mapping[str, Sequence[SeedMessage]]) -> None:
    for folder, messages in mailbox.items():
        seed_fast(client, folder, messages)


def generated_mailbox(
    seed: int, folders: Mapping[str, int], *, big: int, small: tuple[int, int] = (2048, 10240)
) -> dict[str, list[SeedMessage]]:
    """``folders`` (name → count) of corpus messages: sizes uniform in ``small``, and ``big`` of them
    1-2 MB spread over the folders. Deterministic for ``seed``."""
    rng = random.Random(f"test_faults/{seed}")
    total = sum(folders.values())
    big_ones = set(rng.sample(range(total), big))
    mailbox: dict[str, list[SeedMessage]] = {}
    index = 0
    for folder, count in folders.items():
        messages = []
        for _ in range(count):
            size = rng.randint(1_000_000, 2_000_000) if index in big_ones else rng.randint(*small)
            messages.append(generated_message(random.Random(f"test_faults/{seed}/{index}"), index, size, folder=folder))
            index += 1
        mailbox[folder] = messages
    return mailbox


def destination_counts(mirror: Mirror, folders: Sequence[str], user: LabUser | None = None) -> dict[str, int]:
    """Messages per folder of the mirror's destination account (or ``user`` on its server), on a new
    connection."""
    client = mirror.dest_server.connect(user or mirror.dst_user)
    try:
        existing = {name for _flags, _delimiter, name in client.list_folders()}
        return {folder: message_count(client, folder) if folder in existing else 0 for folder in folders}
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def assert_verify_clean(setup: Setup) -> None:
    result = setup.run("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No differences" in result.stdout, result.stdout


def assert_clean_failure(process: SyncProcess, account: str) -> None:
    """Exit 69, one clear sentence naming the account, no traceback."""
    code = process.wait()
    output = process.output
    assert code == ERROR_UNAVAILABLE, output
    assert f"mailmirror: pair 'test': account '{account}' (127.0.0.1:" in process.stderr, output
    assert "Traceback" not in output, output


@pytest.fixture
def private_destination(dovecot: None, lab_dir: Path, lab_ca: LabCA) -> Iterator[DovecotServer]:
    """A destination server of this test alone (it gets restarted), stopped afterwards."""
    server = DovecotServer(lab_dir / f"faults-{secrets.token_hex(4)}", "faults", ca=lab_ca)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxies() -> Iterator[Callable[..., FaultProxy]]:
    """``proxies(server, record=False)`` → a started FaultProxy in front of the server's plain port;
    all stopped after the test."""
    started: list[FaultProxy] = []

    def make(server: DovecotServer, *, record: bool = False) -> FaultProxy:
        proxy = FaultProxy(server.host, server.port, record=record).start()
        started.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in started:
            proxy.stop()


# ---------------------------------------------------------------------------- the proxy, offline


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_proxy_trigger_finds_the_point_across_chunk_boundaries(chunk: int) -> None:
    stream = b"a001 LOGIN x y\r\na002 APPEND INBOX {10}\r\n0123456789\r\n"
    second_line_end = stream.index(b"\r\n", stream.index(b"\r\n") + 2) + 2
    for fault, expected, reached_expected in (
        (Fault("up", after=5), stream[:5], True),
        (Fault("up"), b"", True),
        (Fault("up", pattern=b" APPEND ", after=4), stream[: stream.index(b" APPEND ") + 8 + 4], True),
        (Fault("up", pattern=b"{10}\r\n"), stream[: stream.index(b"{10}\r\n") + 6], True),
        (Fault("up", pattern=b"\r\n", count=2), stream[:second_line_end], True),
        (Fault("up", pattern=b"\r\n", count=3), stream, True),
        (Fault("up", pattern=b"\r\n", count=4), stream, False),
        (Fault("up", pattern=b"1", count=2, after=1), stream[: stream.index(b"{10}") + 3], True),
        (Fault("up", pattern=b"not there"), stream, False),
    ):
        trigger = _Trigger(fault)
        forwarded, reached = b"", False
        for start in range(0, len(stream), chunk):
            part, reached = trigger.split(stream[start : start + chunk])
            forwarded += part
            if reached:
                break
        assert (forwarded, reached) == (expected, reached_expected), (fault, chunk)


# ------------------------------------------------------------------------------ 1. kill -9, often

KILL_FOLDERS = {"INBOX": 480, "Sent": 300, "Archive": 240, "Projects/Fault": 180}
#: New mail for the incremental phase (Archive gets only flag changes, Projects/Fault nothing: fast path).
KILL_NEW_MAIL = {"INBOX": 200, "Sent": 120}


@dataclass
class KillRecord:
    kind: str  # "progress" (after the journal shows a share done) or "early" (startup, resolution, planning)
    seconds: float
    done_before: int
    done_after: int
    pending_after: int  # > 0: killed between journalling a batch and recording its confirmation
    outcome: str  # "killed" or "exit 0"


class Killer:
    """Runs `mailmirror sync` again and again, each run SIGKILLed at a moment drawn from a seeded RNG.

    The plan is drawn up front (the moments themselves depend on timing):
    - ``progress`` kills spread uniformly over the copy: once the journal shows that share of the
      messages to copy done (and at least one more batch confirmed by this run), plus 0-150 ms, i.e.
      any moment of a batch's fetch / journal / append / confirm cycle;
    - ``early`` kills at a uniformly random moment between spawn and the first batch a run confirms
      (import, login, LIST, SELECT, resolving the journal, listing, fingerprinting, the first batch),
      that span being measured on the runs before (adaptive).
    If the copy completes before the plan is through, early kills follow until there were ``kills``.
    """

    def __init__(self, setup: Setup, rng: random.Random) -> None:
        self.setup = setup
        self.rng = rng
        self.startup = 0.5  # seconds from spawn to the first confirmed batch, re-measured on every run
        self.records: list[KillRecord] = []

    def run(self, *, first: int, to_copy: int, progress: int, early: int, kills: int) -> list[KillRecord]:
        """Kill runs while ``to_copy`` messages are copied on top of ``first`` already done."""
        plan: list[tuple[str, float, float]] = [
            ("progress", share, self.rng.uniform(0, 0.15))
            for share in sorted(self.rng.uniform(0.02, 0.9) for _ in range(progress))
        ]
        for _ in range(early):
            plan.insert(self.rng.randint(1, len(plan)), ("early", self.rng.random(), 0.0))
        start = len(self.records)
        for kind, value, jitter in plan:
            self._one(kind, first + math.ceil(value * to_copy) if kind == "progress" else value, jitter)
        while sum(r.outcome == "killed" for r in self.records[start:]) < kills:
            assert len(self.records) - start < 40, self.describe()
            self._one("early", self.rng.random(), 0.0)
        return self.records[start:]

    def _one(self, kind: str, value: float, jitter: float) -> None:
        done_before = journal(self.setup).get("done", 0)
        # progress: at least one batch confirmed by this very run, so that the kill lands mid-copy
        target = max(int(value), done_before + 1) if kind == "progress" else None
        kill_at: float | None = value * self.startup if kind == "early" else None
        progressed = False
        with SyncProcess(self.setup, f"run{len(self.records):02d}-{kind}") as run:
            while True:
                code = run.poll()
                if code is not None:
                    assert code == 0, run.output
                    outcome = "exit 0"
                    break
                done = journal(self.setup).get("done", 0)
                if done > done_before and not progressed:
                    progressed, self.startup = True, run.elapsed
                if kill_at is None and target is not None and done >= target:
                    kill_at = run.elapsed + jitter
                if kill_at is not None and run.elapsed >= kill_at:
                    run.kill()
                    outcome = "killed"
                    break
                if run.elapsed > 60:
                    raise AssertionError(f"a run neither finished nor reached its kill point\n{run.output}")
                time.sleep(0.003)
            after = journal(self.setup)
        self.records.append(
            KillRecord(kind, run.elapsed, done_before, after.get("done", 0), after.get("pending", 0), outcome)
        )

    def describe(self) -> str:
        return "\n".join(
            f"{r.kind:8} {r.seconds:5.2f}s done {r.done_before:4}->{r.done_after:4} pending {r.pending_after:3}: "
            + r.outcome
            for r in self.records
        )


def test_kill_dash_nine_at_random_moments_loses_and_doubles_nothing(mirror: Mirror, tmp_path: Path) -> None:
    mailbox = generated_mailbox(1, KILL_FOLDERS, big=10)
    total = sum(len(messages) for messages in mailbox.values())
    assert total >= 1000
    seed_mailbox_fast(mirror.src, mailbox)
    setup = fault_setup(tmp_path / "pair", mirror)
    killer = Killer(setup, random.Random(20240611))

    # 1. The first copy, killed 13 times (10 over the copy, 3 early; at least 10 kills in all).
    killer.run(first=0, to_copy=total, progress=10, early=3, kills=10)
    final = setup.run("sync")
    assert final.returncode == 0, killer.describe() + final.stdout + final.stderr
    assert "Complete: every selected source message is on the destination" in final.stdout
    assert_verify_clean(setup)
    assert destination_counts(mirror, list(mailbox)) == {f: len(m) for f, m in mailbox.items()}
    assert journal(setup) == {"done": total}, "pending rows left in the state database"

    # 2. Incremental passes (UID ranges, CHANGEDSINCE, the fast path for the untouched folder), killed
    # while new mail and flag changes are copied.
    new_mail = generated_mailbox(2, KILL_NEW_MAIL, big=2)
    seed_mailbox_fast(mirror.src, new_mail)
    mirror.src.select_folder("Archive")
    archive = mirror.src.search()
    mirror.src.add_flags(archive[::5], ["\\Flagged", "$Label1"])
    mirror.src.remove_flags(archive[1::7], ["\\Seen"])
    mirror.src.unselect_folder()
    added = sum(len(messages) for messages in new_mail.values())
    killer.run(first=total, to_copy=added, progress=4, early=2, kills=5)
    final = setup.run("sync")
    assert final.returncode == 0, killer.describe() + final.stdout + final.stderr
    print("\n" + killer.describe())

    assert_verify_clean(setup)  # every message once, byte-identical, flags and INTERNALDATE equal
    expected = {f: len(m) + len(new_mail.get(f, [])) for f, m in mailbox.items()}
    assert destination_counts(mirror, list(mailbox)) == expected
    assert journal(setup) == {"done": total + added}, "pending rows left in the state database"


# --------------------------------------------------------------- 2. destination restarted mid-pass

RESTART_FOLDERS = {"INBOX": 400, "Work": 200}


def test_destination_restarted_mid_pass_fails_cleanly_then_completes(
    private_destination: DovecotServer, make_mirror: MakeMirror, tmp_path: Path
) -> None:
    mirror = make_mirror(destination=private_destination)
    mailbox = generated_mailbox(2, RESTART_FOLDERS, big=4, small=(4096, 20480))
    total = sum(len(messages) for messages in mailbox.values())
    seed_mailbox_fast(mirror.src, mailbox)
    setup = fault_setup(tmp_path / "pair", mirror)

    with SyncProcess(setup, "restarted") as run:
        wait_until(lambda: journal(setup).get("done", 0) > 0, 60, "the first confirmed batch", run)
        # The pass is frozen (SIGSTOP) while the server restarts: on a slow machine it could otherwise
        # finish before the restart. It resumes mid-copy on a connection the server has closed.
        run.proc.send_signal(signal.SIGSTOP)
        try:
            private_destination.restart()
        finally:
            run.proc.send_signal(signal.SIGCONT)
        assert_clean_failure(run, "dst")
    assert "connection lost" in run.stderr, run.output
    present = sum(destination_counts(mirror, list(mailbox)).values())
    assert 0 < present < total, (present, run.output)

    report = setup.sync()
    assert report.error is None and report.complete, report
    assert report.copied == total - present  # what was there already is not copied again
    assert_verify_clean(setup)
    assert journal(setup) == {"done": total}


# ------------------------------------------------------------------ 3. connections cut by a proxy

CUT_CASES = {
    # case: (the account whose connection is cut, where)
    "destination, half-way through the APPEND literal of a 1 MB message": (
        "dst",
        Fault("up", pattern=b" APPEND ", after=500_000),
    ),
    "destination, after the APPEND, before its OK reached us": ("dst", Fault("down", pattern=b"[APPENDUID")),
    "source, half-way through the FETCH of a 1 MB body": ("src", Fault("down", pattern=b"BODY[] {", after=300_000)),
}


@pytest.mark.parametrize("case", list(CUT_CASES))
def test_connection_cut_mid_transfer_fails_cleanly_then_completes_exactly_once(
    case: str, mirror: Mirror, proxies: Callable[..., FaultProxy], tmp_path: Path
) -> None:
    side, fault = CUT_CASES[case]
    big = SeedMessage(simple_message(0, size=1_100_000), ("\\Seen",))  # UID 1: first in the first batch
    inbox = [big] + [SeedMessage(simple_message(i, size=3000), ("\\Seen",) if i % 2 else ()) for i in range(1, 41)]
    work = [SeedMessage(simple_message(100 + i, size=2000, tag="work")) for i in range(20)]
    seed(mirror.src, "INBOX", inbox)
    seed(mirror.src, "Work", work)
    total = len(inbox) + len(work)
    proxy = proxies(mirror.source_server if side == "src" else mirror.dest_server)
    setup = fault_setup(tmp_path / "pair", mirror, proxy=proxy, proxied=side)

    proxy.inject(fault)
    with SyncProcess(setup, "cut") as run:
        assert_clean_failure(run, side)
    assert proxy.triggered >= 1, "the fault never fired: the test did not test what it says"
    present = sum(destination_counts(mirror, ["INBOX", "Work"]).values())
    if fault.pattern == b"[APPENDUID":
        assert present > 0, "the APPEND was not on the destination: the unconfirmed case was not exercised"

    proxy.heal()
    report = setup.sync()
    assert report.error is None and report.complete, report
    assert report.copied == total - present
    assert destination_counts(mirror, ["INBOX", "Work"]) == {"INBOX": len(inbox), "Work": len(work)}
    assert_verify_clean(setup)
    assert journal(setup) == {"done": total}


SWEEP_POINTS = 6


def _small_mailbox(client: IMAPClient) -> dict[str, list[SeedMessage]]:
    mailbox = {
        "INBOX": [
            SeedMessage(simple_message(i, size=1500, message_id=i != 3), ("\\Seen",) if i % 2 else ()) for i in range(6)
        ],
        "Work": [SeedMessage(simple_message(50 + i, size=800, tag="work"), ("\\Flagged",)) for i in range(4)],
    }
    for folder, messages in mailbox.items():
        seed(client, folder, messages)
    return mailbox


@pytest.mark.parametrize("side", ["src", "dst"])
def test_connection_cut_after_any_server_line_fails_cleanly_then_completes_exactly_once(
    side: str, mirror: Mirror, proxies: Callable[..., FaultProxy], tmp_path: Path
) -> None:
    """A sweep: the first pass reads exactly k lines from one server, then the connection drops, for k
    spread (stratified, seeded) over the whole conversation once the session is open (the lines
    before are the next test's)."""
    mailbox = _small_mailbox(mirror.src)
    total = sum(len(messages) for messages in mailbox.values())
    proxy = proxies(mirror.source_server if side == "src" else mirror.dest_server, record=True)

    def pair(name: str) -> tuple[Setup, LabUser]:
        user = mirror.dest_server.add_user()  # a fresh destination and state: every run holds the same dialogue
        setup = fault_setup(
            tmp_path / name,
            mirror,
            proxy=proxy,
            proxied=side,
            destination_user=user,
            transfer="{retries: 0, workers: 1}",  # one connection per side: one dialogue to sweep
        )
        return setup, user

    recorded, _user = pair("recorded")
    assert recorded.sync().complete
    [dialogue] = proxy.transcripts()
    lines = dialogue["down"].split(b"\r\n")[:-1]
    opened = next(n for n, line in enumerate(lines, 1) if line.startswith(b"* LIST")) - 1
    last = len(lines) - 3  # the LOGOUT answer is the last two lines: cutting there loses nothing
    rng = random.Random(f"test_faults/sweep/{side}")
    span = last - opened + 1
    points = sorted(
        {
            rng.randint(opened + span * j // SWEEP_POINTS, opened + span * (j + 1) // SWEEP_POINTS - 1)
            for j in range(SWEEP_POINTS)
        }
    )
    outcomes = []
    for k in points:
        setup, user = pair(f"cut{k}")
        proxy.inject(Fault("down", pattern=b"\r\n", count=k))
        with SyncProcess(setup, "cut") as run:
            assert_clean_failure(run, side)
        proxy.heal()
        present = sum(destination_counts(mirror, list(mailbox), user).values())
        pending = journal(setup).get("pending", 0)
        report = setup.sync()
        assert report.error is None and report.complete, (k, report)
        assert report.copied == total - present, k
        verdict = setup.verify()
        assert verdict.clean, (k, verdict)
        assert journal(setup) == {"done": total}, k
        outcomes.append((k, lines[k - 1][:40], present, pending))
    print(f"\n{side}: lines {opened}..{last} of {len(lines)}")
    for k, line, present, pending in outcomes:
        print(f"  cut after line {k:3} {line!r}: {present} on the destination, {pending} pending")


SESSION_OPENING_CUTS = {
    "after the LOGIN response": Fault("down", pattern=b"Logged in", after=2),
    "while sending NAMESPACE": Fault("up", pattern=b"NAMESPACE"),  # the server never gets the whole line
}


@pytest.mark.parametrize("side", ["src", "dst"])
@pytest.mark.parametrize("case", list(SESSION_OPENING_CUTS))
def test_connection_cut_right_after_login_fails_cleanly(
    case: str, side: str, mirror: Mirror, proxies: Callable[..., FaultProxy], tmp_path: Path
) -> None:
    mailbox = _small_mailbox(mirror.src)
    proxy = proxies(mirror.source_server if side == "src" else mirror.dest_server)
    setup = fault_setup(tmp_path / "pair", mirror, proxy=proxy, proxied=side)
    proxy.inject(SESSION_OPENING_CUTS[case])
    with SyncProcess(setup, "cut") as run:
        assert_clean_failure(run, side)
    proxy.heal()
    report = setup.sync()
    assert report.error is None and report.complete, report
    assert report.copied == sum(len(messages) for messages in mailbox.values())
    assert_verify_clean(setup)


# ---------------------------------------------------------------------------- 4. UIDVALIDITY reset


def _uidvalidity(client: IMAPClient, folder: str) -> int:
    return int(client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def _folder_messages(client: IMAPClient, folder: str) -> list[SeedMessage]:
    """The messages of a folder as SeedMessages (exact bytes, flags minus \\Recent, INTERNALDATE)."""
    client.select_folder(folder, readonly=True)
    data = client.fetch(client.search(), ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
    return [
        SeedMessage(
            bytes(item[b"BODY[]"]),
            tuple(f.decode() for f in item[b"FLAGS"] if f.lower() != b"\\recent"),
            item[b"INTERNALDATE"],
        )
        for _uid, item in sorted(data.items())
    ]


def _uidvalidity_fixture_mail(client: IMAPClient) -> tuple[list[SeedMessage], list[SeedMessage]]:
    rng = random.Random("test_faults/uidvalidity")
    inbox = [generated_message(rng, i, rng.randint(2000, 8000)) for i in range(10)]
    work = [generated_message(rng, 100 + i, rng.randint(2000, 8000), folder="Work") for i in range(40)]
    work.append(SeedMessage(simple_message(999, message_id=False, tag="no id"), ("\\Flagged",), work[0].internaldate))
    seed(client, "INBOX", inbox)
    seed(client, "Work", work)
    return inbox, work


def test_source_uidvalidity_reset_copies_nothing_again(
    mirror: Mirror, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox, work = _uidvalidity_fixture_mail(mirror.src)
    setup = fault_setup(tmp_path / "pair", mirror)
    assert setup.sync().copied == len(inbox) + len(work)

    before = _uidvalidity(mirror.src, "Work")
    mirror.src.select_folder("INBOX", readonly=True)
    mirror.src.delete_folder("Work")
    seed(mirror.src, "Work", list(reversed(work)))  # same messages, new UIDs in another order
    assert _uidvalidity(mirror.src, "Work") != before

    caplog.clear()
    caplog.set_level(logging.INFO)
    report = setup.sync()
    assert report.error is None and report.complete, report
    assert (report.copied, report.total("adopted"), report.total("flags_updated")) == (0, len(work), 0)
    [warning] = _warnings(caplog)
    assert "Work" in warning and "source UIDVALIDITY" in warning, warning
    assert message_count(mirror.dst, "Work") == len(work) and message_count(mirror.dst) == len(inbox)
    assert_verify_clean(setup)

    again = setup.sync()  # and the rebuilt map holds: nothing to do, no warning
    assert (again.copied, again.total("adopted"), again.total("flags_updated")) == (0, 0, 0)


def test_destination_uidvalidity_reset_copies_nothing_again(
    mirror: Mirror, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox, work = _uidvalidity_fixture_mail(mirror.src)
    setup = fault_setup(tmp_path / "pair", mirror)
    assert setup.sync().copied == len(inbox) + len(work)

    before = _uidvalidity(mirror.dst, "Work")
    copies = _folder_messages(mirror.dst, "Work")
    mirror.dst.select_folder("INBOX", readonly=True)
    mirror.dst.delete_folder("Work")
    seed(mirror.dst, "Work", copies[::-1])  # the same messages back, by APPEND, under new UIDs
    assert _uidvalidity(mirror.dst, "Work") != before

    caplog.clear()
    caplog.set_level(logging.INFO)
    report = setup.sync()
    assert report.error is None and report.complete, report
    assert (report.copied, report.total("adopted"), report.total("flags_updated")) == (0, len(work), 0)
    [warning] = _warnings(caplog)
    assert "Work" in warning and "destination UIDVALIDITY" in warning, warning
    assert message_count(mirror.dst, "Work") == len(work)
    assert_verify_clean(setup)

    again = setup.sync()
    assert (again.copied, again.total("adopted"), again.total("flags_updated")) == (0, 0, 0)


# ------------------------------------------------- 5. state DB lost while appends were unconfirmed

LOST_CASES = {
    # The destination committed the batch; its OK never reaches mailmirror, which waits until killed.
    "batch appended": Fault("down", pattern=b"[APPENDUID", action="blackhole"),
    # The batch never completes on the destination: the literal stalls half-way until mailmirror is killed.
    "batch not appended": Fault("up", pattern=b" APPEND ", after=100_000, action="blackhole"),
}


@pytest.mark.parametrize("case", list(LOST_CASES))
def test_state_database_lost_after_kill_with_pending_appends_gives_no_duplicates(
    case: str, mirror: Mirror, proxies: Callable[..., FaultProxy], tmp_path: Path
) -> None:
    rng = random.Random("test_faults/lost-state")
    inbox = [generated_message(rng, i, rng.randint(2000, 6000)) for i in range(150)]
    work = [generated_message(rng, 1000 + i, rng.randint(2000, 6000), folder="Work") for i in range(30)]
    seed_fast(mirror.src, "INBOX", inbox)
    seed_fast(mirror.src, "Work", work)
    total = len(inbox) + len(work)
    proxy = proxies(mirror.dest_server)
    setup = fault_setup(
        tmp_path / "pair",
        mirror,
        proxy=proxy,
        transfer="{retries: 0, workers: 1}",  # one batch in flight: pending rows are exactly that batch
    )

    proxy.inject(LOST_CASES[case])
    with SyncProcess(setup, "held") as run:
        wait_until(lambda: proxy.triggered >= 1, 60, "the APPEND to reach the fault point", run)
        wait_until(lambda: journal(setup).get("pending", 0) > 0, 30, "pending rows in the journal", run)
        run.kill()
    pending = journal(setup).get("pending", 0)
    assert pending > 0
    present = sum(destination_counts(mirror, ["INBOX", "Work"]).values())
    if case == "batch appended":
        assert present >= pending  # the unconfirmed batch is on the destination
    else:
        assert present == 0
    delete_state(setup)

    proxy.heal()
    report = setup.sync()
    assert report.error is None and report.complete, report
    assert report.copied == total - present and report.total("adopted") == present
    assert destination_counts(mirror, ["INBOX", "Work"]) == {"INBOX": len(inbox), "Work": len(work)}
    assert_verify_clean(setup)
    assert journal(setup) == {"done": total}
