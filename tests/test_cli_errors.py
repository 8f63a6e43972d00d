"""Bad input gets a clear message and a documented exit code, never a traceback, never a secret."""

from __future__ import annotations

import re

import pytest
from imapclient import IMAPClient

from mailmirror.lab.dovecot import SeedMessage, free_port, seed
from tests.support import Mirror, Setup, folder_contents, simple_message

pytestmark = pytest.mark.dovecot


def assert_no_traceback(result_text: str) -> None:
    assert "Traceback" not in result_text


def assert_destination_untouched(client: IMAPClient) -> None:
    assert folder_contents(client) == {"INBOX": []}


def broken(setup: Setup, old: str, new: str) -> None:
    text = setup.config_path.read_text(encoding="utf-8")
    assert old in text
    setup.config_path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.fixture
def setup(mirror: Mirror) -> Setup:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(3)])
    return mirror.setup()


def test_wrong_password_exits_77_naming_the_account(setup: Setup, mirror: Mirror) -> None:
    (setup.directory / "dst.password").write_text("not-the-password\n", encoding="utf-8")
    result = setup.run("sync")
    assert result.returncode == 77, result.stdout + result.stderr
    assert "account 'dst'" in result.stderr and mirror.dst_user.username in result.stderr
    assert "AUTHENTICATIONFAILED" in result.stderr or "Authentication failed" in result.stderr
    assert "not-the-password" not in result.stdout + result.stderr
    assert_no_traceback(result.stderr)
    assert_destination_untouched(mirror.dst)


def test_closed_port_exits_69_naming_account_and_server(setup: Setup, mirror: Mirror) -> None:
    port = free_port()
    text = setup.config_path.read_text(encoding="utf-8")
    setup.config_path.write_text(re.sub(r"port: \d+", f"port: {port}", text, count=1), encoding="utf-8")
    result = setup.run("sync")
    assert result.returncode == 69, result.stdout + result.stderr
    assert f"account 'src' (127.0.0.1:{port})" in result.stderr and "refused" in result.stderr
    assert_no_traceback(result.stderr)
    assert_destination_untouched(mirror.dst)


def test_tls_without_the_ca_exits_69_and_says_how_to_fix_it(setup: Setup, mirror: Mirror) -> None:
    text = setup.config_path.read_text(encoding="utf-8")
    setup.config_path.write_text(re.sub(r"    tls_ca: .*\n", "", text), encoding="utf-8")
    result = setup.run("check")
    assert result.returncode == 69, result.stdout + result.stderr
    assert "certificate could not be verified" in result.stderr and "tls_ca" in result.stderr
    assert_no_traceback(result.stderr)
    assert_destination_untouched(mirror.dst)


def test_yaml_syntax_error_exits_78_with_the_line(setup: Setup, mirror: Mirror) -> None:
    broken(setup, "pairs:\n", "pairs:\n  - [unclosed\n")
    result = setup.run("sync")
    assert result.returncode == 78, result.stdout + result.stderr
    assert re.search(rf"{re.escape(str(setup.config_path))}:\d+: ", result.stderr), result.stderr
    assert_no_traceback(result.stderr)
    assert_destination_untouched(mirror.dst)


def test_unknown_key_exits_78_naming_it(setup: Setup, mirror: Mirror) -> None:
    broken(setup, "    destination: dst\n", "    destination: dst\n    foldrs: {exclude: [Junk]}\n")
    result = setup.run("sync")
    assert result.returncode == 78, result.stdout + result.stderr
    assert "pairs.test.foldrs" in result.stderr
    assert_no_traceback(result.stderr)
    assert_destination_untouched(mirror.dst)


def test_unknown_pair_exits_64(setup: Setup) -> None:
    result = setup.run("sync", "nosuchpair")
    assert result.returncode == 64
    assert "unknown pair 'nosuchpair'" in result.stderr and "test" in result.stderr


def test_check_reports_capabilities_without_secrets(setup: Setup, mirror: Mirror) -> None:
    result = setup.run("check")
    assert result.returncode == 0, result.stdout + result.stderr
    for capability in ("UIDPLUS", "CONDSTORE", "QRESYNC", "MULTIAPPEND", "LITERAL+", "SPECIAL-USE", "IDLE"):
        assert capability in result.stdout
    for secret in (mirror.src_user.password, mirror.dst_user.password):
        assert secret not in result.stdout + result.stderr


def test_implicit_tls_account_works(mirror: Mirror) -> None:
    setup = mirror.setup(source_tls="implicit")
    result = setup.run("check", "src")
    assert result.returncode == 0, result.stdout + result.stderr


def test_passwords_never_appear_in_debug_logs_output_or_state(setup: Setup, mirror: Mirror) -> None:
    result = setup.run("-v", "sync")
    assert result.returncode == 0, result.stdout + result.stderr
    status = setup.run("status")
    assert status.returncode == 0 and "test" in status.stdout
    state = b"".join(path.read_bytes() for path in setup.directory.glob("state.db*") if path.is_file())
    for secret in (mirror.src_user.password, mirror.dst_user.password):
        assert secret not in result.stdout + result.stderr + status.stdout
        assert secret.encode() not in state
