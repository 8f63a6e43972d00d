"""Helpers for end-to-end tests: write a pair's config, run the CLI as a user would, read mailboxes."""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import pytest
from imapclient import IMAPClient

from mailmirror.config.config_file import load_config
from mailmirror.engine.context import utc_now
from mailmirror.engine.outcome import PairReport
from mailmirror.engine.pair_pass import PairPass, PairPreview
from mailmirror.engine.verify import PairVerdict, verify_pair
from mailmirror.lab.dovecot import DovecotServer, LabUser
from mailmirror.lab.servers import LabServer
from mailmirror.state.store import StateStore

ROOT = Path(__file__).resolve().parent.parent


def require_program(name: str, package: str) -> str:
    """The path of a program a test needs. Missing: the test FAILS (scripts/bootstrap --test installs it),
    unless MAILMIRROR_ALLOW_SKIP=1 makes it skip, as for Dovecot."""
    found = shutil.which(name)
    if found:
        return found
    fail_or_skip(f"{name} is not installed (apt-get install {package}; scripts/bootstrap --test does it)")


def require_checkout_readable_by_others() -> None:
    """Tests that run mailmirror as another user (nobody) need every directory above the checkout (and its
    venv) to let others through: a clone in a `mktemp -d` folder (mode 0700) does not."""
    for directory in (ROOT, *ROOT.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            fail_or_skip(
                f"{directory} (mode {stat.S_IMODE(directory.stat().st_mode):o}) does not let other users through, "
                f"so 'nobody' cannot run the checkout at {ROOT}: chmod o+x it, or clone elsewhere"
            )


def fail_or_skip(reason: str) -> NoReturn:
    """A test that lacks a server or program FAILS, so that nothing is skipped silently; with
    MAILMIRROR_ALLOW_SKIP=1 it is skipped instead."""
    if os.environ.get("MAILMIRROR_ALLOW_SKIP") == "1":
        pytest.skip(f"{reason}; skipped because MAILMIRROR_ALLOW_SKIP=1")
    pytest.fail(f"{reason}. Tests must not be skipped silently: install it, or set "
                "MAILMIRROR_ALLOW_SKIP=1 to skip them explicitly.", pytrace=False)  # fmt: skip


@dataclass
class Setup:
    """One pair between two lab users, with its config file and state database in a private folder."""

    directory: Path
    config_path: Path

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`mailmirror -c CONFIG ARGS...` in a subprocess: real exit codes, real output."""
        env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "daemon")}
        return subprocess.run(
            [sys.executable, "-m", "mailmirror", "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def sync(self, pair: str = "test", *, dry_run: bool = False, clock: Callable[[], datetime] = utc_now) -> PairReport:
        """One pass in this process (for the numbers of the report); ``clock``: the engine's wall clock."""
        config = load_config(self.config_path)
        store = StateStore(config.state.path)
        try:
            pair_pass = PairPreview if dry_run else PairPass
            return pair_pass(pair, config.effective_pairs()[pair], config, store, clock=clock).run()
        finally:
            store.close()

    def verify(self, pair: str = "test") -> PairVerdict:
        config = load_config(self.config_path)
        return verify_pair(pair, config.effective_pairs()[pair], config)


def account_yaml(name: str, server: LabServer, user: LabUser, directory: Path, *, tls: str = "starttls") -> str:
    """An account of a lab server (any kind) for a config's ``accounts:``, its password in a file."""
    secret = directory / f"{name}.password"
    secret.write_text(user.password + "\n", encoding="utf-8")
    port = server.tls_port if tls == "implicit" else server.port
    return (
        f"  {name}:\n"
        f"    host: 127.0.0.1\n"
        f"    port: {port}\n"
        f"    tls: {tls}\n"
        f"    tls_ca: {server.ca_path}\n"
        f"    username: {user.username}\n"
        f"    password: {{file: {secret}}}\n"
        f"    timeout: 30s\n"
    )


def make_setup(
    source: LabServer,
    source_user: LabUser,
    destination: LabServer,
    destination_user: LabUser,
    *,
    pair_options: str = "",
    source_tls: str = "starttls",
) -> Setup:
    """The pair "test" between two lab users (servers of any kind), in a new private folder."""
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-test-"))
    source_account = account_yaml("src", source, source_user, directory, tls=source_tls)
    destination_account = account_yaml("dst", destination, destination_user, directory)
    return write_pair_setup(directory, source_account, destination_account, pair_options)


def write_pair_setup(directory: Path, source_account: str, destination_account: str, pair_options: str = "") -> Setup:
    """``directory/mailmirror.yaml``: the accounts "src" and "dst" (YAML as :func:`account_yaml` writes
    it) and the pair "test" between them (``pair_options``: more YAML lines for the pair)."""
    text = (
        f"state: {{path: {directory / 'state.db'}}}\n"
        'metrics: {listen: "127.0.0.1:0"}\n'  # a free port: tests run daemons side by side
        "accounts:\n"
        + source_account
        + destination_account
        + "pairs:\n  test:\n    source: src\n    destination: dst\n"
        + "".join(f"    {line}\n" for line in textwrap.dedent(pair_options).splitlines() if line.strip())
    )
    config_path = directory / "mailmirror.yaml"
    config_path.write_text(text, encoding="utf-8")
    return Setup(directory, config_path)


class Mirror:
    """A mirror between two fresh accounts: the session's source and destination servers, a new user on
    each, a logged-in client for each (``src``, ``dst``) and ``setup()`` for the pair's config. The
    ``mirror`` fixture (tests/conftest.py) makes one per test and logs the clients out at the end."""

    def __init__(self, source_server: DovecotServer, dest_server: DovecotServer) -> None:
        self.source_server = source_server
        self.dest_server = dest_server
        self.src_user = source_server.add_user()
        self.dst_user = dest_server.add_user()
        self.src = source_server.connect(self.src_user)
        self.dst = dest_server.connect(self.dst_user)

    def setup(
        self, pair_options: str = "", *, source_tls: str = "starttls", destination_user: LabUser | None = None
    ) -> Setup:
        """The pair "test" from the source user to the destination user (``pair_options``: YAML lines;
        ``destination_user``: another account on the destination server instead, e.g. one with a quota)."""
        return make_setup(
            self.source_server,
            self.src_user,
            self.dest_server,
            destination_user or self.dst_user,
            pair_options=pair_options,
            source_tls=source_tls,
        )

    def close(self) -> None:
        log_out(self.src)
        log_out(self.dst)


def log_out(client: IMAPClient) -> None:
    """Log out and close, whatever state the test left the connection in."""
    with contextlib.suppress(Exception):
        client.logout()
    with contextlib.suppress(Exception):
        client.shutdown()


def folder_contents(client: IMAPClient) -> dict[str, list[tuple[bytes, frozenset[bytes]]]]:
    """Every folder → [(body, flags)] sorted by body: to compare mailboxes in tests."""
    contents: dict[str, list[tuple[bytes, frozenset[bytes]]]] = {}
    for flags, _delimiter, name in client.list_folders():
        if b"\\Noselect" in flags:
            continue
        client.select_folder(name, readonly=True)
        data = (
            client.fetch(client.search(), ["BODY.PEEK[]", "FLAGS"]) if client.folder_status(name)[b"MESSAGES"] else {}
        )
        contents[name] = sorted((d[b"BODY[]"], frozenset(d[b"FLAGS"]) - {b"\\Recent"}) for d in data.values())
    return contents


def message_count(client: IMAPClient, folder: str = "INBOX") -> int:
    try:
        return int(client.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])
    except imaplib.IMAP4.error as error:
        # Dovecot creates a new user's INBOX on first access; two sessions doing that at once (a test
        # polling while the daemon logs in) make one of them fail with ALREADYEXISTS. Ask again.
        if "ALREADYEXISTS" not in str(error):
            raise
        time.sleep(0.2)
        return int(client.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])


