"""The fleet benchmark: N pairs from one pair set (CSV + templates) in one mailmirror process.

Two lab Dovecot servers (source, destination), N users on each (one shared password, given to mailmirror
as ``{env: MM_SCALE_PASSWORD}`` in the templates), M small messages per source user (MULTIAPPEND, several
worker processes; not timed as a result).  Then, each phase optional (``--phases``):

- ``validate``  ``mailmirror config validate`` (wall, CPU, peak RSS; the median of ``--validate-repeat`` runs);
- ``first``     ``mailmirror sync -j J``: the first round into empty destinations;
- ``nochange``  the same command again, nothing changed;
- ``daemon``    ``mailmirror run`` (schedule every 1h) until every pair's first pass is logged, then its
  RSS, peak RSS, threads and CPU from /proc; stopped with SIGTERM;
- ``idle``      ``mailmirror run`` with ``schedule: {idle: [INBOX], every: 1h}`` on the first K pairs: time
  until every watcher is up, threads and RSS, then push latency (source APPEND -> on the destination)
  over a sample of the watched pairs.

Server-side connections (ESTABLISHED TCP sockets on the servers' ports, ``ss`` every
``--sample-interval`` seconds: a lower bound of the true maximum) are reported per phase, with the caps.

    .venv/bin/python bench/scale.py --pairs 1000 --json scale-1000.json --markdown scale-1000.md

``--phases validate`` alone starts no server and seeds nothing (the config only names the ports).
See bench/README.md ("The fleet benchmark") and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from mailmirror.lab.dovecot import DovecotServer, LabCA

ROOT = Path(__file__).resolve().parent.parent
MAILMIRROR = ROOT / ".venv" / "bin" / "mailmirror"
GNU_TIME = Path("/usr/bin/time")
PASSWORD_ENV = "MM_SCALE_PASSWORD"
SET_NAME = "fleet"
FOLDER_NAMES = ("INBOX", "Archive", "Sent", "Projects", "Receipts", "Lists", "Travel", "Notes")
#: A daemon phase gives up when its log shows no new pass or watcher for this long.
STALL_SECONDS = 300.0

#: A daemon log line that ends a pair's pass (text log format: "... LEVEL logger: <pair>: pass ok in ...").
PASS_END = re.compile(rf"\b({SET_NAME}-[A-Za-z0-9._@-]+): pass (ok|done with failures|failed|stopped)\b")
PUSH_END = re.compile(rf"\b({SET_NAME}-[A-Za-z0-9._@-]+): push pass (ok|done with failures|failed|stopped)\b")
METRICS_URL = re.compile(r"metrics and health checks on (http://\S+/metrics)")
WATCHING = re.compile(rf"\b({SET_NAME}-[A-Za-z0-9._@-]+): watching INBOX with IDLE\b")


def log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- servers


class ScaleDovecot(DovecotServer):
    """The lab Dovecot with room for many connections at once.

    The lab allows 1,024 imap processes (one per logged-in connection) and Dovecot's default client limit
    of 1,000 per service (log, anvil, auth, ...).  1,000 IDLE watchers plus the passes need more: the
    generated configuration's ``service imap`` limit is raised and ``default_client_limit`` set above it.
    """

    def __init__(self, *args: Any, imap_processes: int = 1024, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.imap_processes = imap_processes

    def _config_text(self, cert: Path, key: Path) -> str:
        text = super()._config_text(cert, key)
        if self.imap_processes <= 1024:
            return text
        lab_limit = "service imap {\n  process_limit = 1024\n}"
        if lab_limit not in text:
            log(f"warning: the lab's imap process_limit was not found; {self.imap_processes} connections may not fit")
            return text
        text = text.replace(lab_limit, f"service imap {{\n  process_limit = {self.imap_processes}\n}}")
        return f"default_client_limit = {2 * self.imap_processes + 100}\n" + text


@dataclass(frozen=True)
class Fleet:
    pairs: int
    messages: int
    folders: tuple[str, ...]
    password: str

    @property
    def width(self) -> int:
        return max(5, len(str(self.pairs)))

    def source_user(self, index: int) -> str:
        return f"u{index:0{self.width}d}"

    def destination_user(self, index: int) -> str:
        return f"m{index:0{self.width}d}"

    def pair_name(self, index: int) -> str:
        return f"{SET_NAME}-{self.source_user(index)}"

    def per_folder(self) -> dict[str, int]:
        """The M messages of a user spread round-robin over the folders."""
        counts = dict.fromkeys(self.folders, 0)
        for i in range(self.messages):
            counts[self.folders[i % len(self.folders)]] += 1
        return counts


def add_users(server: DovecotServer, names: Sequence[str], password: str) -> float:
    """DovecotServer.add_user is O(1) per user (a new per-user passwd-file, one line appended to the
    aggregated one) and needs no reload: Dovecot reads a new per-user file at the first login."""
    began = time.monotonic()
    for name in names:
        server.add_user(name, password)
    return time.monotonic() - began


# --------------------------------------------------------------------------------------------- seeding


def message(user: str, folder: str, index: int) -> bytes:
    body = "".join(f"line {n} of a small message for {user}\r\n" for n in range(15 + index % 25))
    return (
        f"From: sender{index % 13}@example.org\r\nTo: {user}@example.org\r\nSubject: {folder} message {index}\r\n"
        f"Message-ID: <{user}.{folder.replace('/', '.')}.{index}@scale.bench>\r\n"
        f"Date: Mon, 1 Jan 2024 10:{index % 60:02d}:00 +0000\r\n\r\n{body}"
    ).encode()


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the lab turned SIGTERM into SystemExit in the parent


def _seed_users(task: tuple[str, int, str, list[str], dict[str, int]]) -> int:
    host, port, password, users, per_folder = task
    stored = 0
    for user in users:
        client = IMAPClient(host, port, ssl=False, timeout=120)
        try:
            client.login(user, password)
            client._imap.debug = 0  # imapclient's debug level makes imaplib format every literal
            for folder, count in per_folder.items():
                if folder != "INBOX":
                    client.create_folder(folder)
                    client.subscribe_folder(folder)
                if count:
                    batch = [
                        {"msg": message(user, folder, i), "flags": ["\\Seen"] if i % 3 else []} for i in range(count)
                    ]
                    typ, data = client.multiappend(folder, batch)
                    if (typ.decode() if isinstance(typ, bytes) else str(typ)).upper() != "OK":
                        raise RuntimeError(f"MULTIAPPEND for {user} refused: {data!r}")
                    stored += count
        finally:
            with contextlib.suppress(Exception):
                client.logout()
    return stored


def seed_sources(server: DovecotServer, fleet: Fleet, workers: int) -> float:
    users = [fleet.source_user(i) for i in range(1, fleet.pairs + 1)]
    chunk = max(1, min(50, len(users) // (4 * workers) or 1))
    tasks = [
        (server.host, server.port, fleet.password, users[i : i + chunk], fleet.per_folder())
        for i in range(0, len(users), chunk)
    ]
    began = last = time.monotonic()
    done = 0
    pool = multiprocessing.get_context("fork").Pool(workers, _worker_init)
    try:
        for stored in pool.imap_unordered(_seed_users, tasks):
            done += stored
            if time.monotonic() - last > 15:
                last = time.monotonic()
                log(f"  seeding: {done}/{fleet.pairs * fleet.messages} messages, {last - began:.0f} s")
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return time.monotonic() - began


# ----------------------------------------------------------------------------------- config and CSV


def write_config(
    directory: Path,
    name: str,
    fleet: Fleet,
    rows: int,
    source: DovecotServer,
    destination: DovecotServer,
    ca: LabCA,
    args: argparse.Namespace,
    schedule: str,
) -> Path:
    """A pair set as a fleet admin writes it: the CSV of users, and templates with one shared secret."""
    csv_path = directory / f"{name}.csv"
    with csv_path.open("w") as fh:
        fh.write("user,dest_user\n")
        for i in range(1, rows + 1):
            fh.write(f"{fleet.source_user(i)},{fleet.destination_user(i)}\n")

    def account(server: DovecotServer, column: str) -> str:
        tls = f"tls: {args.tls}, tls_ca: {ca.cert_path}" if args.tls != "none" else "tls: none"
        cap = f", max_connections: {args.account_max_connections}" if args.account_max_connections else ""
        return (
            f"{{host: 127.0.0.1, port: {server.port}, {tls}, username: '{{{column}}}', "
            f"password: {{env: {PASSWORD_ENV}}}{cap}}}"
        )

    config = directory / f"{name}.yaml"
    config.write_text(
        f"# bench/scale.py: {rows} pairs from {csv_path.name}\n"
        f"state: {{path: {directory / 'state.db'}}}\n"
        "log: {level: info}\n"
        "metrics: {listen: '127.0.0.1:0'}\n"
        f"daemon: {{max_parallel_passes: {args.parallel}, max_connections: {args.max_connections}, "
        f"lock_dir: {directory / 'locks'}}}\n"
        "pair_sets:\n"
        f"  {SET_NAME}:\n"
        f"    csv: {csv_path.name}\n"
        f"    source: {account(source, 'user')}\n"
        f"    destination: {account(destination, 'dest_user')}\n"
        f"    schedule: {schedule}\n"
    )
    return config


# ------------------------------------------------------------------------------------ measurement


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of a live process; {} when it is gone."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                found[key] = int(value.split()[0])
    return found


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (its own threads; not its children)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def child_pid(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    return None


class Watcher(threading.Thread):
    """Samples, every `interval` seconds: the servers' established connections (ss, kernel-side filter)
    and the threads and peak RSS of one process (`track`)."""

    def __init__(self, source: DovecotServer | None, destination: DovecotServer | None, interval: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.interval = interval
        self.ports = {}
        if source is not None and destination is not None:
            self.ports = {
                source.port: "src",
                source.tls_port: "src",
                destination.port: "dst",
                destination.tls_port: "dst",
            }
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.max_src = self.max_dst = self.max_both = 0
        self.max_threads = self.max_hwm = 0
        self.pid: int | None = None
        self.ss_failed = False

    def reset(self, pid: int | None = None) -> None:
        with self.lock:
            self.max_src = self.max_dst = self.max_both = 0
            self.max_threads = self.max_hwm = 0
            self.pid = pid

    def track(self, pid: int | None) -> None:
        with self.lock:
            self.pid = pid

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                "max_src": self.max_src,
                "max_dst": self.max_dst,
                "max_both": self.max_both,
                "max_threads": self.max_threads,
                "max_hwm_kib": self.max_hwm,
            }

    def connections(self) -> tuple[int, int]:
        if not self.ports or self.ss_failed:
            return 0, 0
        expression = " or ".join(f"sport = :{port}" for port in self.ports)
        try:
            out = subprocess.run(
                ["ss", "-Htn", "state", "established", f"( {expression} )"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError) as error:
            log(f"warning: ss failed ({error}): connections are not counted")
            self.ss_failed = True
            return 0, 0
        counts = {"src": 0, "dst": 0}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                port = int(parts[2].rsplit(":", 1)[1])
                side = self.ports.get(port)
                if side:
                    counts[side] += 1
        return counts["src"], counts["dst"]

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            src, dst = self.connections()
            with self.lock:
                pid = self.pid
            status = proc_status(pid) if pid else {}
            with self.lock:
                self.max_src = max(self.max_src, src)
                self.max_dst = max(self.max_dst, dst)
                self.max_both = max(self.max_both, src + dst)
                self.max_threads = max(self.max_threads, status.get("Threads", 0))
                self.max_hwm = max(self.max_hwm, status.get("VmHWM", 0))


@dataclass
class Phase:
    name: str
    pairs: int
    command: list[str]
    wall: float = 0.0
    cpu: float = 0.0
    peak_rss_kib: int = 0
    rss_kib: int = 0  # the daemons: RSS when the first round was done
    threads: int = 0  # peak while running (sync), or after the first round (daemons)
    exit_code: int | None = None
    max_src: int = 0
    max_dst: int = 0
    max_both: int = 0
    load: float = 0.0
    rss_method: str = ""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ms_per_pair(self) -> float:
        return 1000 * self.wall / self.pairs if self.pairs else 0.0

    @property
    def cpu_ms_per_pair(self) -> float:
        return 1000 * self.cpu / self.pairs if self.pairs else 0.0


class Children:
    """Every process group this run started: killed on the way out (also on Ctrl-C)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    proc.wait(timeout=10)


