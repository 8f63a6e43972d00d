"""Fleets: pair sets (pairs from a CSV or sync_loop list), `status` over many pairs, the cutover `report`.

The end-to-end test runs a 200-row CSV fleet against a lab Dovecot with a master (admin) user: one admin
credential logs in as every source and destination user.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailmirror.config.config_file import load_config
from mailmirror.config.problems import InvalidConfig
from mailmirror.lab.dovecot import DovecotServer, LabCA, LabUser
from mailmirror.state.store import StateStore
from tests.support import ROOT, RunningDaemon, fresh_count, simple_message

SECRET_WORD = "hunter2-never-shown"


def run_cli(config: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "daemon")}
    return subprocess.run(
        [sys.executable, "-m", "mailmirror", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    path.chmod(mode)
    return path


BASE = """\
state: {path: state.db}
accounts:
  a: {host: old.example, username: x, password: {env: X}}
  b: {host: new.example, username: x, password: {env: X}}
pairs:
  manual: {source: a, destination: b}
"""

STAFF = """\
pair_sets:
  staff:
    csv: staff.csv
    source: {host: imap.old.example, username: "{user}", auth: plain, authuser: admin, password: {env: OLD_ADMIN}}
    destination:
      host: imap.new.example
      username: "{dest_user}"
      password: {file: "pw/{dest_user}"}
    schedule: {every: 1h}
    folders: {exclude: [Junk], under: "Old/{user}"}
