"""Provider presets (`provider: gmail | office365 | generic` on an account): ordinary config defaults that
explicit config overrides, shown by `plan`, and their effect against lab accounts shaped like Gmail and
like Exchange / Microsoft 365."""

from __future__ import annotations

import json
import tempfile
import textwrap
from pathlib import Path

import pytest
from imapclient import IMAPClient

from mailmirror.config.config_file import Config, load_config
from mailmirror.config.problems import InvalidConfig
from mailmirror.config.providers import PRESETS
from mailmirror.lab.dovecot import DovecotServer, seed_mailbox
from mailmirror.lab.providers import PROVIDER_SPECIAL_USE, exchange_mailbox, gmail_mailbox
from tests.conftest import MakeMirror, MakeServer
from tests.support import Mirror, Setup, account_yaml, write_pair_setup

# -- config: presets as defaults ------------------------------------------------------------------------

ACCOUNTS = """\
accounts:
  gm: {provider: gmail, username: alice@example.com, password: {env: P}}
  o365: {provider: office365, username: alice@example.com, password: {env: P}}
  plain: {provider: generic, host: imap.example.org, username: alice, password: {env: P}}
"""


def test_gmail_source_preset_fills_in_account_and_pair_settings(tmp_path: Path) -> None:
    config = load_config_text(ACCOUNTS + "pairs:\n  out: {source: gm, destination: plain}\n", tmp_path)
    account = config.accounts["gm"]
    assert (account.host, account.effective_port, account.tls) == ("imap.gmail.com", 993, "implicit")
    assert account.max_connections == 10
    assert account.max_bytes_per_second == 40_000  # only read from: imapsync --gmail1's value
    pair = config.pair("out")
    assert pair.messages.skip_cross_folder_duplicates
    assert "[Gmail]/Chats" in pair.folders.exclude
    assert pair.messages.max_size is None  # the destination has no preset limit
    plain = config.accounts["plain"]
    assert (plain.max_connections, plain.max_bytes_per_second) == (4, None)  # generic sets nothing
    settings = {row.setting: row for row in config.presets_of("out")}
    assert settings["pairs.out.messages.skip_cross_folder_duplicates"].role == "source"
    assert not any(row.overridden for row in settings.values())
    assert all(row.source for row in settings.values())


def test_preset_for_an_account_written_to_uses_the_upload_limits(tmp_path: Path) -> None:
    config = load_config_text(
        ACCOUNTS + "pairs:\n  in: {source: plain, destination: gm}\n  o: {source: plain, destination: o365}\n", tmp_path
    )
    assert config.accounts["gm"].max_bytes_per_second == 20_000  # imapsync --gmail2
    assert config.accounts["o365"].max_messages_per_second == 4  # imapsync --office2
    assert config.pair("in").messages.max_size == 34 * 2**20
    office = config.pair("o")
    assert office.messages.max_size == 45_000_000
    assert office.folders.map == {"Files": "Files (copied)"}
    assert (office.transfer.backoff.total_seconds(), office.transfer.retries) == (30, 8)


def test_explicit_config_overrides_a_preset_value(tmp_path: Path) -> None:
    text = """\
    defaults:
      messages: {skip_cross_folder_duplicates: false}
    accounts:
      gm: {provider: gmail, username: a, password: {env: P}, max_connections: 2, max_bytes_per_second: null}
      o365: {provider: office365, host: imap.example.net, username: a, password: {env: P}}
    pairs:
      move:
        source: gm
        destination: o365
        folders: {exclude: [Spam], map: {Notes: Old Notes}}
        messages: {max_size: 10MB}
        transfer: {retries: 2}
    """
    config = load_config_text(text, tmp_path)
    gm = config.accounts["gm"]
    assert (gm.max_connections, gm.max_bytes_per_second, gm.host) == (2, None, "imap.gmail.com")
    assert config.accounts["o365"].host == "imap.example.net"
    pair = config.pair("move")
    assert not pair.messages.skip_cross_folder_duplicates  # from defaults: explicit too
    assert pair.folders.exclude == ["Spam"]  # a list replaces the preset's whole
    assert pair.folders.map == {"Files": "Files (copied)", "Notes": "Old Notes"}  # a mapping merges
    assert pair.messages.max_size == 10_000_000
    assert pair.transfer.retries == 2
    assert pair.transfer.backoff.total_seconds() == 30  # both presets: the larger (office365's)
    overridden = {row.setting for row in config.presets_of("move") if row.overridden}
    assert overridden == {
        "accounts.gm.max_connections",
        "accounts.gm.max_bytes_per_second",
        "accounts.o365.host",
        "pairs.move.messages.skip_cross_folder_duplicates",
        "pairs.move.folders.exclude",
        "pairs.move.messages.max_size",
        "pairs.move.transfer.retries",
    }