def run_to_end(
    phase: Phase, children: Children, watcher: Watcher, log_path: Path, env: dict[str, str], timeout: float
) -> Phase:
    """One mailmirror command to completion: wall, CPU and peak RSS (GNU time when installed, else /proc
    polling), peak threads and server connections while it ran."""
    use_time = GNU_TIME.is_file() and os.access(GNU_TIME, os.X_OK)
    rusage = log_path.with_name(log_path.name + f".{phase.name}.rusage")
    argv = [str(GNU_TIME), "-f", "%M %U %S", "-o", str(rusage), *phase.command] if use_time else phase.command
    phase.load = os.getloadavg()[0]
    watcher.reset()
    began = time.perf_counter()
    proc = children.start(argv, log_path, env)
    target = None
    deadline = time.monotonic() + 5
    while use_time and target is None and not _ended(proc) and time.monotonic() < deadline:
        target = child_pid(proc.pid)
        time.sleep(0.005)
    watcher.track(target or proc.pid)
    try:
        _pid, status, usage = os.wait4(proc.pid, 0) if _wait(proc, timeout) else (0, 0, None)
    finally:
        phase.wall = time.perf_counter() - began
        watcher.track(None)
    if usage is None:
        phase.exit_code = None
        phase.notes.append(f"killed after {timeout:.0f} s")
    else:
        proc.returncode = phase.exit_code = os.waitstatus_to_exitcode(status)
        phase.cpu = usage.ru_utime + usage.ru_stime
    seen = watcher.snapshot()
    phase.max_src, phase.max_dst, phase.max_both = seen["max_src"], seen["max_dst"], seen["max_both"]
    phase.threads, phase.peak_rss_kib, phase.rss_method = seen["max_threads"], seen["max_hwm_kib"], "VmHWM polling"
    if use_time:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = rusage.read_text().strip().splitlines()[-1].split()
            phase.peak_rss_kib, phase.cpu, phase.rss_method = (
                int(fields[0]),
                float(fields[1]) + float(fields[2]),
                "GNU time",
            )
    return phase


