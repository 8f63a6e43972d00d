"""Helpers for end-to-end tests: write a pair's config, run the CLI as a user would, read mailboxes."""

from __future__ import annotations

import imaplib
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from imapclient import IMAPClient

from mailmirror.config import load_config
from mailmirror.lab import DovecotServer, LabUser
from mailmirror.state import StateStore
from mailmirror.sync import PairPass, PairReport
from mailmirror.verify import PairVerdict, verify_pair

ROOT = Path(__file__).resolve().parent.parent


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

    def sync(self, pair: str = "test", *, dry_run: bool = False) -> PairReport:
        """One pass in this process (for the numbers of the report)."""
        config = load_config(self.config_path)
        store = StateStore(config.state.path)
        try:
            return PairPass(pair, config.effective_pairs()[pair], config, store, dry_run=dry_run).run()
        finally:
            store.close()

    def verify(self, pair: str = "test") -> PairVerdict:
        config = load_config(self.config_path)
        return verify_pair(pair, config.effective_pairs()[pair], config)


def account_yaml(name: str, server: DovecotServer, user: LabUser, directory: Path, *, tls: str = "starttls") -> str:
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
    source: DovecotServer,
    source_user: LabUser,
    destination: DovecotServer,
    destination_user: LabUser,
    *,
    pair_options: str = "",
    source_tls: str = "starttls",
) -> Setup:
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-test-"))
    text = (
        f"state: {{path: {directory / 'state.db'}}}\n"
        "accounts:\n"
        + account_yaml("src", source, source_user, directory, tls=source_tls)
        + account_yaml("dst", destination, destination_user, directory)
        + "pairs:\n  test:\n    source: src\n    destination: dst\n"
        + "".join(f"    {line}\n" for line in textwrap.dedent(pair_options).splitlines() if line.strip())
    )
    config_path = directory / "mailmirror.yaml"
    config_path.write_text(text, encoding="utf-8")
    return Setup(directory, config_path)


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
