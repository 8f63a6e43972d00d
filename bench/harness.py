"""The bench's lab: two private Dovecot servers, a seeded source, the untimed source changes of the
incremental scenario, per-folder snapshots for the fidelity check, and measured subprocesses.

Nothing here is timed as part of a result except :func:`run_measured` (one tool process: wall time,
exit code, peak RSS and CPU from ``wait4``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any

from imapclient import IMAPClient
from imaputil import uid_fetch

from mailmirror.lab.corpus import DEFAULT_SIZE_MIX, LazyFolder, SizeBand, corpus, generated_message
from mailmirror.lab.dovecot import DovecotServer, LabCA, LabUser

KIB = 1024
MIB = 1024 * 1024

#: ``--size-mix`` choices.  "default" is the corpus module's mix (~70% 2-20 KiB, ~25% 50-500 KiB,
#: ~5% 1-5 MiB); "small" (all 1-4 KiB) makes 100k-message corpora quick to seed.
SIZE_MIXES: Mapping[str, tuple[SizeBand, ...]] = {
    "default": DEFAULT_SIZE_MIX,
    "small": (SizeBand(1.0, 1 * KIB, 4 * KIB),),
}

#: Folder names of the benchmark account ("/"-separated, as the source sees them).  Nested, spaced and
#: non-ASCII names on purpose: every tool must cope with them.  More than 20 folders: "More/NN".
FOLDER_NAMES: tuple[str, ...] = (
    "INBOX",
    "Sent",
    "Archive",
    "Archive/2022",
    "Archive/2023",
    "Archive/2024",
    "Projects",
    "Projects/Client Work",
    "Projects/Internal",
    "Lists",
    "Lists/announce",
    "Lists/dev",
    "Receipts",
    "Reçus",
    "Отчёты",
    "Travel",
    "Newsletters",
    "Family",
    "Notes",
    "Old Mail",
)

CORPUS_SEED = 20240601
#: MULTIAPPEND batches while seeding: at most this many bytes / messages per APPEND command.
SEED_BATCH_BYTES = 16 * MIB
SEED_BATCH_MESSAGES = 500


def folder_names(count: int) -> list[str]:
    if count < 1:
        raise ValueError("--folders must be at least 1")
    names = list(FOLDER_NAMES[:count])
    names.extend(f"More/{i:02d}" for i in range(len(names), count))
    return names


class Deadline:
    """The whole benchmark's time budget: steps check it and are skipped once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    @property
    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    @property
    def expired(self) -> bool:
        return self.remaining <= 0


class BenchTimeout(RuntimeError):
    """The benchmark ran out of its time budget (--deadline)."""


# ---------------------------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Endpoint:
    """How a tool reaches one account."""

    host: str
    port: int
    username: str
    password: str
    password_file: Path
    tls: str  # none | starttls
    ca: Path

    def via(self, port: int) -> Endpoint:
        """The same account through a local plain-text proxy on ``port``."""
        return replace(self, port=port, tls="none")

    def connect(self, timeout: float = 120) -> IMAPClient:
        client = IMAPClient(self.host, self.port, ssl=False, timeout=timeout)
        try:
            if self.tls == "starttls":
                import ssl

                client.starttls(ssl.create_default_context(cafile=str(self.ca)))
            client.login(self.username, self.password)
            # imapclient sets imaplib's debug level to 5 (routed to a logger): imaplib then formats every
            # response with %r, message bodies included, whether or not anything is logged.
            client._imap.debug = 0
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        client.normalise_times = False
        return client


class Lab:
    """A private directory (mode 0755: Dovecot's unprivileged mail user must traverse it) holding a CA,
    a source server and a destination server."""

    def __init__(self, tls: str, keep: bool = False, base: Path | None = None) -> None:
        self.tls = tls
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="mailmirror-bench-", dir=base))
        self.root.chmod(0o755)
        self.ca = LabCA(self.root / "ca")
        self.source = DovecotServer(self.root / "src", "bsrc", ca=self.ca)
        self.destination = DovecotServer(self.root / "dst", "bdst", ca=self.ca)
        self.secrets = self.root / "secrets"
        self.secrets.mkdir(mode=0o700)

    def __enter__(self) -> Lab:
        try:
            self.source.start()
            self.destination.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for server in (self.source, self.destination):
            with contextlib.suppress(Exception):
                server.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def add_user(self, server: DovecotServer, name: str) -> Endpoint:
        user = server.add_user(name)
        secret = self.secrets / f"{server.name}-{name}"
        secret.write_text(user.password + "\n")
        secret.chmod(0o600)
        return Endpoint(server.host, server.port, user.username, user.password, secret, self.tls, self.ca.cert_path)

    def drop_mail(self, server: DovecotServer, endpoint: Endpoint) -> None:
        """Free the disk space of a destination user nobody uses any more (its sessions are closed)."""
        shutil.rmtree(server.mail_root / endpoint.username, ignore_errors=True)