def _ended(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the process has ended, without reaping it (os.wait4 then gets its resource usage)."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until the process ends (True; not reaped) or the timeout (False: its group is killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ended(proc):
            return True
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return False


# -------------------------------------------------------------------------------------------- daemons


class LogFollower:
    """Reads a daemon's log as it grows: which pairs ended their pass, which watchers are up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.finished: dict[str, str] = {}  # pair -> first outcome
        self.watching: set[str] = set()
        self.errors: list[str] = []
        self.push_passes = 0
        self.metrics_url: str | None = None
        self.last_pass_at = time.monotonic()  # when the last pass (scheduled or pushed) was logged
        self.last_push_at = 0.0  # when the last push pass (IDLE news) was logged
        self.last_progress_at = 0.0  # when the last pass or watcher was logged

    def poll(self) -> None:
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if match := PASS_END.search(line):
                self.finished.setdefault(match.group(1), match.group(2))
                self.last_pass_at = self.last_progress_at = time.monotonic()
            elif PUSH_END.search(line):
                self.push_passes += 1
                self.last_pass_at = self.last_push_at = time.monotonic()
            elif match := WATCHING.search(line):
                self.watching.add(match.group(1))
                self.last_progress_at = time.monotonic()
            elif match := METRICS_URL.search(line):
                self.metrics_url = match.group(1)
            elif (" ERROR " in line or " WARNING " in line or "Traceback" in line) and len(self.errors) < 20:
                self.errors.append(line)


def run_daemon(
    phase: Phase,
    children: Children,
    watcher: Watcher,
    log_path: Path,
    env: dict[str, str],
    timeout: float,
    *,
    watchers: int = 0,
    settle: float = 10.0,
    quiet: float = 3.0,
    then: Any = None,
) -> Phase:
    """`mailmirror run` until every pair's first pass is logged (and every IDLE watcher is up): wall and
    CPU to that point; then, once no pass has ended for `quiet` seconds (the watchers' first pushes),
    `settle` seconds of nothing to do: RSS, peak RSS, threads and CPU per second while idle.
    `then(phase)` runs while the daemon still does (the push latency test), then SIGTERM."""
    phase.load = os.getloadavg()[0]
    watcher.reset()
    log_path.touch()
    follower = LogFollower(log_path)
    follower.offset = log_path.stat().st_size
    began, began_monotonic = time.perf_counter(), time.monotonic()
    proc = children.start(phase.command, log_path, env)
    watcher.track(proc.pid)
    phase.rss_method = "/proc/PID/status"
    try:
        deadline = time.monotonic() + timeout
        last_note = time.monotonic()
        while len(follower.finished) < phase.pairs or len(follower.watching) < watchers:
            if proc.poll() is not None:
                phase.notes.append(f"the daemon exited with {proc.returncode} before its first round was done")
                break
            if time.monotonic() > deadline:
                phase.notes.append(f"first round not done after {timeout:.0f} s")
                break
            if time.monotonic() - max(follower.last_progress_at, began_monotonic) > STALL_SECONDS:
                phase.notes.append(
                    f"nothing new in the log for {STALL_SECONDS:.0f} s ({len(follower.finished)} passes, "
                    f"{len(follower.watching)} watchers seen): stuck, or its lines changed (PASS_END, WATCHING)"
                )
                break
            time.sleep(0.2)
            follower.poll()
            if time.monotonic() - last_note > 15:
                last_note = time.monotonic()
                log(f"  {phase.name}: {len(follower.finished)}/{phase.pairs} passes, {len(follower.watching)} watchers")
        phase.wall = time.perf_counter() - began
        phase.cpu = proc_cpu_seconds(proc.pid)
        failed = sum(1 for outcome in follower.finished.values() if outcome != "ok")
        phase.extra["first_passes_ok"] = len(follower.finished) - failed
        if failed:
            phase.notes.append(f"{failed} first passes not ok")
        if watchers:
            phase.extra["watchers_up"] = len(follower.watching)
        seen = watcher.snapshot()
        phase.max_src, phase.max_dst, phase.max_both = seen["max_src"], seen["max_dst"], seen["max_both"]
        if proc.poll() is None:
            # IDLE watchers ask for a pass when they connect: wait until no push pass has ended for `quiet`
            # s (scheduled passes go on: a fleet's are spread over the interval, so some come due at once).
            quiet_began = time.monotonic()
            quiet_deadline = quiet_began + STALL_SECONDS
            while (
                time.monotonic() - max(follower.last_push_at, quiet_began) < quiet
                and proc.poll() is None
                and time.monotonic() < quiet_deadline
            ):
                time.sleep(0.2)
                follower.poll()
            phase.extra["push_passes_at_start"] = follower.push_passes
            phase.extra["last_pass_end_s"] = round(follower.last_pass_at - began_monotonic, 1)
            cpu_quiet = proc_cpu_seconds(proc.pid)
            phase.extra["cpu_until_quiet_s"] = round(cpu_quiet, 1)
            time.sleep(settle)
            status = proc_status(proc.pid)
            phase.rss_kib, phase.peak_rss_kib, phase.threads = status["VmRSS"], status["VmHWM"], status["Threads"]
            phase.extra["cpu_while_idle_per_s"] = round((proc_cpu_seconds(proc.pid) - cpu_quiet) / settle, 3)
            if then is not None:
                then(phase)
                if follower.metrics_url:
                    phase.extra["daemon_push_latency"] = scraped_push_latency(follower.metrics_url)
    finally:
        watcher.track(None)
        follower.poll()
        phase.notes.extend(follower.errors[:5])
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                phase.notes.append("did not stop within 60 s of SIGTERM")
        phase.exit_code = proc.returncode
    return phase


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def push_latency(
    source: DovecotServer, destination: DovecotServer, fleet: Fleet, sample: Sequence[int], rate: float, wait: float
) -> dict[str, Any]:
    """For each sampled pair, at `rate` appends per second: APPEND a message to the source INBOX, then poll
    the destination INBOX (NOOP every 20 ms, INBOX selected) until it is there.  Connections are opened
    first."""
    inbox = fleet.per_folder()["INBOX"]

    def connect(server: DovecotServer, user: str) -> IMAPClient:
        client = IMAPClient(server.host, server.port, ssl=False, timeout=60)
        client.login(user, fleet.password)
        client._imap.debug = 0
        return client

    sources = {i: connect(source, fleet.source_user(i)) for i in sample}
    destinations = {i: connect(destination, fleet.destination_user(i)) for i in sample}
    for client in destinations.values():
        client.select_folder("INBOX", readonly=True)
    latencies: dict[int, float] = {}

    def one(i: int) -> None:
        raw = message(fleet.source_user(i), "push", i)
        sources[i].append("INBOX", raw)
        sent = time.monotonic()
        while time.monotonic() - sent < wait:
            _text, responses = destinations[i].noop()
            if any(len(r) == 2 and r[1] == b"EXISTS" and int(r[0]) > inbox for r in responses):
                latencies[i] = time.monotonic() - sent
                return
            time.sleep(0.02)

    try:
        with ThreadPoolExecutor(max_workers=min(64, len(sample))) as pool:
            start = time.monotonic()
            futures = []
            for n, i in enumerate(sample):
                time.sleep(max(0.0, start + n / rate - time.monotonic()))
                futures.append(pool.submit(one, i))
            for future in futures:
                future.result()
    finally:
        for client in (*sources.values(), *destinations.values()):
            with contextlib.suppress(Exception):
                client.logout()
    values = list(latencies.values())
    result: dict[str, Any] = {"sample": len(sample), "arrived": len(values), "rate_per_s": rate}
    if values:
        result.update(
            p50=round(percentile(values, 0.5), 3),
            p95=round(percentile(values, 0.95), 3),
            max=round(max(values), 3),
            mean=round(statistics.mean(values), 3),
        )
    return result


def scraped_push_latency(url: str) -> str:
    """The daemon's own view: mailmirror_push_latency_seconds (IDLE news -> end of the push pass), mean."""
    total = count = 0.0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            for raw in response:
                line = raw.decode()
                if line.startswith("mailmirror_push_latency_seconds_sum{"):
                    total += float(line.split()[-1])
                elif line.startswith("mailmirror_push_latency_seconds_count{"):
                    count += float(line.split()[-1])
    except (OSError, ValueError) as error:
        return f"not scraped ({error})"
    return f"mean {total / count:.3f} s over {count:.0f} pushes" if count else "no push observed"


def check_destinations(destination: DovecotServer, fleet: Fleet, sample: Sequence[int]) -> list[str]:
    """Messages per folder on a sample of destinations, against what was seeded."""
    problems = []
    want = {folder: count for folder, count in fleet.per_folder().items() if count}
    for i in sample:
        client = IMAPClient(destination.host, destination.port, ssl=False, timeout=60)
        try:
            client.login(fleet.destination_user(i), fleet.password)
            for folder, count in want.items():
                try:
                    have = int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])
                except Exception as error:
                    problems.append(f"{fleet.destination_user(i)}/{folder}: {error}")
                    continue
                if have != count:
                    problems.append(f"{fleet.destination_user(i)}/{folder}: {have} messages, {count} seeded")
        finally:
            with contextlib.suppress(Exception):
                client.logout()
    return problems


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


