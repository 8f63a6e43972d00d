"""Shared pytest fixtures: real Dovecot servers for the whole session, fresh users for every test.

* ``dovecot``: for tests that make their own :class:`DovecotServer` (checks Dovecot is there, marks).
* ``lab_dir`` / ``lab_ca``: a private directory (``tempfile.mkdtemp``, mode 0755 so Dovecot's
  unprivileged mail user can reach it) and one test CA shared by every server of the session.
* ``source_server`` / ``dest_server``: two default servers (separator "/", no prefix), started once.
* ``make_server(**kwargs)``: extra servers with special settings (``drop_capabilities``, Cyrus layout
  ``separator=".", prefix="INBOX."``); one per distinct kwargs, started on first use.
* ``lab_server(kind)``: the session's Cyrus ("cyrus-slash", "cyrus-dot"), Courier ("courier") or another
  Dovecot ("dovecot") server, started on first use (mailmirror.lab.servers); tests using it are marked
  ``lab``, and fail like the Dovecot ones when a kind is missing (``scripts/bootstrap --test``).
* ``src_user`` / ``dst_user``: a fresh user per test; ``src_client`` / ``dst_client``: logged-in
  IMAPClients for them (``normalise_times = False``), logged out after the test.
* ``mirror``: all of these in one (:class:`tests.support.Mirror`): a pair between two fresh accounts on
  ``source_server`` and ``dest_server``, their logged-in clients ``mirror.src`` / ``mirror.dst`` and
  ``mirror.setup(pair_options=...)`` for the pair's config. Most server tests take this one;
  ``make_mirror(source=..., destination=...)`` makes one with other servers (e.g. from ``make_server``).

Every server is stopped at the end of the session, also after failures and Ctrl-C (and, as a last
resort, by an atexit hook in :mod:`mailmirror.lab.dovecot`).  Tests using these fixtures are marked ``dovecot``
automatically.  Without ``/usr/sbin/dovecot`` they FAIL, unless ``MAILMIRROR_ALLOW_SKIP=1`` is set, in
which case they are skipped.  ``MAILMIRROR_KEEP_LAB=1`` keeps the lab directory (logs, Maildirs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from imapclient import IMAPClient

from mailmirror.lab.dovecot import DOVECOT_BINARY, DovecotServer, LabCA, LabUser, dovecot_available
from mailmirror.lab.servers import LabServer, lab_kind_missing, make_lab_server
from tests.support import Mirror, RunningDaemon, fail_or_skip, log_out

SERVER_FIXTURES = frozenset(
    {"dovecot", "source_server", "dest_server", "make_server", "src_user", "dst_user", "src_client", "dst_client"}
)

MakeServer = Callable[..., DovecotServer]
MakeMirror = Callable[..., Mirror]
ServerT = TypeVar("ServerT", bound=LabServer)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs the lab's Cyrus/Courier/Dovecot server matrix (lab_server fixture)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.dovecot)
        if "lab_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


def require_dovecot() -> None:
    """Fail (or, with MAILMIRROR_ALLOW_SKIP=1, skip) when Dovecot is not installed."""
    if not dovecot_available():
        fail_or_skip(f"Dovecot is not installed ({DOVECOT_BINARY} missing; apt-get install dovecot-imapd)")


@pytest.fixture(scope="session")
def dovecot() -> None:
    """Request this (before ``lab_dir``/``lab_ca``) in tests that build their own DovecotServer: it fails
    or skips like the server fixtures when Dovecot is missing, and marks the test ``dovecot``."""
    require_dovecot()


@pytest.fixture(scope="session")
def lab_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-lab-"))
    directory.chmod(0o755)
    yield directory
    if os.environ.get("MAILMIRROR_KEEP_LAB") == "1":
        print(f"\nmailmirror lab kept in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_ca(lab_dir: Path) -> LabCA:
    return LabCA(lab_dir / "ca")


def _session_server(lab_dir: Path, lab_ca: LabCA, name: str) -> Iterator[DovecotServer]:
    require_dovecot()
    server = DovecotServer(lab_dir / name, name, ca=lab_ca)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def source_server(lab_dir: Path, lab_ca: LabCA) -> Iterator[DovecotServer]:
    yield from _session_server(lab_dir, lab_ca, "source")


@pytest.fixture(scope="session")
def dest_server(lab_dir: Path, lab_ca: LabCA) -> Iterator[DovecotServer]:
    yield from _session_server(lab_dir, lab_ca, "dest")


def _cache_key(kwargs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    def freeze(value: Any) -> Any:
        if isinstance(value, list | tuple | set | frozenset):
            return tuple(sorted(freeze(v) for v in value)) if isinstance(value, set | frozenset) else tuple(
                freeze(v) for v in value)  # fmt: skip
        return value

    return tuple(sorted((k, freeze(v)) for k, v in kwargs.items()))


class SessionServers(Generic[ServerT]):
    """Servers shared by the whole session: started on first use (one per key), stopped at its end."""

    def __init__(self) -> None:
        self._servers: dict[Hashable, ServerT] = {}

    def __len__(self) -> int:
        return len(self._servers)

    def get(self, key: Hashable, build: Callable[[], ServerT]) -> ServerT:
        server = self._servers.get(key)
        if server is None:
            server = build()
            server.start()
            self._servers[key] = server
        return server

    def stop_all(self) -> None:
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                server.stop()


@pytest.fixture(scope="session")
def make_server(lab_dir: Path, lab_ca: LabCA) -> Iterator[MakeServer]:
    """``make_server(**DovecotServer kwargs)`` -> a started server, shared by every test asking for the
    same kwargs (so do not restart or break it; make a private DovecotServer for that)."""
    servers = SessionServers[DovecotServer]()

    def make(**kwargs: Any) -> DovecotServer:
        require_dovecot()
        name = f"extra{len(servers) + 1}"
        return servers.get(_cache_key(kwargs), lambda: DovecotServer(lab_dir / name, name, **{"ca": lab_ca, **kwargs}))

    try:
        yield make
    finally:
        servers.stop_all()


@pytest.fixture
def src_user(source_server: DovecotServer) -> LabUser:
    return source_server.add_user()


@pytest.fixture
def dst_user(dest_server: DovecotServer) -> LabUser:
    return dest_server.add_user()


def _client(server: DovecotServer, user: LabUser) -> Iterator[IMAPClient]:
    client = server.connect(user)
    try:
        yield client
    finally:
        log_out(client)


@pytest.fixture
def make_mirror(source_server: DovecotServer, dest_server: DovecotServer) -> Iterator[MakeMirror]:
    """``make_mirror(source=..., destination=...)``: a :class:`tests.support.Mirror` with fresh accounts on
    other servers (e.g. from ``make_server``; by default the session's two), logged out after the test."""
    made: list[Mirror] = []

    def make(*, source: DovecotServer | None = None, destination: DovecotServer | None = None) -> Mirror:
        made.append(Mirror(source or source_server, destination or dest_server))
        return made[-1]

    try:
        yield make
    finally:
        for pair in made:
            pair.close()


@pytest.fixture
def mirror(make_mirror: MakeMirror) -> Mirror:
    """A mirror between two fresh accounts on the session's servers (tests.support.Mirror): ``mirror.src``
    / ``mirror.dst`` clients, ``mirror.setup(pair_options=...)``."""
    return make_mirror()


@pytest.fixture
def src_client(source_server: DovecotServer, src_user: LabUser) -> Iterator[IMAPClient]:
    yield from _client(source_server, src_user)


@pytest.fixture
def dst_client(dest_server: DovecotServer, dst_user: LabUser) -> Iterator[IMAPClient]:
    yield from _client(dest_server, dst_user)


@pytest.fixture
def start_daemon() -> Iterator[Callable[[Path], RunningDaemon]]:
    started: list[RunningDaemon] = []

    def start(config_path: Path) -> RunningDaemon:
        daemon = RunningDaemon(config_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        daemon.log.close()


# ----------------------------------------------------------------- Cyrus and Courier (the server matrix)


def require_lab_kind(kind: str) -> None:
    """Fail (or, with MAILMIRROR_ALLOW_SKIP=1, skip) when the lab cannot run servers of ``kind``."""
    missing = lab_kind_missing(kind)
    if missing is not None:
        fail_or_skip(missing)


LabServerOf = Callable[[str], LabServer]


@pytest.fixture(scope="session")
def lab_server(lab_dir: Path, lab_ca: LabCA) -> Iterator[LabServerOf]:
    """``lab_server(kind)`` -> the session's started server of that kind (``dovecot``, ``cyrus-slash``,
    ``cyrus-dot``, ``courier``; see mailmirror.lab.servers.LAB_KINDS): started on first use, shared by
    every test (add a fresh user per test), stopped at the end of the session."""
    servers = SessionServers[LabServer]()

    def get(kind: str) -> LabServer:
        require_lab_kind(kind)
        name = f"matrix-{kind}"
        return servers.get(kind, lambda: make_lab_server(kind, lab_dir / name, name, ca=lab_ca))

    try:
        yield get
    finally:
        servers.stop_all()