def lab_user(endpoint: Endpoint) -> LabUser:
    return LabUser(endpoint.username, endpoint.password)


# --------------------------------------------------------------------------------------------- seeding

_worker_corpus: dict[str, LazyFolder] = {}


def _init_worker(seed: int, count: int, folders: Sequence[str], mix: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    # mailmirror.lab.dovecot turns SIGTERM into SystemExit in the parent (to stop its servers); a worker
    # inherits that handler, and one blocked on the pool's queue lock was seen to survive
    # Pool.terminate() that way.  Workers have nothing to clean up: let SIGTERM end them.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker_corpus.clear()
    _worker_corpus.update(corpus(seed, count, folders, SIZE_MIXES[mix]))


Built = list[tuple[bytes, tuple[str, ...], datetime | None]]


def _build(folder: str, start: int, stop: int) -> Built:
    lazy = _worker_corpus[folder]
    out: Built = []
    for i in range(start, stop):
        m = lazy[i]
        out.append((m.raw, m.flags, m.internaldate))
    return out


def _plan_batches(sizes: Sequence[int], max_bytes: int, max_count: int) -> Iterator[tuple[int, int]]:
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (total + size > max_bytes or i - start >= max_count):
            yield start, i
            start, total = i, 0
        total += size
    if start < len(sizes):
        yield start, len(sizes)


@dataclass
class SeedReport:
    messages: int = 0
    bytes: int = 0
    seconds: float = 0.0
    append_commands: int = 0
    per_folder: dict[str, int] = field(default_factory=dict)


def multiappend(client: IMAPClient, folder: str, batch: Built) -> None:
    messages: list[dict[str, Any]] = []
    for raw, flags, date in batch:
        item: dict[str, Any] = {"msg": raw, "flags": [f for f in flags if f.lower() != "\\recent"]}
        if date is not None:
            item["date"] = date
        messages.append(item)
    typ, data = client.multiappend(folder, messages)
    if (typ.decode() if isinstance(typ, bytes) else str(typ)).upper() != "OK":
        raise RuntimeError(f"MULTIAPPEND to {folder!r} refused: {data!r}")


def seed_source(
    endpoint: Endpoint,
    *,
    count: int,
    folders: Sequence[str],
    mix: str,
    workers: int,
    deadline: Deadline,
    log: Any = print,
) -> SeedReport:
    """Create every folder and MULTIAPPEND the corpus (generated by ``workers`` processes, in order)."""
    plan = corpus(CORPUS_SEED, count, folders, SIZE_MIXES[mix])
    report = SeedReport()
    began = time.monotonic()
    client = endpoint.connect()
    try:
        for name in folders:
            if name.upper() != "INBOX":
                client.create_folder(name)
            client.subscribe_folder(name)
        tasks = [
            (name, start, stop)
            for name, lazy in plan.items()
            for start, stop in _plan_batches(lazy.sizes, SEED_BATCH_BYTES, SEED_BATCH_MESSAGES)
        ]
        ctx = multiprocessing.get_context("fork")
        pool = ctx.Pool(workers, _init_worker, (CORPUS_SEED, count, tuple(folders), mix))
        try:
            pending: deque[tuple[str, AsyncResult[Built]]] = deque()
            queue = deque(tasks)
            last_note = time.monotonic()
            while queue or pending:
                while queue and len(pending) < 2 * workers:  # bounded: bodies wait in memory
                    name, start, stop = queue.popleft()
                    pending.append((name, pool.apply_async(_build, (name, start, stop))))
                name, result = pending.popleft()
                batch = result.get(timeout=max(deadline.remaining, 1))
                if deadline.expired:
                    raise BenchTimeout(f"seeding did not finish within the deadline ({report.messages} messages)")
                multiappend(client, name, batch)
                report.append_commands += 1
                report.messages += len(batch)
                report.bytes += sum(len(raw) for raw, _f, _d in batch)
                report.per_folder[name] = report.per_folder.get(name, 0) + len(batch)
                if time.monotonic() - last_note > 15:
                    last_note = time.monotonic()
                    log(
                        f"  seeding: {report.messages}/{count} messages, {report.bytes / MIB:.0f} MiB, "
                        f"{last_note - began:.0f}s"
                    )
            pool.close()  # workers finish on their own: no signals on the normal path
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    report.seconds = time.monotonic() - began
    return report


def warm_source(endpoint: Endpoint, folders: Sequence[str]) -> float:
    """Read what the tools read, once, untimed: the first tool after seeding must not pay alone for
    Dovecot building its index cache (sizes, dates, header fields).  Responses are read and dropped."""
    began = time.monotonic()
    client = endpoint.connect()
    try:
        imap = client._imap
        for name in folders:
            client.select_folder(name, readonly=True)
            tag = imap._command(
                "UID", "FETCH", "1:*",
                "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM TO CC SUBJECT)])",
            )  # fmt: skip
            typ, data = imap._command_complete("FETCH", tag)
            client._checkok("fetch", typ, data)
            imap.untagged_responses.clear()
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    return time.monotonic() - began


# ------------------------------------------------------------------------------- incremental changes


@dataclass
class Mutation:
    new_messages: int = 0
    new_bytes: int = 0
    flag_changes: int = 0
    seconds: float = 0.0
    per_folder_new: dict[str, int] = field(default_factory=dict)


def mutate_source(
    endpoint: Endpoint,
    *,
    folders: Sequence[str],
    total_messages: int,
    mix: str,
    new_share: float = 0.01,
    flag_share: float = 0.02,
    seed: int = CORPUS_SEED + 1,
) -> Mutation:
    """The incremental scenario's source changes: ``new_share`` new messages spread round-robin over
    the folders (sizes from the same mix), and \\Flagged toggled on ``flag_share`` of the existing
    messages chosen uniformly (added where absent, removed where present)."""
    rng = random.Random(seed)
    began = time.monotonic()
    mutation = Mutation()
    client = endpoint.connect()
    try:
        existing: list[tuple[str, int, bool]] = []
        for name in folders:
            client.select_folder(name, readonly=True)
            for uid, data in uid_fetch(client, "1:*", ["FLAGS"]).items():
                existing.append((name, int(uid), b"\\Flagged" in data.get(b"FLAGS", ())))
        n_flags = max(1, round(len(existing) * flag_share)) if existing else 0
        chosen = rng.sample(existing, n_flags)
        by_folder: dict[str, tuple[list[int], list[int]]] = {}
        for name, uid, flagged in chosen:
            add, remove = by_folder.setdefault(name, ([], []))
            (remove if flagged else add).append(uid)
        for name, (add, remove) in by_folder.items():
            client.select_folder(name)
            if add:
                client.add_flags(add, ["\\Flagged"], silent=True)
            if remove:
                client.remove_flags(remove, ["\\Flagged"], silent=True)
        mutation.flag_changes = len(chosen)

        n_new = max(1, round(total_messages * new_share))
        bands = list(SIZE_MIXES[mix])
        pending: dict[str, Built] = {}
        for i in range(n_new):
            name = folders[i % len(folders)]
            band = rng.choices(bands, weights=[b.share for b in bands])[0]
            size = rng.randint(band.low, band.high)
            message = generated_message(random.Random(f"bench-new/{seed}/{i}"), 1_000_000 + i, size, folder=name)
            pending.setdefault(name, []).append((message.raw, message.flags, message.internaldate))
            mutation.new_bytes += len(message.raw)
            mutation.per_folder_new[name] = mutation.per_folder_new.get(name, 0) + 1
        for name, batch in pending.items():
            for start, stop in _plan_batches([len(m[0]) for m in batch], SEED_BATCH_BYTES, SEED_BATCH_MESSAGES):
                multiappend(client, name, batch[start:stop])
        mutation.new_messages = n_new
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    mutation.seconds = time.monotonic() - began
    return mutation


# ------------------------------------------------------------------------------------------- fidelity


@dataclass(frozen=True)
class FolderCounts:
    messages: int
    size: int
    seen: int
    flagged: int
    answered: int


Snapshot = dict[str, FolderCounts]


def snapshot(endpoint: Endpoint) -> Snapshot:
    """Per selectable folder: message count, total size (STATUS SIZE) and flag counts (SEARCH)."""
    client = endpoint.connect()
    try:
        result: Snapshot = {}
        for flags, _delimiter, name in client.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            folder = name if isinstance(name, str) else name.decode()
            status = client.folder_status(folder, ["MESSAGES", "SIZE"])
            client.select_folder(folder, readonly=True)
            messages = int(status[b"MESSAGES"])
            result[folder] = FolderCounts(
                messages=messages,
                size=int(status.get(b"SIZE", 0)),
                seen=len(client.search(["SEEN"])) if messages else 0,
                flagged=len(client.search(["FLAGGED"])) if messages else 0,
                answered=len(client.search(["ANSWERED"])) if messages else 0,
            )
        return result
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def differences(source: Snapshot, destination: Snapshot) -> list[str]:
    """What differs, folder by folder: message count, \\Seen, \\Flagged and \\Answered counts.
    Destination folders the source lacks are ignored.  Sizes: see :func:`size_delta`."""
    found: list[str] = []
    for name, want in sorted(source.items()):
        have = destination.get(name)
        if have is None:
            found.append(f"{name}: missing on the destination")
            continue
        for attribute in ("messages", "seen", "flagged", "answered"):
            a, b = getattr(want, attribute), getattr(have, attribute)
            if a != b:
                found.append(f"{name}: {attribute} {a} on the source, {b} on the destination")
    return found


def size_delta(source: Snapshot, destination: Snapshot) -> int:
    """Destination bytes minus source bytes over the source's folders (STATUS SIZE): not 0 when a tool
    alters the messages it copies (mbsync adds an X-TUID header) or copies some twice."""
    return sum(destination[name].size - counts.size for name, counts in source.items() if name in destination)


def totals(snap: Snapshot) -> tuple[int, int]:
    return sum(c.messages for c in snap.values()), sum(c.size for c in snap.values())


# ------------------------------------------------------------------------------------ measured runs


#: GNU time (Debian package ``time``): the most exact peak RSS of a process.  The tool is its child, and
#: its own RSS is ~2 MiB.  (``wait4`` on a child forked from this Python process would report *this*
#: process's RSS as a floor: the high-water mark survives fork and exec.)
GNU_TIME = Path("/usr/bin/time")


@dataclass
class Measured:
    argv: list[str]
    wall: float
    returncode: int
    max_rss_kib: int
    user: float
    sys: float
    timed_out: bool
    log_path: Path
    rss_method: str = "GNU time"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_measured(
    argv: Sequence[str], *, log_path: Path, timeout: float, env: Mapping[str, str] | None = None
) -> Measured:
    """Run a tool to completion: wall time around it, peak RSS and CPU time of exactly this tool (GNU
    time when installed, else polling /proc/PID/status VmHWM every 10 ms), output to ``log_path``.
    The process group is killed after ``timeout`` seconds."""
    use_time = GNU_TIME.is_file() and os.access(GNU_TIME, os.X_OK)
    rusage_path = log_path.with_name(log_path.name + ".rusage")
    command = list(argv)
    if use_time:
        command = [str(GNU_TIME), "-f", "%M %U %S", "-o", str(rusage_path), *command]
    timed_out = threading.Event()
    done = threading.Event()
    hwm = [0]
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        began = time.perf_counter()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        def poll() -> None:
            while not done.wait(0.01):
                hwm[0] = max(hwm[0], _vm_hwm_kib(proc.pid))

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        poller = None if use_time else threading.Thread(target=poll, daemon=True)
        if poller is not None:
            poller.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
            done.set()
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
    max_rss, user, system = hwm[0], usage.ru_utime, usage.ru_stime
    if use_time:
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "Command exited with non-zero status N" may come first; the format line is the last.
            fields = rusage_path.read_text().strip().splitlines()[-1].split()
            max_rss, user, system = int(fields[0]), float(fields[1]), float(fields[2])
    return Measured(
        argv=list(argv),
        wall=wall,
        returncode=proc.returncode,
        max_rss_kib=max_rss,
        user=user,
        sys=system,
        timed_out=timed_out.is_set(),
        log_path=log_path,
        rss_method="GNU time" if use_time else "VmHWM polling",
    )