def test_unknown_provider_is_a_config_error_with_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("config.yaml").write_text(
        "accounts:\n"
        "  a: {host: h, username: u, password: {env: P}}\n"
        "  b:\n"
        "    provider: yahoo\n"
        "    username: u\n"
        "    password: {env: P}\n"
        "pairs:\n  p: {source: a, destination: b}\n",
        encoding="utf-8",
    )
    with pytest.raises(InvalidConfig) as caught:
        load_config("config.yaml")
    lines = str(caught.value).splitlines()
    assert "config.yaml:4: accounts.b.provider: must be one of gmail, office365, generic (got 'yahoo')" in lines
    assert any(line.startswith("config.yaml:3: accounts.b.host: required key is missing") for line in lines)


def test_config_validate_exits_78_for_an_unknown_provider(tmp_path: Path) -> None:
    config = tmp_path / "mailmirror.yaml"
    config.write_text(
        ACCOUNTS.replace("provider: generic", "provider: exchange") + "pairs:\n  p: {source: gm, destination: plain}\n"
    )
    result = Setup(tmp_path, config).run("config", "validate")
    assert result.returncode == 78, result
    expected = f"{config}:4: accounts.plain.provider: must be one of gmail, office365, generic (got 'exchange')"
    assert expected in result.stderr.splitlines()
    assert "Traceback" not in result.stderr


def test_a_preset_value_that_conflicts_with_explicit_config_names_the_preset(tmp_path: Path) -> None:
    text = ACCOUNTS + "pairs:\n  p: {source: plain, destination: gm, messages: {min_size: 40MiB}}\n"
    with pytest.raises(InvalidConfig) as caught:
        load_config_text(text, tmp_path)
    assert "pairs.p.messages.min_size: must not exceed max_size" in str(caught.value)
    assert "provider presets" in str(caught.value)


def test_every_preset_value_is_valid_and_sourced() -> None:
    for preset in PRESETS.values():
        for value in (*preset.account, *preset.account_written, *preset.as_source, *preset.as_destination):
            assert value.source.strip(), (preset.name, value.path)
    docs = (Path(__file__).resolve().parent.parent / "docs" / "providers.md").read_text(encoding="utf-8")
    for preset in PRESETS.values():
        for value in (*preset.account, *preset.account_written, *preset.as_source, *preset.as_destination):
            assert f"`{'.'.join(value.path)}`" in docs, f"docs/providers.md lacks {preset.name} {value.path}"
            if not isinstance(value.value, list):
                shown = str(value.value).lower() if isinstance(value.value, bool) else str(value.value)
                assert f"`{shown}`" in docs, f"docs/providers.md lacks the value of {preset.name} {value.path}"


def load_config_text(text: str, tmp_path: Path) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path)


# -- lab accounts shaped like the providers ---------------------------------------------------------


@pytest.fixture(scope="module")
def provider_server(make_server: MakeServer) -> DovecotServer:
    """A lab Dovecot whose namespace gives Gmail's and Exchange's folders their special-use attributes
    (kept apart from the session servers, whose users must not see them)."""
    return make_server(special_use=tuple(PROVIDER_SPECIAL_USE.items()))


@pytest.fixture
def from_provider(provider_server: DovecotServer, make_mirror: MakeMirror) -> Mirror:
    """A mirror from a fresh account on the provider-shaped server to one on the session's destination."""
    return make_mirror(source=provider_server)


@pytest.fixture
def to_provider(provider_server: DovecotServer, make_mirror: MakeMirror) -> Mirror:
    """A mirror from a fresh account on the session's source to one on the provider-shaped server."""
    return make_mirror(destination=provider_server)


def provider_setup(
    mirror: Mirror, *, source: str | None = None, destination: str | None = None, pair_options: str = ""
) -> Setup:
    """The mirror's pair with the provider preset ``source`` / ``destination`` on its accounts."""
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-test-"))
    source_account, destination_account = (
        account_yaml(name, server, user, directory) + (f"    provider: {provider}\n" if provider else "")
        for name, server, user, provider in (
            ("src", mirror.source_server, mirror.src_user, source),
            ("dst", mirror.dest_server, mirror.dst_user, destination),
        )
    )
    return write_pair_setup(directory, source_account, destination_account, pair_options)


def where_is_each_message(client: IMAPClient) -> dict[str, list[str]]:
    """Message-ID (without <@lab.example>) → the destination folders holding it."""
    found: dict[str, list[str]] = {}
    for flags, _delimiter, name in client.list_folders():
        if b"\\Noselect" in flags:
            continue
        client.select_folder(name, readonly=True)
        uids = client.search()
        for data in client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]).values():
            header = data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().strip()
            key = header.split("<", 1)[1].split("@", 1)[0]
            found.setdefault(key, []).append(name)
    return found