"""


def fleet_config(tmp_path: Path, rows: str, pair_set: str = STAFF) -> Path:
    write(tmp_path / "staff.csv", rows, 0o644)
    return write(tmp_path / "config.yaml", BASE + pair_set, 0o644)


def problems(config: Path) -> list[str]:
    with pytest.raises(InvalidConfig) as caught:
        load_config(config)
    return [str(problem).replace(f"{config.parent}/", "") for problem in caught.value.problems]


# -- expansion ------------------------------------------------------------------------------------------


def test_each_row_becomes_a_pair_with_its_accounts_options_and_row_overrides(tmp_path: Path) -> None:
    config = load_config(
        fleet_config(
            tmp_path,
            """
            user,dest_user,folders.include,schedule.every
            # a comment line, and an empty line, are skipped

            alice@old.example,alice,INBOX|Archive/**,
            bob,robert,,5m
            """,
        )
    )
    assert list(config.pairs) == ["manual", "staff-alice@old.example", "staff-bob"]
    assert config.pair_set_counts == {"staff": 2}
    alice = config.effective_pairs()["staff-alice@old.example"]
    assert alice.source == "staff-alice@old.example.source"
    source = config.accounts[alice.source]
    assert (source.host, source.username, source.authuser, source.auth) == (
        "imap.old.example",
        "alice@old.example",
        "admin",
        "plain",
    )
    destination = config.accounts[alice.destination]
    assert destination.password is not None and destination.password.file == tmp_path / "pw" / "alice"
    assert alice.folders.include == ["INBOX", "Archive/**"]
    assert alice.folders.under == "Old/alice@old.example"
    assert alice.folders.exclude == ["Junk"]
    assert alice.schedule.every is not None and alice.schedule.every.total_seconds() == 3600
    bob = config.effective_pairs()["staff-bob"]
    assert bob.schedule.every is not None and bob.schedule.every.total_seconds() == 300
    assert bob.folders.include == []

    validated = run_cli(tmp_path / "config.yaml", "config", "validate")
    assert validated.returncode == 0, validated.stderr
    assert "3 pairs; 2 from pair set staff" in validated.stdout


def test_bad_rows_are_reported_at_their_line_and_column(tmp_path: Path) -> None:
    config = fleet_config(
        tmp_path,
        """
        user,dest_user,schedule.every
        alice,alice,
        bob,,
        alice,alice2,
        carol,carol,5 parsecs
        dave,dave,1h,extra
        """,
    )
    assert problems(config) == [
        "staff.csv:3: column dest_user: must not be empty (in destination.username)",
        "staff.csv:4: column user: 'alice' again (line 2 has it): pair 'staff-alice' would be defined twice",
        "staff.csv:5: column schedule.every: must be a duration like 30s, 15m, 2h, 7d, 1w (or 1h30m), or a whole "
        "number of seconds (got '5 parsecs') (in schedule.every)",
        "staff.csv:6: 4 fields, the header has 3 (user, dest_user, schedule.every)",
    ]


def test_two_rows_into_one_destination_mailbox_are_refused_unless_under_differs(tmp_path: Path) -> None:
    pair_set = STAFF.replace(', under: "Old/{user}"', "")
    config = fleet_config(
        tmp_path, "user,dest_user,folders.under\nalice,shared,\nbob,Shared,\ncarol,shared,C\n", pair_set
    )
    assert problems(config) == [
        "staff.csv:3: column dest_user: the same destination mailbox (shared@imap.new.example) as pair "
        "'staff-alice' (line 2): two pairs would write into one mailbox; fix the row, or give each row its own "
        "folders.under (in destination)"
    ]


def test_rows_whose_folders_under_differ_only_in_case_or_a_trailing_slash_share_one_destination(
    tmp_path: Path,
) -> None:
    pair_set = STAFF.replace(', under: "Old/{user}"', "")
    config = fleet_config(tmp_path, "user,dest_user,folders.under\nalice,shared,Old\nbob,shared,old/\n", pair_set)
    assert problems(config) == [
        "staff.csv:3: column dest_user: the same destination mailbox (shared@imap.new.example) as pair "
        "'staff-alice' (line 2): two pairs would write into one mailbox; fix the row, or give each row its "
        "own folders.under (in destination)"
    ]


def test_a_row_cannot_take_a_secret_file_or_command_out_of_its_template(tmp_path: Path) -> None:
    # the list holds no passwords, so it may be writable by others: a row must not read another file
    pair_set = STAFF.replace("{env: OLD_ADMIN}", '{command: [pass, "{user}"]}')
    rows = "user,dest_user\nalice,../../etc/shadow\nbob,..\n-x,carol\ndave,d.ve\nerin,CORP\\erin\n"
    config = fleet_config(tmp_path, rows, pair_set)
    assert problems(config) == [
        "staff.csv:2: column dest_user: '../../etc/shadow' names a secret's file or command argument: no '/', not "
        "'.' or '..'",
        "staff.csv:3: column dest_user: '..' names a secret's file or command argument: no '/', not '.' or '..'",
        "staff.csv:4: column user: '-x' names a secret's file or command argument: it may not start with '-'",
    ]


def test_a_list_that_is_missing_or_not_a_file_is_an_error(tmp_path: Path) -> None:
    config = fleet_config(tmp_path, "user,dest_user\na,a\n")
    (tmp_path / "staff.csv").unlink()
    assert problems(config) == ["staff.csv: no such file"]
    config.write_text("state: {path: state.db}\n" + STAFF, encoding="utf-8")  # only the pair set: nothing else
    assert problems(config) == ["staff.csv: no such file"]
    os.mkfifo(tmp_path / "staff.csv")
    assert problems(config) == ["staff.csv: not a regular file"]


def test_a_list_without_rows_is_an_error(tmp_path: Path) -> None:
    assert problems(fleet_config(tmp_path, "user,dest_user\n# nobody yet\n")) == [
        "staff.csv: no rows: one row per pair after the header"
    ]


def test_a_template_naming_an_unknown_column_is_reported_in_the_config(tmp_path: Path) -> None:
    config = fleet_config(tmp_path, "user,dest_user\nalice,alice\n", STAFF.replace("{dest_user}", "{dest}"))
    assert problems(config) == [
        "config.yaml:13: pair_sets.staff.destination.username: {dest} is not a column of staff.csv (columns: "
        "user, dest_user)",
        "config.yaml:14: pair_sets.staff.destination.password.file: {dest} is not a column of staff.csv (columns: "
        "user, dest_user)",
    ]


def test_a_row_pair_name_may_not_collide_with_a_pair_of_the_config(tmp_path: Path) -> None:
    config = fleet_config(tmp_path, "user,dest_user\nx,y\n", STAFF.replace("staff:", "manual:", 1))
    config.write_text(config.read_text().replace("  manual: {source", "  manual-x: {source"))
    assert problems(config) == [
        "staff.csv:2: column user: pair 'manual-x' is defined in the config's pairs too (or by another pair set)"
    ]


def test_a_row_account_name_may_not_replace_an_account_of_the_config(tmp_path: Path) -> None:
    config = fleet_config(tmp_path, "user,dest_user\nbob,robert\n")
    text = (
        config.read_text()
        .replace("  b: {host", "  staff-bob.destination: {host")
        .replace("destination: b}", "destination: staff-bob.destination}")
    )
    config.write_text(text)
    assert problems(config) == [
        "staff.csv:2: column user: account 'staff-bob.destination' is defined in the config's accounts too: rename "
        "that account"
    ]


PASSWORD_SET = """\
pair_sets:
  staff:
    csv: staff.csv
    source: {host: imap.old.example, username: "{user}", password: {column: password}}
    destination: {host: imap.new.example, username: "{user}", password: {command: [pass, "mail/{user}"]}}
"""


def test_a_list_with_passwords_must_be_private_and_its_passwords_are_never_shown(tmp_path: Path) -> None:
    config = fleet_config(tmp_path, f"user,password\nalice,{SECRET_WORD}\nbob,\n", PASSWORD_SET)
    found = problems(config)
    assert found == [
        "staff.csv: holds passwords (column password), but group or others may read it (mode 0644): chmod 600 it"
    ]
    (tmp_path / "staff.csv").chmod(0o640)
    assert "mode 0640" in problems(config)[0]
    (tmp_path / "staff.csv").chmod(0o600)
    loaded = load_config(config)
    alice = loaded.accounts["staff-alice.source"]
    assert alice.password is not None and alice.password.reveal() == SECRET_WORD
    shown = repr(alice.password) + str(alice.password) + alice.password.describe() + repr(alice)
    assert SECRET_WORD not in shown and "column password of staff.csv line 2" in shown
    destination = loaded.accounts["staff-alice.destination"].password
    assert destination is not None and destination.command == ("pass", "mail/alice")
    with pytest.raises(Exception) as empty:
        loaded.accounts["staff-bob.source"].password.reveal()  # type: ignore[union-attr]
    assert "column password of staff.csv line 3 is empty" in str(empty.value)
    listed = run_cli(config, "plan", "--json", "no-such-*")
    assert listed.returncode == 64 and SECRET_WORD not in listed.stdout + listed.stderr


def test_a_list_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    from mailmirror.config.pair_set_lists import private_file_problem

    path = write(tmp_path / "list.csv", "a\n")
    assert private_file_problem(path, "holds passwords") is None
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        assert "owned by uid 65534" in str(private_file_problem(path, "holds passwords"))


def test_a_sync_loop_file_gives_hosts_users_and_passwords(tmp_path: Path) -> None:
    write(
        tmp_path / "loop.txt",
        f"""
        imap.old.example;alice;{SECRET_WORD};imap.new.example;alice.n;pw2;
        # comment lines are skipped
        imap.old.example;bob;x;imap.new.example;bob.n;y
        imap.old.example;carol;x;imap.new.example;carol.n;y;--delete2
        """,
        0o644,
    )
    config = write(
        tmp_path / "config.yaml",
        BASE + "pair_sets:\n  loop:\n    csv: loop.txt\n    format: sync_loop\n    destination: {tls: starttls}\n",
        0o644,
    )
    found = problems(config)
    assert len(found) == 1 and "loop.txt: holds passwords (column password1, password2)" in found[0]
    assert SECRET_WORD not in "".join(found)
    (tmp_path / "loop.txt").chmod(0o600)
    found = problems(config)
    assert found == [
        "loop.txt:4: column extra: imapsync options per line are not applied in a pair set: give the options in "
        "the pair set (mailmirror import imapsync converts an imapsync command line) or as an option column"
    ]
    text = (tmp_path / "loop.txt").read_text().replace(";--delete2", "")
    write(tmp_path / "loop.txt", text)
    loaded = load_config(config)
    assert list(loaded.pair_set_counts.items()) == [("loop", 3)]
    alice = loaded.effective_pairs()["loop-alice"]
    destination = loaded.accounts[alice.destination]
    assert (destination.host, destination.username, destination.tls) == ("imap.new.example", "alice.n", "starttls")
    assert loaded.accounts[alice.source].password.reveal() == SECRET_WORD  # type: ignore[union-attr]


def test_pair_names_and_glob_patterns_on_the_command_line(tmp_path: Path) -> None:
    config = fleet_config(tmp_path, "user,dest_user\nalice,alice\nbob,bob\n")
    listed = run_cli(config, "status", "--json", "staff-*", "manual")
    assert listed.returncode == 0, listed.stderr
    assert [pair["pair"] for pair in json.loads(listed.stdout)["pairs"]] == ["manual", "staff-alice", "staff-bob"]
    unknown = run_cli(config, "status", "nobody-*")
    assert unknown.returncode == 64
    assert "unknown pair 'nobody-*' (no pair matches" in unknown.stderr
    in_shard = run_cli(config, "status", "--shard", "0/2", "nobody-*")
    assert in_shard.returncode == 64 and "no pair of shard 0/2 matches 'nobody-*'" in in_shard.stderr
    halves = [run_cli(config, "status", "--json", "--shard", f"{k}/2", "*") for k in range(2)]
    names = sorted(pair["pair"] for half in halves for pair in json.loads(half.stdout)["pairs"] if half.returncode == 0)
    assert names == ["manual", "staff-alice", "staff-bob"]


def test_the_json_schema_accepts_a_config_of_pair_sets_only(tmp_path: Path) -> None:
    import jsonschema
    import yaml

    from mailmirror.config.config_file import config_json_schema

    schema = config_json_schema()
    only_sets = yaml.safe_load(STAFF)
    jsonschema.validate(only_sets, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"state": {"path": "x"}}, schema)
    config = fleet_config(tmp_path, "user,dest_user\nalice,alice\n")
    config.write_text(STAFF, encoding="utf-8")
    assert list(load_config(config).pairs) == ["staff-alice"]


def test_a_template_mistake_is_reported_once_at_its_line_in_the_config(tmp_path: Path) -> None:
    config = fleet_config(tmp_path, "user,dest_user\na,a\nb,b\n", STAFF.replace("host: imap.old.example", "hots: x"))
    assert problems(config) == [
        "config.yaml:10: pair_sets.staff.source.host: required key is missing",
        "config.yaml:10: pair_sets.staff.source.hots: unknown key (did you mean 'host'?)",
    ]


def test_a_thousand_rows_load(tmp_path: Path) -> None:
    rows = "user,dest_user\n" + "".join(f"user{i},u{i}\n" for i in range(1000))
    config = load_config(fleet_config(tmp_path, rows))
    assert len(config.pairs) == 1001 and len(config.accounts) == 2002


# -- status and report from a state database ---------------------------------------------------------


def seeded_state(tmp_path: Path) -> Path:
    """staff-alice: synced and verified; staff-bob: failing; staff-carol: never ran; manual: refused messages."""
    config = fleet_config(tmp_path, "user,dest_user\nalice,alice\nbob,bob\ncarol,carol\n")
    store = StateStore(tmp_path / "state.db")
    try:
        run = store.start_run("staff-alice")
        store.finish_run(run, outcome="ok", copied=5, failed=0, bytes_copied=100, error=None, adopted=2, skipped=1)
        store.record_folder_counts(
            "staff-alice", [("INBOX", "Old/alice/INBOX", 6, 7), ("Sent", "Old/alice/Sent", 2, 2)]
        )
        from mailmirror.state.records import SyncedMessage, VerifyRecord

        store.mark_done(
            "staff-alice", "INBOX", [SyncedMessage(uid, uid, "done", f"f{uid}", 10, frozenset()) for uid in range(1, 6)]
        )
        store.mark_done(
            "staff-alice", "Sent", [SyncedMessage(uid, uid, "done", f"s{uid}", 10, frozenset()) for uid in (1, 2)]
        )
        store.record_verify("staff-alice", VerifyRecord(True, 2, 7, 9, 0, 2, 1, "clean: all 7", None))
        run = store.start_run("staff-bob")
        store.finish_run(run, outcome="error", copied=0, failed=0, bytes_copied=0, error="login refused for bob")
        run = store.start_run("manual")
        store.finish_run(run, outcome="partial", copied=3, failed=1, bytes_copied=30, error=None)
        store.record_folder_counts("manual", [("INBOX", "INBOX", 4, 3)])
        store.record_failure("manual", "INBOX", 4, "[LIMIT] message too large")
        store.mark_done(
            "manual", "INBOX", [SyncedMessage(uid, uid, "done", f"m{uid}", 10, frozenset()) for uid in (1, 2, 3)]
        )
        store.set_backlog("manual", "INBOX", 1)
    finally:
        store.close()
    return config


def test_status_lines_filters_totals_and_json(tmp_path: Path) -> None:
    config = seeded_state(tmp_path)
    shown = run_cli(config, "status")
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[1]: line for line in shown.stdout.splitlines() if line.startswith("│ ")}
    assert "ok" in lines["staff-alice"] and " 8 " in lines["staff-alice"] and " 9 " in lines["staff-alice"]
    assert "failing" in lines["staff-bob"] and "login refused for bob" in lines["staff-bob"]
    assert "never" in lines["staff-carol"]
    assert "4 pairs (1 ok, 1 partial, 1 failing, 1 never); messages: 12 on the sources" in shown.stdout

    def names(*args: str) -> list[str]:
        result = run_cli(config, "status", "--json", *args)
        assert result.returncode == 0, result.stderr
        return [pair["pair"] for pair in json.loads(result.stdout)["pairs"]]

    assert names("--failing") == ["manual", "staff-bob"]
    assert names("--stale") == ["staff-bob", "staff-carol"]
    assert names("--incomplete") == ["manual", "staff-bob", "staff-carol"]
    assert names("--failing", "staff-*") == ["staff-bob"]
    document = json.loads(run_cli(config, "status", "--json").stdout)
    assert document["totals"]["pending"] == 1 and document["totals"]["refused"] == 1
    manual = document["pairs"][0]
    assert manual["refused_reasons"] == [{"reason": "[LIMIT] message too large", "messages": 1}]


def test_report_in_markdown_json_and_csv(tmp_path: Path) -> None:
    config = seeded_state(tmp_path)
    markdown = run_cli(config, "report")
    assert markdown.returncode == 0, markdown.stderr
    text = markdown.stdout
    assert text.startswith("# mailmirror cutover report\n")
    assert "**Result: NOT READY for cutover** — 1 of 4 pairs" in text
    assert "| 3 | 12 | 12 | 8 | 2 | 1 | 1 | 1 | 1 | 0 | 3 |" in text  # totals
    assert "| staff-alice | alice@imap.old.example | alice@imap.new.example | ok | 2 | 8 | 9 | 5 | 2 | 1 |" in text
    assert "- manual: 1 × [LIMIT] message too large" in text
    assert "- staff-bob: failing: login refused for bob" in text

    document = json.loads(run_cli(config, "report", "--format", "json").stdout)
    assert document["ready"] is False
    assert document["totals"]["verified_clean"] == 1 and document["totals"]["never_verified"] == 3
    alice = next(pair for pair in document["pairs"] if pair["pair"] == "staff-alice")
    assert alice["ready"] is True and alice["verify"]["clean"] is True and alice["copied"] == 5
    assert alice["already_there"] == 2 and alice["skipped_by_rule"] == 1

    only = run_cli(config, "report", "--format", "csv", "staff-a*", "-o", str(tmp_path / "r.csv"))
    assert only.returncode == 0, only.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert [row["pair"] for row in rows] == ["staff-alice", "TOTAL"]
    assert rows[0]["verify_clean"] == "yes" and rows[0]["src_messages"] == "8" and rows[0]["dst_messages"] == "9"
    assert rows[1]["copied"] == "5"


def test_an_older_state_database_is_migrated_forward(tmp_path: Path) -> None:
    import sqlite3

    from mailmirror.state.schema import MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version in range(1, 6):
            db.executescript(MIGRATIONS[version])
            db.execute("INSERT INTO schema_version VALUES (?)", (version,))
        db.execute(
            "INSERT INTO runs (pair, started_at, finished_at, outcome, copied) "
            "VALUES ('p', '2026-01-01', '2026-01-01', 'ok', 3)"
        )
    store = StateStore(path)
    try:
        assert store.fleet_rows()["p"]["copied"] == 3
        assert store.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 7
    finally:
        store.close()


# -- a 200-row fleet against Dovecot ----------------------------------------------------------------


FLEET_ROWS = 200


@pytest.fixture(scope="module")
def fleet_server(dovecot: None, lab_dir: Path, lab_ca: LabCA) -> Iterator[tuple[DovecotServer, LabUser]]:
    server = DovecotServer(lab_dir / "fleet", "fleet", ca=lab_ca, auth_lab=True)
    admin = server.add_master_user()
    server.start()
    try:
        yield server, admin
    finally:
        server.stop()


def test_a_200_row_fleet_with_one_admin_credential_syncs_verifies_and_reports(
    fleet_server: tuple[DovecotServer, LabUser],
) -> None:
    server, admin = fleet_server
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-fleet-"))
    rows = ["user,dest_user"]
    users: list[tuple[LabUser, LabUser]] = []
    for index in range(FLEET_ROWS):
        source, destination = server.add_user(f"old{index}-{os.getpid()}"), server.add_user(f"new{index}-{os.getpid()}")
        users.append((source, destination))
        rows.append(f"{source.username},{destination.username}")
        if index % 50 == 0:  # a few mailboxes with mail; the others are empty
            with server.connect(source) as client:
                for number in range(3):
                    client.append("INBOX", simple_message(number, tag=source.username))
    write(directory / "staff.csv", "\n".join(rows) + "\n", 0o644)
    write(directory / "admin.password", admin.password + "\n")
    account = (
        f"host: 127.0.0.1, port: {server.port}, tls: starttls, tls_ca: {server.ca_path}, auth: plain, "
        f"authuser: {admin.username}, password: {{file: admin.password}}, max_connections: 16"
    )
    config = write(
        directory / "mailmirror.yaml",
        f"""
        state: {{path: state.db}}
        metrics: {{listen: "127.0.0.1:0"}}
        pair_sets:
          staff:
            csv: staff.csv
            source: {{{account}, username: "{{user}}"}}
            destination: {{{account}, username: "{{dest_user}}"}}
            folders: {{under: Migrated}}
        """,
        0o644,
    )
    validated = run_cli(config, "config", "validate")
    assert validated.returncode == 0, validated.stderr
    assert f"{FLEET_ROWS} pairs; {FLEET_ROWS} from pair set staff" in validated.stdout

    synced = run_cli(config, "-q", "sync", "-j", "8", "--no-progress")
    assert synced.returncode == 0, synced.stdout[-3000:] + synced.stderr[-3000:]
    for index in range(0, FLEET_ROWS, 50):
        assert fresh_count(server, users[index][1], "Migrated/INBOX") == 3
    assert admin.password not in synced.stdout + synced.stderr
    # a fleet's summary: a line per pair (no folder tables) and a total
    lines = synced.stdout.splitlines()
    assert len(lines) == FLEET_ROWS + 1 and "Source folder" not in synced.stdout
    assert sum(line.startswith("staff-") and ": complete; " in line for line in lines) == FLEET_ROWS
    copied = 3 * len(range(0, FLEET_ROWS, 50))
    assert lines[-1].startswith(f"{FLEET_ROWS} pairs ({FLEET_ROWS} complete): {copied} messages copied")

    verified = run_cli(config, "-q", "verify", "-j", "4", "staff-*")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]

    document = json.loads(run_cli(config, "report", "--format", "json").stdout)
    assert document["ready"] is True
    totals = document["totals"]
    assert totals["pairs"] == FLEET_ROWS and totals["verified_clean"] == FLEET_ROWS
    assert totals["src_messages"] == totals["dst_messages"] == totals["copied"] == 3 * len(range(0, FLEET_ROWS, 50))
    markdown = run_cli(config, "report").stdout
    assert f"**Result: READY for cutover** — {FLEET_ROWS} of {FLEET_ROWS} pairs" in markdown
    table = run_cli(config, "report", "--format", "csv").stdout
    assert len(table.splitlines()) == FLEET_ROWS + 2

    incomplete = json.loads(run_cli(config, "status", "--json", "--incomplete").stdout)
    assert incomplete["pairs"] == [] and incomplete["totals"]["pairs"] == 0
    everything = json.loads(run_cli(config, "status", "--json").stdout)
    assert everything["totals"]["states"] == {"ok": FLEET_ROWS}

    # a second fleet pass copies nothing; a pattern picks one pair
    again = run_cli(config, "-q", "sync", "-j", "8", "--no-progress", "staff-old0-*")
    assert again.returncode == 0, again.stderr
    assert "Source folder" in again.stdout  # one pair: its folder table
    one_line = run_cli(config, "-q", "sync", "--no-progress", "--summary", "line", "staff-old0-*")
    assert one_line.returncode == 0 and one_line.stdout.splitlines()[-1].startswith("1 pair (1 complete): 0 messages")
    assert fresh_count(server, users[0][1], "Migrated/INBOX") == 3
    signed = run_cli(config, "-q", "report", "--verify", "-j", "2", "--format", "csv", "staff-old5?-*")
    assert signed.returncode == 0, signed.stderr
    assert len(signed.stdout.splitlines()) == 10 + 2  # old50-..old59-, and the TOTAL row

    # a message lost on one destination: the sign-off says so, and exits like verify (65)
    with server.connect(users[0][1]) as client:
        client.select_folder("Migrated/INBOX")
        client.delete_messages(client.search()[:1])
        client.expunge()
    lost = run_cli(config, "-q", "report", "--verify", "staff-old0-*", "staff-old1-*")
    assert lost.returncode == 65, lost.stderr
    assert "**Result: NOT READY for cutover** — 1 of 2 pairs" in lost.stdout
    assert f"- staff-{users[0][0].username}: last verify: 1 missing" in lost.stdout


def test_the_daemon_runs_a_pair_set_with_a_password_file_per_row(
    source_server: DovecotServer, dest_server: DovecotServer, start_daemon: Callable[[Path], RunningDaemon]
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-fleet-daemon-"))
    (directory / "pw").mkdir()
    rows = ["user,dest_user"]
    destinations = []
    for index in range(3):
        source, destination = source_server.add_user(), dest_server.add_user()
        destinations.append(destination)
        rows.append(f"{source.username},{destination.username}")
        write(directory / "pw" / f"src-{source.username}", source.password)
        write(directory / "pw" / f"dst-{destination.username}", destination.password)
        with source_server.connect(source) as client:
            for number in range(index + 1):
                client.append("INBOX", simple_message(number, tag=source.username))
    write(directory / "staff.csv", "\n".join(rows) + "\n", 0o644)

    def account(server: DovecotServer, column: str, prefix: str) -> str:
        return (
            f"{{host: 127.0.0.1, port: {server.port}, tls: starttls, tls_ca: {server.ca_path}, "
            f'username: "{{{column}}}", password: {{file: "pw/{prefix}-{{{column}}}"}}}}'
        )

    config = write(
        directory / "mailmirror.yaml",
        f"""
        state: {{path: state.db}}
        metrics: {{listen: "127.0.0.1:0"}}
        pair_sets:
          staff:
            csv: staff.csv
            source: {account(source_server, "user", "src")}
            destination: {account(dest_server, "dest_user", "dst")}
            schedule: {{every: 1h}}
        """,
        0o644,
    )
    daemon = start_daemon(config)
    daemon.wait_for(
        lambda: [fresh_count(dest_server, user) for user in destinations] == [1, 2, 3], "every row's pair synced"
    )
    names = [f"staff-{row.split(',')[0]}" for row in rows[1:]]
    daemon.wait_for(lambda: all(f'pair="{name}"' in daemon.get("/metrics")[1] for name in names), "metrics per pair")
    assert daemon.stop() == 0
    statuses = json.loads(run_cli(config, "status", "--json").stdout)
    assert [(pair["pair"], pair["state"], pair["copied"]) for pair in statuses["pairs"]] == [
        (name, "ok", index + 1) for index, name in enumerate(names)
    ]


def test_a_long_status_is_printed_as_plain_aligned_columns() -> None:
    from rich.console import Console

    from mailmirror.cli.status_table import PLAIN_TABLE_ROWS, print_status
    from mailmirror.service.fleet import PairStatus

    statuses = [PairStatus(f"staff-u{index}", "ok", src_messages=index, dst_messages=index) for index in range(300)]
    statuses.append(PairStatus("staff-broken", "failing", last_error="login refused"))
    out = io.StringIO()
    print_status(Console(file=out, width=200), statuses, "State in state.db")
    lines = out.getvalue().splitlines()
    assert len(statuses) > PLAIN_TABLE_ROWS and len(lines) == len(statuses) + 3
    assert lines[1].startswith("Pair ") and lines[1].endswith("Pending  Refused  Last error")
    assert lines[-2].split() == ["staff-broken", "failing", "never", "-", "-", "0", "0", "login", "refused"]
    assert lines[-1].startswith("301 pairs (300 ok, 1 failing)")
    assert len({len(line) for line in lines[2:-2]}) == 1  # aligned
