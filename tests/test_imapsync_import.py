"""`mailmirror import imapsync`: the conversion table, sync_loop files, secrets never written, the output
valid, docs/imapsync.md complete, and a converted command line syncing the lab Dovecot pair."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailmirror.config.config_file import load_config
from mailmirror.config.imapsync import convert_command_line, convert_sync_loop
from mailmirror.config.imapsync_conversion import Conversion
from mailmirror.config.imapsync_handlers import parse_substitution
from mailmirror.config.imapsync_options import OPTIONS, mapping_table
from mailmirror.errors import UsageError
from tests.support import ROOT, Mirror, message_count, simple_message

BASE = ["--host1", "old.example", "--user1", "alice", "--passfile1", "/etc/pw1"]
BASE += ["--host2", "new.example", "--user2", "alice", "--passfile2", "/etc/pw2"]


def converted(*options: str) -> Conversion:
    return convert_command_line([*BASE, *options])


def pair_of(conversion: Conversion) -> dict[str, Any]:
    (pair,) = conversion.pairs.values()
    return pair


def valid(conversion: Conversion, tmp_path: Path) -> None:
    path = tmp_path / "converted.yaml"
    path.write_text(conversion.yaml_text(), encoding="utf-8")
    load_config(path)  # raises InvalidConfig on any problem


@pytest.mark.parametrize(
    ("options", "section", "expected"),
    [
        ((), "folders", {"automap": False}),
        (("--automap",), "folders", {"automap": True}),
        (("--folder", "INBOX", "--folder", "Sent"), "folders", {"include": ["INBOX", "Sent"]}),
        (("--folderrec", "Archive"), "folders", {"include": ["Archive/**"]}),
        (("--include", "^Work", "--exclude", "Trash|Junk"), "folders", {"include": ["re:^Work"]}),
        (("--exclude", "Trash|Junk"), "folders", {"exclude": ["re:Trash|Junk"]}),
        (("--f1f2", "Sent Items=Sent"), "folders", {"map": {"Sent Items": "Sent"}}),
        (("--subfolder1", "Old"), "folders", {"from_under": "Old"}),
        (("--subfolder2", "Backup/old"), "folders", {"under": "Backup/old"}),
        (("--sep2", "."), "folders", {"separator": "."}),
        (("--prefix2", "INBOX."), "folders", {"prefix": "INBOX."}),
        (("--skipemptyfolders",), "folders", {"skip_empty": True}),
        (("--subscribed",), "folders", {"subscribed_only": True}),
        (
            ("--regextrans2", "s/^Old(.*)/Archive$1/"),
            "folders",
            {"rename": [{"pattern": "^Old(.*)", "replacement": r"Archive\g<1>"}]},
        ),
        (("--maxage", "365"), "messages", {"max_age": "365d"}),
        (("--minage", "7"), "messages", {"min_age": "7d"}),
        (("--maxsize", "10000000"), "messages", {"max_size": 9_999_999}),
        (("--minsize", "100"), "messages", {"min_size": 101}),
        (("--search", "SINCE 1-Jan-2020"), "messages", {"search": "SINCE 1-Jan-2020"}),
        (("--skipcrossduplicates",), "messages", {"skip_cross_folder_duplicates": True}),
        (
            ("--useheader", "Message-Id", "--useheader", "Date"),
            "messages",
            {"identity_headers": ["Message-Id", "Date"]},
        ),
        (("--delete2",), "deletions", {"destination": "mirror"}),
        (("--delete1",), "deletions", {"source": "after_copy"}),
        (("--delete2", "--delete2folders"), "deletions", {"destination": "mirror", "delete_missing_folders": True}),
        (("--regexflag", "s/\\$Junk//g"), "flags", {"drop": ["\\$Junk"]}),
        (("--regexflag", "s/\\\\Flagged/\\\\Important/"), "flags", {"rename": {"\\Flagged": "\\Important"}}),
    ],
)
def test_pair_options(options: tuple[str, ...], section: str, expected: dict[str, Any], tmp_path: Path) -> None:
    conversion = converted(*options)
    got = pair_of(conversion).get(section, {})
    assert {key: got.get(key) for key in expected} == expected
    assert not conversion.unsupported
    valid(conversion, tmp_path)


@pytest.mark.parametrize(
    ("options", "side", "expected"),
    [
        ((), "source", {"tls": "starttls", "port": 143}),
        (("--ssl1",), "source", {"tls": "implicit"}),
        (("--port1", "993"), "source", {"tls": "implicit", "port": 993}),
        (("--tls2",), "destination", {"tls": "starttls"}),
        (("--notls1", "--nossl1"), "source", {"tls": "none"}),
        (("--authuser1", "admin"), "source", {"authuser": "admin", "auth": "plain"}),
        (("--authmech2", "LOGIN"), "destination", {"auth": "login"}),
        (("--timeout", "120"), "destination", {"timeout": "120s"}),
        (("--timeout1", "30"), "source", {"timeout": "30s"}),
        (("--gmail1",), "source", {"provider": "gmail", "tls": "implicit"}),
        (("--office2",), "destination", {"provider": "office365"}),
        (("--sslargs1", "SSL_verify_mode=0"), "source", {"tls_verify": False}),
        (("--maxbytespersecond", "500000"), "source", {"max_bytes_per_second": 500000}),
        (("--maxmessagespersecond", "4"), "source", {"max_messages_per_second": 4.0}),
    ],
)
def test_account_options(options: tuple[str, ...], side: str, expected: dict[str, Any], tmp_path: Path) -> None:
    conversion = converted(*options)
    got = conversion.accounts[side]
    assert {key: got.get(key) for key in expected} == expected
    valid(conversion, tmp_path)


def test_passwords_on_the_command_line_become_env_references_and_are_never_written(tmp_path: Path) -> None:
    conversion = convert_command_line(
        [
            "--host1",
            "a",
            "--user1",
            "u",
            "--password1",
            "s3cret-one",
            "--host2",
            "b",
            "--user2",
            "v",
            "--password2=s3cret-two",
            "--bogus",
            "s3cret-three",
        ]
    )
    text = conversion.yaml_text()
    assert "s3cret" not in text and "s3cret" not in " ".join(conversion.notes + conversion.unsupported)
    assert conversion.accounts["source"]["password"] == {"env": "MAILMIRROR_SOURCE_PASSWORD"}
    assert conversion.accounts["destination"]["password"] == {"env": "MAILMIRROR_DESTINATION_PASSWORD"}
    assert any("export MAILMIRROR_SOURCE_PASSWORD" in note for note in conversion.notes)
    assert any(line.startswith("--bogus") for line in conversion.unsupported)
    valid(conversion, tmp_path)


def test_an_oauth_token_file_becomes_a_file_reference(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("ya29.x\n", encoding="utf-8")
    conversion = convert_command_line(
        [
            "--host1",
            "imap.gmail.com",
            "--ssl1",
            "--user1",
            "u@gmail.com",
            "--oauthaccesstoken1",
            str(token),
            "--host2",
            "b",
            "--user2",
            "v",
            "--passfile2",
            "/p",
        ]
    )
    source = conversion.accounts["source"]
    assert source["auth"] == "xoauth2" and source["oauth2_token"] == {"file": str(token)}
    assert "password" not in source
    valid(conversion, tmp_path)


def test_unsupported_options_are_named_on_stderr_and_in_the_yaml(tmp_path: Path) -> None:
    conversion = converted("--justfolders", "--subscribeall", "--authmech1", "CRAM-MD5", "--nofoldersizes", "--dry")
    assert [line.split(":")[0] for line in conversion.unsupported] == [
        "--justfolders",
        "--subscribeall",
        "--authmech1 CRAM-MD5",
    ]
    text = conversion.yaml_text()
    for line in conversion.unsupported:
        assert f"#   {line}" in text
    assert any("--dry" in note for note in conversion.notes)
    valid(conversion, tmp_path)


@pytest.mark.parametrize(
    ("perl", "python"),
    [
        ("s/\\./\\//g", ("\\.", "/", "g")),
        ("s/^INBOX\\.(.*)/${1}/", ("^INBOX\\.(.*)", "\\g<1>", "")),
        ("s{Sent}{Sent Items}gi", None),  # bracketing delimiters: Perl only
        ("s/x/\\U$1/", None),
        ("s/a/b/e", None),
        ("s/(?i)old/New/", ("(?i)old", "New", "")),
    ],
)
def test_perl_substitutions(perl: str, python: tuple[str, str, str] | None) -> None:
    assert parse_substitution(perl) == python


def test_missing_host_or_password_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--host2"):
        convert_command_line(["--host1", "a", "--user1", "u", "--passfile1", "/p", "--user2", "v", "--passfile2", "/q"])
    with pytest.raises(UsageError, match="--password1 or --passfile1"):
        convert_command_line(["--host1", "a", "--user1", "u", "--host2", "b", "--user2", "v", "--passfile2", "/q"])


def test_sync_loop_file_keeps_the_passwords_in_the_file(tmp_path: Path) -> None:
    from mailmirror.config.secrets import Secret

    loop = tmp_path / "sync_loop.txt"
    loop.write_text(
        "# host1;user1;password1;host2;user2;password2;extra\n"
        "old.example;alice;pw-a;new.example;alice;pw-a2;\n"
        "\n"
        "old.example;bob;pw-b;new.example;robert;pw-b2;--folder INBOX --maxage 30\n",
        encoding="utf-8",
    )
    conversion = convert_sync_loop(loop, ["--ssl1", "--ssl2", "--automap"])
    assert list(conversion.pairs) == ["alice", "bob"]
    assert conversion.pairs["bob"]["messages"] == {"max_age": "30d"}
    assert conversion.pairs["bob"]["folders"]["include"] == ["INBOX"]
    assert conversion.accounts["bob-destination"]["username"] == "robert"
    assert "pw-" not in conversion.yaml_text()
    valid(conversion, tmp_path)
    config = load_config(tmp_path / "converted.yaml")
    passwords = [config.accounts[name].password for name in ("bob-source", "bob-destination")]
    assert all(isinstance(secret, Secret) for secret in passwords)
    assert [secret.reveal() for secret in passwords if secret is not None] == ["pw-b", "pw-b2"]


def test_a_short_sync_loop_line_names_file_and_line(tmp_path: Path) -> None:
    loop = tmp_path / "loop.txt"
    loop.write_text("a;u;p;b;v;q\nbroken;line\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"loop.txt:2: .*2 fields"):
        convert_sync_loop(loop)


def test_the_mapping_table_documents_every_option() -> None:
    doc = (ROOT / "docs" / "imapsync.md").read_text(encoding="utf-8")
    for option, mapping in mapping_table():
        assert f"| `{option}` |" in doc, f"docs/imapsync.md: no row for {option}"
        assert mapping, option
    assert len(OPTIONS) >= 40


# -- end to end -----------------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailmirror", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "daemon"), **(env or {})},
        check=False,
    )


def test_a_converted_imapsync_command_line_syncs_the_lab_servers(tmp_path: Path, mirror: Mirror) -> None:
    for index in range(5):
        mirror.src.append("INBOX", simple_message(index, tag="imapsync"))
    mirror.src.create_folder("Projects")
    mirror.src.append("Projects", simple_message(9, tag="imapsync"))
    passfile = tmp_path / "secret1"
    passfile.write_text(mirror.src_user.password + "\n", encoding="utf-8")
    imapsync = [
        "--host1", "127.0.0.1", "--port1", str(mirror.source_server.port), "--tls1",
        "--sslargs1", f"SSL_ca_file={mirror.source_server.ca_path}",
        "--user1", mirror.src_user.username, "--passfile1", str(passfile),
        "--host2", "127.0.0.1", "--port2", str(mirror.dest_server.tls_port), "--ssl2",
        "--sslargs2", f"SSL_ca_file={mirror.dest_server.ca_path}",
        "--user2", mirror.dst_user.username, "--password2", mirror.dst_user.password,
        "--automap", "--exclude", "^Trash$", "--maxsize", "50000000", "--useheader", "Message-Id",
        "--nofoldersizes", "--syncinternaldates", "--justfolders",
    ]  # fmt: skip
    config_path = tmp_path / "mailmirror.yaml"
    converted_run = run_cli(
        "import", "imapsync", "--state", str(tmp_path / "state.db"), "-o", str(config_path), "--", *imapsync
    )
    assert converted_run.returncode == 78, converted_run.stderr  # --justfolders was not converted
    assert "not converted: --justfolders" in converted_run.stderr
    text = config_path.read_text(encoding="utf-8")
    assert mirror.dst_user.password not in text and mirror.src_user.password not in text
    assert mirror.dst_user.password not in converted_run.stderr + converted_run.stdout
    assert yaml.safe_load(text)["accounts"]["destination"]["password"] == {"env": "MAILMIRROR_DESTINATION_PASSWORD"}
    validated = run_cli("-c", str(config_path), "config", "validate")
    assert validated.returncode == 0, validated.stderr
    synced = run_cli("-c", str(config_path), "sync", env={"MAILMIRROR_DESTINATION_PASSWORD": mirror.dst_user.password})
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert message_count(mirror.dst, "INBOX") == 5
    assert message_count(mirror.dst, "Projects") == 1
    verified = run_cli(
        "-c", str(config_path), "verify", env={"MAILMIRROR_DESTINATION_PASSWORD": mirror.dst_user.password}
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