def test_gmail_source_copies_each_message_once_all_mail_last(from_provider: Mirror) -> None:
    layout = gmail_mailbox()
    seed_mailbox(from_provider.src, layout.mailbox)
    setup = provider_setup(from_provider, source="gmail")

    report = setup.sync()
    assert report.error is None and report.complete, report
    destination_of = {folder.source: folder.destination for folder in report.folders}
    assert not set(layout.excluded) & set(destination_of), "a folder the preset excludes was synced"
    assert list(destination_of)[-1] == "[Gmail]/All Mail"  # its copy of a message loses
    placed = where_is_each_message(from_provider.dst)
    assert placed == {key: [destination_of[folder]] for key, folder in layout.kept_in.items()}
    assert "chat" not in placed
    assert report.copied == len(layout.kept_in)

    again = setup.sync()
    assert (again.copied, again.error) == (0, None)
    verdict = setup.verify()
    assert verdict.clean, [(f.source, f.differences) for f in verdict.folders if f.differences]


def test_plan_shows_what_the_preset_changed(from_provider: Mirror) -> None:
    seed_mailbox(from_provider.src, gmail_mailbox().mailbox)
    setup = provider_setup(from_provider, source="gmail", pair_options="transfer: {retries: 3}")
    result = setup.run("plan")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Provider presets of pair 'test'" in text
    assert "pairs.test.messages.skip_cross_folder_duplicates" in text
    assert "accounts.src.host" in text and "overridden by the config" in text
    document = json.loads(setup.run("plan", "--json").stdout)
    presets = {row["setting"]: row for row in document["pairs"][0]["presets"]}
    assert presets["pairs.test.transfer.retries"]["overridden"] is True
    assert presets["pairs.test.folders.exclude"] == {
        "setting": "pairs.test.folders.exclude",
        "value": PRESETS["gmail"].as_source[1].value,
        "provider": "gmail",
        "role": "source",
        "source": PRESETS["gmail"].as_source[1].source,
        "overridden": False,
    }
    assert "[Gmail]/Chats" not in text.split("Provider presets")[0]  # not in the folder table
    # the plan counts what a pass copies: each message once, the labels' duplicates skipped
    copies = {folder["source"]: folder["copy"] for folder in document["pairs"][0]["folders"]}
    assert sum(copies.values()) == len(gmail_mailbox().kept_in)
    assert copies["[Gmail]/All Mail"] == 1  # only the archived message has no other folder


def test_office365_source_maps_special_folders_and_skips_outbox_and_sync_issues(from_provider: Mirror) -> None:
    layout = exchange_mailbox()
    seed_mailbox(from_provider.src, layout.mailbox)
    for folder in ("Sent", "Trash", "Junk", "Drafts"):
        from_provider.dst.create_folder(folder)
    setup = provider_setup(from_provider, source="office365")

    report = setup.sync()
    assert report.error is None and report.complete, report
    destination_of = {folder.source: folder.destination for folder in report.folders}
    assert destination_of["Sent Items"] == "Sent"
    assert destination_of["Deleted Items"] == "Trash"
    assert destination_of["Junk Email"] == "Junk"
    assert not set(layout.excluded) & set(destination_of)
    placed = where_is_each_message(from_provider.dst)
    assert placed == {key: [destination_of[folder]] for key, folder in layout.kept_in.items()}
    assert not {"Outbox", "Sync Issues"} & {name for _f, _d, name in from_provider.dst.list_folders()}
    assert setup.verify().clean


def test_office365_destination_gets_the_outlook_names(to_provider: Mirror) -> None:
    plain = {
        "INBOX": exchange_mailbox().mailbox["INBOX"],
        "Sent": exchange_mailbox().mailbox["Sent Items"],
        "Trash": exchange_mailbox().mailbox["Deleted Items"],
        "Junk": exchange_mailbox().mailbox["Junk Email"],
    }
    seed_mailbox(to_provider.src, plain)
    for folder in ("Sent Items", "Deleted Items", "Junk Email"):  # a new Microsoft 365 mailbox has them
        to_provider.dst.create_folder(folder)
    setup = provider_setup(to_provider, destination="office365")

    report = setup.sync()
    assert report.error is None and report.complete, report
    destination_of = {folder.source: folder.destination for folder in report.folders}
    assert destination_of == {"INBOX": "INBOX", "Sent": "Sent Items", "Trash": "Deleted Items", "Junk": "Junk Email"}
    placed = where_is_each_message(to_provider.dst)
    assert placed == {"inbox": ["INBOX"], "sent": ["Sent Items"], "deleted": ["Deleted Items"], "junk": ["Junk Email"]}
    config = load_config(setup.config_path)
    assert config.pair("test").messages.max_size == 45_000_000  # the preset's, as the pass used it
