"""The config file: examples stay valid, every mistake is reported as `file:line: path: message`, secrets stay
secret, pairs inherit defaults."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from mailmirror.config.account import Account
from mailmirror.config.config_file import Config, config_json_schema, load_config
from mailmirror.config.pair import PairDefaults
from mailmirror.config.pair_options import Schedule
from mailmirror.config.problems import ConfigProblem, InvalidConfig, format_config_error
from mailmirror.config.secrets import Secret
from mailmirror.config.units import format_duration, parse_duration, parse_size
from mailmirror.errors import ConfigError, ExitCode, UsageError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
PACKAGED_EXAMPLE = REPO / "daemon" / "mailmirror" / "data" / "config.example.yaml"

# A distinctive value: if it ever shows up in a repr, a dump or an error text, a secret leaked.
SECRET_VALUE = "Tr0ub4dor&3-do-not-print-me"

VALID = """\
accounts:
  old: {host: imap.old.example, username: alice, password: {env: OLD_PASS}}
  new: {host: imap.new.example, username: alice, password: {env: NEW_PASS}}
pairs:
  alice:
    source: old
    destination: new
"""


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, so that error messages show the file as config.yaml (as the user gave it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(text: str, name: str = "config.yaml") -> Path:
    path = Path(name)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(text: str) -> Config:
    return load_config(write_config(text))


def error_text(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(text)
    assert caught.value.exit_code == ExitCode.CONFIG
    return str(caught.value)


# --------------------------------------------------------------------------------------------------
# The example config
# --------------------------------------------------------------------------------------------------


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert set(config.pairs) == {"alice", "alice-backup", "alice-restore"}
    assert config.pair("alice").schedule.every == timedelta(minutes=10)


def test_packaged_example_is_an_exact_copy_of_the_repository_one() -> None:
    assert PACKAGED_EXAMPLE.read_bytes() == EXAMPLE.read_bytes(), (
        "daemon/mailmirror/data/config.example.yaml drifted: cp config.example.yaml daemon/mailmirror/data/"
    )
    packaged = resources.files("mailmirror").joinpath("data/config.example.yaml")
    assert packaged.read_bytes() == EXAMPLE.read_bytes()


def test_example_shows_every_option() -> None:
    raw = _example_yaml()
    _assert_every_field_shown(raw["state"], Config.model_fields["state"].annotation, "state")
    _assert_every_field_shown(raw["metrics"], Config.model_fields["metrics"].annotation, "metrics")
    _assert_every_field_shown(raw["log"], Config.model_fields["log"].annotation, "log")
    _assert_every_field_shown(raw["defaults"], PairDefaults, "defaults")
    for section, model_field in PairDefaults.model_fields.items():
        _assert_every_field_shown(raw["defaults"][section], model_field.annotation, f"defaults.{section}")
    _assert_every_field_shown(raw["accounts"]["old"], Account, "accounts.old")
    secret_kinds = {kind for account in raw["accounts"].values() for secret in _secrets_of(account) for kind in secret}
    assert secret_kinds == {"env", "file", "command"}


def test_example_shows_the_built_in_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.defaults.model_dump() == PairDefaults().model_dump()
    old = config.accounts["old"]
    built_in = Account(host=old.host, username=old.username, password=Secret(env="OLD_PASS"))
    assert old.model_dump() == built_in.model_dump()
    assert config.state == Config.model_fields["state"].get_default(call_default_factory=True)


def test_example_never_holds_an_inline_secret() -> None:
    for account in _example_yaml()["accounts"].values():
        for key in ("password", "oauth2_token"):
            assert account.get(key) is None or isinstance(account[key], dict)


def _example_yaml() -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _assert_every_field_shown(section: dict[str, Any], model: Any, where: str) -> None:
    assert isinstance(model, type) and issubclass(model, BaseModel)
    missing = set(model.model_fields) - set(section)
    assert not missing, f"config.example.yaml does not show {where}: {sorted(missing)}"


def _secrets_of(account: dict[str, Any]) -> list[dict[str, Any]]:
    return [account[key] for key in ("password", "oauth2_token") if isinstance(account.get(key), dict)]


# --------------------------------------------------------------------------------------------------
# Broken configs: exit 78 and the exact file:line: path: message
# --------------------------------------------------------------------------------------------------

BROKEN: list[tuple[str, str, str]] = [
    (
        "yaml_syntax_error",
        """\
        accounts:
          old:
            host: 'imap.old.example
            username: alice
        """,
        "config.yaml:5: YAML syntax error: found unexpected end of stream (while scanning a quoted scalar at line 3)",
    ),
    (
        "unknown_key_with_did_you_mean",
        VALID + "    foldrs: {exclude: [Junk]}\n",
        "config.yaml:8: pairs.alice.foldrs: unknown key (did you mean 'folders'?)",
    ),
    (
        "unknown_nested_key_with_did_you_mean",
        VALID + "    folders: {inclde: [INBOX]}\n",
        "config.yaml:8: pairs.alice.folders.inclde: unknown key (did you mean 'include'?)",
    ),
    (
        "unknown_key_without_a_close_match_lists_the_keys",
        "log: {colour: blue}\n" + VALID,
        "config.yaml:1: log.colour: unknown key (expected one of: format, level)",
    ),
    (
        "unknown_account_lists_the_known_ones",
        VALID.replace("source: old", "source: old2"),
        "config.yaml:6: pairs.alice.source: unknown account 'old2' (known: new, old)",
    ),
    (
        "same_account_on_both_sides",
        VALID.replace("destination: new", "destination: old"),
        "config.yaml:7: pairs.alice.destination: same account as source ('old'): "
        "a pair copies from one account to another",
    ),
    (
        "bad_enum",
        VALID.replace("username: alice, password: {env: OLD_PASS}", "username: alice, tls: ssl, password: {env: X}"),
        "config.yaml:2: accounts.old.tls: must be one of implicit, starttls, none (got 'ssl')",
    ),
    (
        "port_not_an_integer",
        VALID.replace("host: imap.old.example,", "host: imap.old.example, port: imaps,"),
        "config.yaml:2: accounts.old.port: must be an integer (got 'imaps')",
    ),
    (
        "bad_duration",
        VALID + "    schedule: {every: 15 minutes}\n",
        "config.yaml:8: pairs.alice.schedule.every: must be a duration like 30s, 15m, 2h, 7d, 1w (or 1h30m), "
        "or a whole number of seconds (got '15 minutes')",
    ),
    (
        "bad_size",
        VALID + "    messages: {max_size: 50 megs}\n",
        "config.yaml:8: pairs.alice.messages.max_size: must be a size like 512KB, 50MB, 1.5MiB, 2GiB, "
        "or a whole number of bytes (got '50 megs')",
    ),
    (
        "bad_regex_names_the_entry_index",
        VALID + "    folders:\n      exclude:\n        - Junk\n        - 're:Trash['\n",
        "config.yaml:11: pairs.alice.folders.exclude[1]: invalid regular expression 're:Trash[': "
        "unterminated character set at position 5",
    ),
    (
        "inline_password_rejected",
        VALID.replace("password: {env: OLD_PASS}", f"password: {SECRET_VALUE}"),
        "config.yaml:2: accounts.old.password: inline secrets are not allowed in the config file; "
        "use {env: NAME}, {file: PATH} or {command: [argv, ...]}",
    ),
    (
        "duplicate_key",
        VALID + "  alice: {source: new, destination: old}\n",
        "config.yaml:8: pairs.alice: duplicate key (first defined at line 5)",
    ),
    ("empty_file", "# nothing here yet\n", "config.yaml: the file is empty (it needs accounts and pairs)"),
    (
        "top_level_not_a_mapping",
        "- old\n- new\n",
        "config.yaml:1: the top level must be a mapping of the sections state, metrics, log, daemon, defaults, "
        "accounts, pairs, pair_sets (got a list)",
    ),
    (
        "missing_required_key_points_at_the_parent",
        VALID.replace("host: imap.new.example, ", ""),
        "config.yaml:3: accounts.new.host: required key is missing",
    ),
    (
        "missing_section",
        VALID.split("pairs:")[0],
        "config.yaml:1: pairs: required key is missing",
    ),
    (
        "invalid_pair_name",
        VALID.replace("  alice:", "  alice smith:"),
        "config.yaml:5: pairs[\"alice smith\"]: invalid name: use letters, digits, '.', '_', '@' and '-', starting "
        "with a letter or digit (names become metric labels and state keys)",
    ),
    (
        "password_missing",
        VALID.replace(", password: {env: NEW_PASS}", ""),
        "config.yaml:3: accounts.new.password: required "
        "(a secret: {env: NAME}, {file: PATH} or {command: [argv, ...]}), or oauth2 for OAuth2 logins",
    ),
    (
        "oauth_needs_a_token",
        VALID.replace("password: {env: NEW_PASS}", "auth: xoauth2"),
        "config.yaml:3: accounts.new.oauth2_token: required with auth: xoauth2 "
        "(a secret: {env: NAME}, {file: PATH} or {command: [argv, ...]}), or oauth2 (an OAuth2 client)",
    ),
    (
        "tls_ca_must_exist",
        VALID.replace("host: imap.old.example,", "host: imap.old.example, tls_ca: certs/lab-ca.pem,"),
        "config.yaml:2: accounts.old.tls_ca: no such file: {tmp}/certs/lab-ca.pem",
    ),
    (
        "every_and_cron_together",
        VALID + "    schedule:\n      every: 10m\n      cron: '*/5 * * * *'\n",
        "config.yaml:10: pairs.alice.schedule.cron: every and cron are alternatives: set one of them "
        "(every: null to schedule by cron only)",
    ),
    (
        "cron_with_four_fields",
        VALID + "    schedule: {cron: '*/5 * * *'}\n",
        "config.yaml:8: pairs.alice.schedule.cron: must have 5 fields: minute hour day-of-month month day-of-week "
        "(got 4 in '*/5 * * *')",
    ),
    (
        "cron_value_out_of_range",
        VALID + "    schedule: {cron: '0 24 * * *'}\n",
        "config.yaml:8: pairs.alice.schedule.cron: hour '24' is not 0-23",
    ),
    (
        "unknown_time_zone",
        VALID + "    schedule: {cron: '0 3 * * *', timezone: Europe/Atlantis}\n",
        "config.yaml:8: pairs.alice.schedule.timezone: unknown time zone 'Europe/Atlantis' "
        "(use an IANA name such as Europe/Berlin or UTC)",
    ),
    (
        "share_out_of_range",
        VALID + "    deletions: {max_share: 1.5}\n",
        "config.yaml:8: pairs.alice.deletions.max_share: must be at most 1.0 (got 1.5)",
    ),
    (
        "mirror_and_move_together",
        VALID + "    deletions: {destination: mirror, source: after_copy}\n",
        "config.yaml:8: pairs.alice.deletions.destination: mirror together with source: after_copy would delete "
        "from the destination every message moved off the source; choose one",
    ),
    (
        "bad_replacement_group",
        VALID + "    folders:\n      rename: [{pattern: '^Old/(.*)$', replacement: 'New/\\2'}]\n",
        "config.yaml:9: pairs.alice.folders.rename[0].replacement: invalid replacement 'New/\\\\2': "
        "invalid group reference 2 at position 5",
    ),
    (
        "no_pairs",
        VALID.split("pairs:")[0] + "pairs: {}\n",
        "config.yaml:4: pairs: must not be empty",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_broken_config_is_reported_exactly(in_tmp: Path, text: str, expected: str) -> None:
    assert error_text(text) == expected.replace("{tmp}", str(in_tmp))


def test_every_problem_is_listed_at_once_in_line_order(in_tmp: Path) -> None:
    text = """\
    log: {format: txt}
    accounts:
      old:
        host: imap.old.example
        port: imaps
        username: alice
        password: {env: OLD_PASS}
      new: {host: imap.new.example, username: alice, password: {env: NEW_PASS}}
    pairs:
      alice:
        source: old2
        destination: new
        folders: {inclde: [INBOX]}
    """
    assert error_text(text).splitlines() == [
        "config.yaml:1: log.format: must be one of text, json (got 'txt')",
        "config.yaml:5: accounts.old.port: must be an integer (got 'imaps')",
        "config.yaml:11: pairs.alice.source: unknown account 'old2' (known: new, old)",
        "config.yaml:13: pairs.alice.folders.inclde: unknown key (did you mean 'include'?)",
    ]


def test_problems_are_available_as_data(in_tmp: Path) -> None:
    with pytest.raises(InvalidConfig) as caught:
        load_text(VALID.replace("source: old", "source: old2"))
    assert caught.value.problems == (
        ConfigProblem("config.yaml", 6, "pairs.alice.source", "unknown account 'old2' (known: new, old)"),
    )


def test_the_file_is_named_as_the_user_gave_it(in_tmp: Path) -> None:
    (in_tmp / "etc").mkdir()
    write_config("accounts: [\n", name="etc/mailmirror.yaml")
    with pytest.raises(ConfigError, match=r"^etc/mailmirror\.yaml:2: YAML syntax error: "):
        load_config("etc/mailmirror.yaml")


def test_a_missing_config_file_is_named_with_exit_78(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("nowhere.yaml")
    assert str(caught.value) == "nowhere.yaml: no such file"
    assert caught.value.exit_code == 78


def test_directory_instead_of_a_file(in_tmp: Path) -> None:
    with pytest.raises(ConfigError, match=r"^conf\.d: is a directory, not a config file$"):
        (in_tmp / "conf.d").mkdir()
        load_config("conf.d")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config_file_says_permission_denied(in_tmp: Path) -> None:
    path = write_config(VALID)
    path.chmod(0)
    with pytest.raises(ConfigError, match=r"^config\.yaml: permission denied$"):
        load_config(path)


def test_yaml_merge_keys_are_not_duplicates(in_tmp: Path) -> None:
    config = load_text(
        """\
        accounts:
          old: &server {host: imap.example, username: alice, password: {env: A}, max_connections: 2}
          new:
            <<: *server
            username: bob
        pairs:
          alice: {source: old, destination: new}
        """
    )
    assert config.accounts["new"].username == "bob"
    assert config.accounts["new"].max_connections == 2


def test_format_config_error_counts_several_problems(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(VALID.replace("source: old", "source: x").replace("destination: new", "destination: y"))
    assert format_config_error(caught.value).splitlines() == [
        "config.yaml:6: pairs.alice.source: unknown account 'x' (known: new, old)",
        "config.yaml:7: pairs.alice.destination: unknown account 'y' (known: new, old)",
        "2 problems in config.yaml",
    ]
    assert format_config_error(ConfigError("just one")) == "just one"


# --------------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------------


def test_env_secret_resolves_at_use_time(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLD_PASS", raising=False)
    config = load_text(VALID)  # loads without the secret being present
    monkeypatch.setenv("OLD_PASS", SECRET_VALUE)
    assert config.accounts["old"].password is not None
    assert config.accounts["old"].password.reveal() == SECRET_VALUE


def test_file_secret_loses_exactly_one_trailing_newline(in_tmp: Path) -> None:
    (in_tmp / "secrets").mkdir()
    (in_tmp / "secrets" / "old").write_text(SECRET_VALUE + "\n\n", encoding="utf-8")
    config = load_text(VALID.replace("{env: OLD_PASS}", "{file: secrets/old}"))  # relative to the config file
    password = config.accounts["old"].password
    assert password is not None and password.file == in_tmp / "secrets" / "old"
    assert password.reveal() == SECRET_VALUE + "\n"


def test_command_secret_runs_without_a_shell() -> None:
    secret = Secret(command=(sys.executable, "-c", f"print({SECRET_VALUE!r})"))
    assert secret.reveal() == SECRET_VALUE


def test_missing_env_var_names_the_field_and_the_variable(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLD_PASS", raising=False)
    config = load_text(VALID)
    password = config.accounts["old"].password
    assert password is not None
    with pytest.raises(ConfigError) as caught:
        password.reveal()
    assert str(caught.value) == "accounts.old.password: environment variable OLD_PASS is not set"
    assert caught.value.exit_code == 78


def test_unreadable_secret_file_is_named() -> None:
    secret = Secret(file=Path("/nonexistent/mailmirror/secret"))
    with pytest.raises(ConfigError, match=r"^secret: file /nonexistent/mailmirror/secret cannot be read: "):
        secret.reveal()


def test_failing_command_is_named_without_its_output() -> None:
    script = f"import sys; print({SECRET_VALUE!r}); sys.stderr.write('vault sealed\\n'); sys.exit(3)"
    secret = Secret(command=(sys.executable, "-c", script))
    with pytest.raises(ConfigError) as caught:
        secret.reveal()
    message = str(caught.value)
    assert message.endswith("failed with exit status 3: vault sealed")
    assert SECRET_VALUE not in message.replace(repr(SECRET_VALUE), "")  # only the argv, never what it printed


def test_missing_command_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^secret: command \[no-such-program-xyz, a\] cannot run: "):
        Secret(command=("no-such-program-xyz", "a")).reveal()


def test_secret_value_never_appears_in_repr_dump_or_errors(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLD_PASS", SECRET_VALUE)
    (in_tmp / "new.pass").write_text(SECRET_VALUE, encoding="utf-8")
    config = load_text(VALID.replace("{env: NEW_PASS}", "{file: new.pass}"))
    old, new = config.accounts["old"].password, config.accounts["new"].password
    assert old is not None and new is not None
    assert old.reveal() == new.reveal() == SECRET_VALUE
    assert repr(old) == str(old) == "Secret(env=OLD_PASS)"
    assert repr(new) == f"Secret(file={in_tmp / 'new.pass'})"
    shown = [repr(config), str(config), config.model_dump_json(), repr(config.model_dump()), repr(old), repr(new)]
    assert not any(SECRET_VALUE in text for text in shown)
    # Mistakes around a secret never echo it either.
    for broken in (f"password: {SECRET_VALUE}", f"password: {{env: '{SECRET_VALUE}'}}", f"password: [{SECRET_VALUE}]"):
        assert SECRET_VALUE not in error_text(VALID.replace("password: {env: OLD_PASS}", broken))


def test_secret_needs_exactly_one_kind(in_tmp: Path) -> None:
    text = VALID.replace("{env: OLD_PASS}", "{env: OLD_PASS, file: /x}")
    assert error_text(text) == (
        "config.yaml:2: accounts.old.password: must be a mapping with exactly one of env, file or command, "
        "e.g. {env: NAME} (got env, file)"
    )


# --------------------------------------------------------------------------------------------------
# Defaults, inheritance and effective values
# --------------------------------------------------------------------------------------------------

WITH_DEFAULTS = """\
defaults:
  schedule: {every: 30m, idle: [INBOX], jitter: 1m}
  folders: {exclude: [Junk], map: {Sent Messages: Sent}}
  deletions: {destination: mirror}
