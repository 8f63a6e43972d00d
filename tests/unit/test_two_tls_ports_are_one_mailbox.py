"""Review (h11): one host's IMAP service on its two standard ports (143 with STARTTLS, 993 with implicit
TLS) is one mailbox: one destination lock, and a pair between them is a pair into itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mailmirror.config.mailboxes import mailbox_identity
from mailmirror.state.locks import DestinationLock
from tests.support import Setup

CONFIG = """\
state: {path: state.db}
accounts:
  a: {host: mail.example.org, tls: starttls, username: alice, password: {env: X}}
  b: {host: mail.example.org, tls: implicit, username: alice, password: {env: X}}
pairs:
  backup:
    source: a
    destination: b
    folders: {under: Backup}
"""


def test_starttls_and_implicit_tls_of_one_host_are_one_mailbox() -> None:
    assert mailbox_identity("mail.example.org", 143, "alice") == mailbox_identity("mail.example.org", 993, "alice")
    assert mailbox_identity("mail.example.org", 993, "alice") != mailbox_identity("mail.example.org", 1993, "alice")
    assert str(mailbox_identity("mail.example.org", 993, "alice")) == "alice@mail.example.org"


def test_two_configs_differing_only_in_tls_share_the_destination_lock(tmp_path: Path) -> None:
    starttls = DestinationLock(tmp_path, mailbox_identity("mail.example.org", 143, "alice"), "dst", "pair 'a'")
    implicit = DestinationLock(tmp_path, mailbox_identity("mail.example.org", 993, "alice"), "dst", "pair 'b'")
    assert starttls.path == implicit.path


def test_a_pair_between_the_two_ports_of_one_mailbox_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mailmirror.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    result: subprocess.CompletedProcess[str] = Setup(tmp_path, path).run("config", "validate")
    assert result.returncode == 78, result.stdout + result.stderr
    assert "same mailbox (alice@mail.example.org)" in result.stderr, result.stderr