def simple_message(index: int, *, size: int = 0, message_id: bool = True, tag: str = "") -> bytes:
    headers = [
        f"From: Sender {index} <sender{index}@example.org>",
        "To: Alice <alice@example.org>",
        f"Subject: message {index} {tag}".rstrip(),
        f"Date: Mon, {1 + index % 28} Jan 2024 10:{index % 60:02d}:00 +0000",
    ]
    if message_id:
        headers.append(f"Message-ID: <msg-{index}-{tag}@example.org>")
    body = f"Hello {index}\r\n" + ("x" * 76 + "\r\n") * (size // 78)
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


class RunningDaemon:
    def __init__(self, config_path: Path) -> None:
        self.log_path = config_path.parent / "daemon.log"
        self.log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailmirror", "-c", str(config_path), "run"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "daemon")},
        )

    def text(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            assert self.process.poll() is None, f"the daemon exited ({self.process.returncode}):\n{self.text()}"
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; daemon log:\n{self.text()}")

    def wait_for_log(self, fragment: str, count: int = 1, timeout: float = 30.0) -> None:
        self.wait_for(lambda: self.text().count(fragment) >= count, repr(fragment), timeout)

    def metrics_url(self, path: str = "/metrics") -> str:
        """The daemon's HTTP endpoint (its config listens on port 0: the log names the port)."""
        self.wait_for_log("metrics and health checks on http://")
        match = re.search(r"metrics and health checks on (http://[^/\s]+)/metrics", self.text())
        assert match, self.text()
        return match.group(1) + path

    def get(self, path: str) -> tuple[int, str]:
        """GET an endpoint of the daemon: (status, body)."""
        try:
            with urllib.request.urlopen(self.metrics_url(path), timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.log.close()


def fresh_count(server: DovecotServer, user: LabUser, folder: str = "INBOX") -> int:
    """On a new connection each time: a test session kept open for long can be dropped by Dovecot while
    the daemon creates the same new user's INBOX."""
    try:
        with server.connect(user) as client:
            return message_count(client, folder)
    except imaplib.IMAP4.error:  # e.g. NO [ALREADYEXISTS] while the daemon's session creates the INBOX
        return -1