@contextlib.contextmanager
def inotify_room(needed: int, allowed: bool) -> Iterator[list[str]]:
    """Dovecot's IDLE needs an inotify instance per imap process, all under one uid; past
    fs.inotify.max_user_instances (often 128) it falls back to polling every 30 s
    (mailbox_idle_check_interval) and push latency says nothing.  Raise the limit for the phase when
    allowed (root), else note it."""
    notes: list[str] = []
    try:
        limit = int(INOTIFY_INSTANCES.read_text())
    except (OSError, ValueError):
        yield notes
        return
    if limit >= needed:
        yield notes
        return
    if not allowed:
        notes.append(
            f"fs.inotify.max_user_instances is {limit}, below the {needed} IDLE sessions: Dovecot polls some "
            "mailboxes every 30 s instead (rerun with --raise-inotify as root)"
        )
        log(f"warning: {notes[0]}")
        yield notes
        return
    try:
        INOTIFY_INSTANCES.write_text(f"{needed}\n")
    except OSError as error:
        notes.append(
            f"fs.inotify.max_user_instances is {limit}, below the {needed} IDLE sessions, and not raised ({error})"
        )
        log(f"warning: {notes[0]}")
        yield notes
        return
    log(f"fs.inotify.max_user_instances {limit} -> {needed} for the idle phase")
    try:
        yield notes
    finally:
        with contextlib.suppress(OSError):
            INOTIFY_INSTANCES.write_text(f"{limit}\n")
            log(f"fs.inotify.max_user_instances restored to {limit}")