accounts:
  old: {host: imap.old.example, username: alice, password: {env: OLD_PASS}}
  new: {host: imap.new.example, username: alice, password: {env: NEW_PASS}}
pairs:
  plain: {source: old, destination: new}
  custom:
    source: old
    destination: new
    schedule: {cron: "0 3 * * *"}
    folders: {exclude: [Spam], map: {Trash: Deleted}}
    deletions: {max_share: 0.5}
"""


def test_pairs_inherit_defaults_key_by_key(in_tmp: Path) -> None:
    config = load_text(WITH_DEFAULTS)
    plain, custom = config.pair("plain"), config.pair("custom")
    assert plain.schedule == Schedule(every="30m", idle=["INBOX"], jitter="1m")
    assert plain.folders.exclude == ["Junk"] and plain.deletions.destination == "mirror"
    # cron replaces the inherited every; the rest of the schedule is still inherited
    assert (custom.schedule.cron, custom.schedule.every, custom.schedule.idle) == ("0 3 * * *", None, ["INBOX"])
    assert custom.folders.exclude == ["Spam"]  # lists are replaced
    assert custom.folders.map == {"Sent Messages": "Sent", "Trash": "Deleted"}  # mappings merge
    assert (custom.deletions.destination, custom.deletions.max_share) == ("mirror", 0.5)
    assert list(config.effective_pairs()) == ["plain", "custom"]
    assert config.pairs["custom"].deletions.destination == "keep"  # `pairs` stays as written


def test_built_in_defaults_apply_without_a_defaults_section(in_tmp: Path) -> None:
    pair = load_text(VALID).pair("alice")
    assert pair.schedule.every == timedelta(minutes=15)
    assert pair.messages.identity_headers == ["Message-ID", "Date"]
    assert (pair.deletions.destination, pair.deletions.source, pair.deletions.max_share) == ("keep", "keep", 0.2)


def test_a_conflict_created_by_inheritance_is_reported_on_the_pair(in_tmp: Path) -> None:
    text = "defaults:\n  messages: {max_age: 7d}\n" + VALID + "    messages: {min_age: 30d}\n"
    assert error_text(text) == (
        "config.yaml:10: pairs.alice.messages.min_age: must be shorter than max_age (30d >= 1w): no message would be "
        "copied (with values inherited from defaults)"
    )


def test_blank_sections_mean_defaults(in_tmp: Path) -> None:
    text = "defaults:\n  # schedule: {every: 1h}\nlog:\n" + VALID + "    folders:\n      exclude:\n"
    config = load_text(text)
    assert config.defaults == PairDefaults() and config.log.level == "info"
    assert config.pair("alice").folders.exclude == []


def test_unknown_pair_is_a_usage_error(in_tmp: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown pair 'bob' \(known: alice\)") as caught:
        load_text(VALID).pair("bob")
    assert caught.value.exit_code == 64


def test_relative_paths_are_relative_to_the_config_file(in_tmp: Path) -> None:
    (in_tmp / "etc").mkdir()
    write_config("state: {path: state/mailmirror.db}\n" + VALID, name="etc/config.yaml")
    config = load_config("etc/config.yaml")
    assert config.state.path == in_tmp / "etc" / "state" / "mailmirror.db"


def test_account_defaults_and_effective_port(in_tmp: Path) -> None:
    account = load_text(VALID).accounts["old"]
    assert (account.tls, account.tls_verify, account.auth) == ("implicit", True, "auto")
    assert (account.effective_port, account.timeout, account.max_connections) == (993, timedelta(seconds=60), 4)
    assert account.model_copy(update={"tls": "starttls"}).effective_port == 143
    assert account.model_copy(update={"port": 1143}).effective_port == 1143


def test_metrics_listen_address_is_split(in_tmp: Path) -> None:
    config = load_text('metrics: {listen: "[::1]:9100"}\n' + VALID)
    assert (config.metrics.host, config.metrics.port) == ("::1", 9100)


def test_models_are_frozen(in_tmp: Path) -> None:
    config = load_text(VALID)
    with pytest.raises(ValueError, match="frozen"):
        config.accounts["old"].host = "elsewhere"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("365d", 365 * 86400), ("1w", 604800), ("1h30m", 5400), (90, 90)],
)
def test_durations_parse_and_format_back_to_the_same_time(written: object, seconds: int) -> None:
    assert parse_duration(written) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(parse_duration(written))) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("written", "size"),
    [("50MB", 50_000_000), ("1.5MiB", 1_572_864), ("512KB", 512_000), ("10kB", 10_000), (4096, 4096), ("7", 7)],
)
def test_sizes_parse_decimal_and_binary_units(written: object, size: int) -> None:
    assert parse_size(written) == size


@pytest.mark.parametrize("written", ["15x", "-5s", -5, "5 parsecs", "", True, 1.5])
def test_durations_reject_nonsense(written: object) -> None:
    with pytest.raises(ValueError, match=r"duration|negative"):
        parse_duration(written)


@pytest.mark.parametrize("written", ["50XB", "-1MB", -1, "5 parsecs", "", True, 1.5])
def test_sizes_reject_nonsense(written: object) -> None:
    with pytest.raises(ValueError, match=r"size|negative"):
        parse_size(written)


# --------------------------------------------------------------------------------------------------
# JSON Schema and descriptions
# --------------------------------------------------------------------------------------------------


def test_json_schema_is_closed_and_described() -> None:
    schema = json.loads(json.dumps(config_json_schema()))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Account"]["additionalProperties"] is False
    objects = list(_object_schemas(schema))
    assert len(objects) >= 14
    for where, node in objects:
        assert node.get("additionalProperties") is False, where
        for name, prop in node["properties"].items():
            assert prop.get("description"), f"{where}.{name} has no description"
    assert schema["$defs"]["Schedule"]["properties"]["every"]["default"] == "15m"


def test_every_model_field_has_a_description() -> None:
    models = _models(Config)
    assert {"Account", "Secret", "Schedule", "RenameRule", "DeletionRules"} <= {model.__name__ for model in models}
    for model in models:
        for name, model_field in model.model_fields.items():
            assert model_field.description, f"{model.__name__}.{name}"


def _object_schemas(node: Any, where: str = "#") -> Any:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            yield where, node
        for key, value in node.items():
            yield from _object_schemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _object_schemas(value, f"{where}/{index}")


def _models(declared: Any) -> set[type[BaseModel]]:
    """Every model reachable from ``declared`` through field annotations (Optional, list, dict included)."""
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        found = {declared}
        for model_field in declared.model_fields.values():
            found |= _models(model_field.annotation)
        return found
    return set().union(*(_models(argument) for argument in get_args(declared)))