def dovecot_inotify_warnings(server: DovecotServer) -> int:
    try:
        return server.log_path.read_text(errors="replace").count("Inotify instance limit")
    except OSError:
        return 0


def spread(count: int, among: int) -> list[int]:
    """`count` pair indexes (1-based) spread evenly over 1..among."""
    count = min(count, among)
    return sorted({1 + (k * among) // count for k in range(count)}) if count else []


# --------------------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "daemon"], capture_output=True, text=True)
    dovecot = subprocess.run(["dovecot", "--version"], capture_output=True, text=True)
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "cores": os.cpu_count(),
        "memory_mib": memory,
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "dovecot": dovecot.stdout.strip(),
        "commit": commit.stdout.strip() + (" (daemon/ modified)" if dirty.stdout.strip() else ""),
        "command": " ".join([".venv/bin/python", "bench/scale.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def markdown(result: dict[str, Any]) -> str:
    m, setup = result["machine"], result["setup"]
    lines = [
        f"**{result['pairs']:,} pairs** × {result['messages']} messages in {len(result['folders'])} folder(s), "
        f"`sync -j {result['parallel']}`, tls {result['tls']}; "
        f"caps: `daemon.max_connections` {result['max_connections']}, "
        f"{result['account_max_connections'] or 'default (4)'} per server and side "
        "(the templates' `max_connections`)",
        "",
        f"Machine: {m['cores']} cores, {m['memory_mib']:,} MiB, load {m['load_at_start']} at start; "
        f"Python {m['python']}, "
        f"Dovecot {m['dovecot']}; commit {m['commit']}; {m['date']}",
        "",
        f"Command: `{m['command']}`",
        "",
    ]
    if setup:
        lines += [
            "Setup (not results): " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in setup.items()),
            "",
        ]
    lines += [
        "| phase | pairs | wall | CPU | peak RSS | RSS after | threads | wall/pair | CPU/pair "
        "| max conns src/dst/both | load | exit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for p in result["phases"]:
        rss_after = f"{p['rss_kib'] / 1024:.0f} MiB" if p["rss_kib"] else ""
        lines.append(
            f"| {p['name']} | {p['pairs']:,} | {p['wall']:.1f} s | {p['cpu']:.1f} s "
            f"| {p['peak_rss_kib'] / 1024:.0f} MiB "
            f"| {rss_after} | {p['threads'] or ''} | {p['ms_per_pair']:.1f} ms | {p['cpu_ms_per_pair']:.1f} ms "
            f"| {p['max_src']}/{p['max_dst']}/{p['max_both']} | {p['load']:.1f} | {p['exit_code']} |"
        )
    for p in result["phases"]:
        if p["extra"] or p["notes"]:
            details = ", ".join(f"{k} {v}" for k, v in p["extra"].items() if k != "latency")
            lines.append("")
            lines.append(f"- {p['name']}: {details}" + ("; " + "; ".join(p["notes"]) if p["notes"] else ""))
            if latency := p["extra"].get("latency"):
                lines.append(
                    f"- push latency over {latency['sample']} watched pairs ({latency['rate_per_s']}/s): "
                    + (
                        f"p50 {latency['p50']} s, p95 {latency['p95']} s, max {latency['max']} s, "
                        if "p50" in latency
                        else ""
                    )
                    + f"{latency['arrived']} of {latency['sample']} arrived"
                )
    side_cap = result["account_max_connections"] or 4
    over = [
        p["name"]
        for p in result["phases"]
        if p["name"] != "idle"
        and (max(p["max_src"], p["max_dst"]) > side_cap or p["max_both"] > result["max_connections"])
    ]
    lines += [
        "",
        f"Caps ({side_cap} per server and side, {result['max_connections']} in all; the idle phase's watchers and "
        "probe are outside them): " + (f"EXCEEDED in {', '.join(over)}" if over else "never exceeded"),
    ]
    if result.get("check"):
        lines += ["", f"Destination check: {result['check']}"]
    lines.append("")
    lines.append(
        "wall/CPU/peak RSS: of the mailmirror process (GNU time for validate/first/nochange; /proc for the "
        "daemons, wall and CPU up to the end of the first round, RSS and threads after 10 s with nothing to do). "
        "Connections: established TCP connections on the servers' ports, sampled (a lower bound of the maximum); "
        "the idle phase's include its IDLE watchers and the latency probe's own connections."
    )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- main


PHASES = ("validate", "first", "nochange", "daemon", "idle")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000, help="N: pairs, users on each server (default 1000)")
    parser.add_argument("--messages", type=int, default=20, help="M: messages per source user (default 20)")
    parser.add_argument(
        "--folders", type=int, default=1, help="folders per source user, messages round-robin (1: INBOX)"
    )
    parser.add_argument("--parallel", "-j", type=int, default=8, help="sync -j and daemon.max_parallel_passes (8)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {','.join(PHASES)}")
    parser.add_argument("--validate-repeat", type=int, default=3, help="config validate runs (median shown; 3)")
    parser.add_argument(
        "--idle-pairs", type=int, default=1000, help="K: watched pairs in the idle phase (min(N, 1000))"
    )
    parser.add_argument("--idle-sample", type=int, default=50, help="pairs whose push latency is measured (50)")
    parser.add_argument("--idle-rate", type=float, default=5.0, help="source appends per second in that test (5)")
    parser.add_argument("--tls", choices=("starttls", "none"), default="starttls", help="mailmirror's connections")
    parser.add_argument(
        "--account-max-connections", type=int, default=16,
        help="max_connections in both templates: the cap per server and side, shared by all pairs (16; 0: not set, "
        "the account default of 4)",
    )  # fmt: skip
    parser.add_argument("--max-connections", type=int, default=64, help="daemon.max_connections (64, the default)")
    parser.add_argument("--workers", type=int, default=4, help="seeding processes (4)")
    parser.add_argument("--sample-interval", type=float, default=0.1, help="connection/RSS sampling period (0.1 s)")
    parser.add_argument("--timeout", type=float, default=7200, help="per phase, seconds (7200)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown table here")
    parser.add_argument("--keep", action="store_true", help="keep the lab directory (configs, logs, Maildirs)")
    parser.add_argument("--tmpdir", type=Path, help="where the lab directory is made (default $TMPDIR)")
    parser.add_argument(
        "--raise-inotify", action="store_true",
        help="as root: raise fs.inotify.max_user_instances for the idle phase (restored at the end)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.phase_list = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phase_list) - set(PHASES)
    if unknown or not args.phase_list:
        parser.error(f"--phases: unknown {', '.join(sorted(unknown))} (choose from {', '.join(PHASES)})")
    if args.pairs < 1 or args.messages < 1 or not 1 <= args.folders <= len(FOLDER_NAMES):
        parser.error(f"--pairs and --messages must be positive, --folders 1..{len(FOLDER_NAMES)}")
    args.idle_pairs = min(args.idle_pairs, args.pairs)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not MAILMIRROR.exists():
        log(f"{MAILMIRROR} is missing: run scripts/bootstrap first")
        return 69
    fleet = Fleet(args.pairs, args.messages, FOLDER_NAMES[: args.folders], secrets.token_urlsafe(12))
    servers_needed = any(p != "validate" for p in args.phase_list)
    root = Path(tempfile.mkdtemp(prefix="mailmirror-scale-", dir=args.tmpdir))
    root.chmod(0o755)  # Dovecot's unprivileged mail user must traverse it
    work = root / "mailmirror"
    work.mkdir()
    env = {**os.environ, PASSWORD_ENV: fleet.password}
    env.pop("NOTIFY_SOCKET", None)
    children = Children()
    result: dict[str, Any] = {
        "machine": machine(),
        "pairs": args.pairs,
        "messages": args.messages,
        "folders": list(fleet.folders),
        "parallel": args.parallel,
        "tls": args.tls,
        "max_connections": args.max_connections,
        "account_max_connections": args.account_max_connections,
        "setup": {},
        "phases": [],
    }
    # Room for the idle phase: K watchers, the probe's 2×sample connections, the passes.
    processes = args.idle_pairs + 2 * args.idle_sample + 2 * args.max_connections + 100
    ca = LabCA(root / "ca")
    source = ScaleDovecot(root / "src", "ssrc", ca=ca, imap_processes=processes)
    destination = ScaleDovecot(root / "dst", "sdst", ca=ca, imap_processes=processes)
    watcher = Watcher(source if servers_needed else None, destination if servers_needed else None, args.sample_interval)
    log(f"lab in {root}")
    try:
        if servers_needed:
            source.start()
            destination.start()
            log(
                f"servers up (source :{source.port}, destination :{destination.port}); "
                f"adding {args.pairs} users on each"
            )
            users = add_users(source, [fleet.source_user(i) for i in range(1, fleet.pairs + 1)], fleet.password)
            users += add_users(
                destination, [fleet.destination_user(i) for i in range(1, fleet.pairs + 1)], fleet.password
            )
            result["setup"]["users_s"] = round(users, 1)
            log(
                f"users added in {users:.1f} s; "
                f"seeding {args.pairs * args.messages} messages ({args.workers} processes)"
            )
            seconds = seed_sources(source, fleet, args.workers)
            result["setup"]["seeding_s"] = round(seconds, 1)
            result["setup"]["seeding_msgs_per_s"] = round(args.pairs * args.messages / seconds)
            log(f"seeded in {seconds:.1f} s")
        watcher.start()
        config = write_config(work, "scale", fleet, fleet.pairs, source, destination, ca, args, "{every: 1h}")
        mm = [str(MAILMIRROR), "-q", "-c", str(config)]
        log_path = work / "mailmirror.log"
        for name in args.phase_list:
            log(f"phase {name}")
            phase = run_phase(
                name, args, fleet, config, mm, work, log_path, env, children, watcher, source, destination, ca
            )
            if name == "first" and phase.exit_code == 0:
                problems = check_destinations(destination, fleet, spread(20, fleet.pairs))
                result["check"] = f"{len(spread(20, fleet.pairs))} destinations after the first round: " + (
                    "every folder has its messages" if not problems else "; ".join(problems[:5])
                )
            result["phases"].append(
                {**asdict(phase), "ms_per_pair": phase.ms_per_pair, "cpu_ms_per_pair": phase.cpu_ms_per_pair}
            )
            log(f"  {name}: {phase.wall:.1f} s wall, {phase.cpu:.1f} s CPU, exit {phase.exit_code}")
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        watcher.stopping.set()
        children.kill_all()
        for server in (source, destination):
            with contextlib.suppress(Exception):
                server.stop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    text = markdown(result)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    failed = "EXCEEDED" in text or any(
        p["exit_code"] != 0 or (p["notes"] and p["name"] in ("daemon", "idle")) for p in result["phases"]
    )
    return 1 if failed else 0


def run_phase(
    name: str,
    args: argparse.Namespace,
    fleet: Fleet,
    config: Path,
    mm: list[str],
    work: Path,
    log_path: Path,
    env: dict[str, str],
    children: Children,
    watcher: Watcher,
    source: DovecotServer,
    destination: DovecotServer,
    ca: LabCA,
) -> Phase:
    if name == "validate":
        runs = [
            run_to_end(
                Phase(name, fleet.pairs, [*mm, "config", "validate"]), children, watcher, log_path, env, args.timeout
            )
            for _ in range(max(1, args.validate_repeat))
        ]
        runs.sort(key=lambda p: p.wall)
        phase = runs[len(runs) // 2]
        phase.extra["walls_s"] = [round(p.wall, 2) for p in runs]
        return phase
    if name in ("first", "nochange"):
        command = [*mm, "sync", "-j", str(args.parallel), "--no-progress"]
        return run_to_end(Phase(name, fleet.pairs, command), children, watcher, log_path, env, args.timeout)
    if name == "daemon":
        command = [str(MAILMIRROR), "-c", str(config), "run"]
        return run_daemon(Phase(name, fleet.pairs, command), children, watcher, work / "daemon.log", env, args.timeout)
    idle_config = write_config(
        work, "idle", fleet, args.idle_pairs, source, destination, ca, args, "{idle: [INBOX], every: 1h}"
    )
    sample = spread(args.idle_sample, args.idle_pairs)

    def latency(phase: Phase) -> None:
        log(f"  idle: push latency over {len(sample)} pairs")
        phase.extra["latency"] = push_latency(source, destination, fleet, sample, args.idle_rate, wait=60)

    command = [str(MAILMIRROR), "-c", str(idle_config), "run"]
    phase = Phase(name, args.idle_pairs, command)
    # One inotify instance per IDLE session; every lab Dovecot of the machine runs as one uid: some room
    # for other servers' sessions (the passes and the probe do not IDLE).
    needed = args.idle_pairs + 64
    warnings_before = dovecot_inotify_warnings(source)
    with inotify_room(needed, args.raise_inotify) as notes:
        phase.notes.extend(notes)
        run_daemon(
            phase, children, watcher, work / "idle.log", env, args.timeout, watchers=args.idle_pairs, then=latency
        )
    if warnings := dovecot_inotify_warnings(source) - warnings_before:
        phase.notes.append(f"Dovecot: inotify instance limit hit {warnings} times (those sessions poll every 30 s)")
    return phase


if __name__ == "__main__":
    raise SystemExit(main())
