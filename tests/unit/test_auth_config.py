"""The oauth2:/auth: config and the mechanism choice, without a server (the logins are in test_auth.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailmirror.config.config_file import load_config
from mailmirror.errors import AuthenticationFailure, ConfigError
from mailmirror.imap import auth, oauth2

HEAD = "state: {path: state/state.db}\naccounts:\n"
TAIL = (
    "  other: {host: imap.other.example, username: bob, password: {env: OTHER}}\n"
    "pairs:\n  p: {source: m, destination: other}\n"
)


def load(tmp_path: Path, account: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yaml"
    path.write_text(HEAD + account + TAIL)
    return load_config(path)


def error(tmp_path: Path, account: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, account)
    return str(caught.value)


def test_provider_fills_in_endpoints_scope_and_the_token_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "  m:\n    host: outlook.office365.com\n    username: a@contoso.example\n"
        "    oauth2: {provider: microsoft, tenant: contoso.example, client_id: abc}\n",
    )
    client = config.accounts["m"].oauth2
    assert client is not None
    assert client.effective_token_url == "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
    assert client.effective_device_url == "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/devicecode"
    assert client.effective_scope == "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
    assert client.effective_token_file == tmp_path / "state" / "oauth2" / "m.json"
    assert config.accounts["m"].auth == "auto"


def test_explicit_settings_win_over_the_provider(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "  m:\n    host: imap.gmail.com\n    username: a@example.com\n"
        "    oauth2: {provider: google, client_id: abc, scope: 'https://mail.google.com/ openid', "
        "token_file: tokens/m.json}\n",
    )
    client = config.accounts["m"].oauth2
    assert client is not None
    assert client.effective_token_url == "https://oauth2.googleapis.com/token"
    assert client.effective_scope == "https://mail.google.com/ openid"
    assert client.effective_token_file == tmp_path / "tokens" / "m.json"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/token", "http://[::1]/token", "http://localhost/t"])
def test_http_token_url_only_for_loopback(tmp_path: Path, url: str) -> None:
    load(tmp_path, f"  m:\n    host: h\n    username: u\n    oauth2: {{token_url: '{url}', client_id: c}}\n")


@pytest.mark.parametrize("url", ["http://idp.example/token", "ftp://idp.example/token", "idp.example/token"])
def test_other_token_urls_are_refused(tmp_path: Path, url: str) -> None:
    text = error(tmp_path, f"  m:\n    host: h\n    username: u\n    oauth2: {{token_url: '{url}', client_id: c}}\n")
    assert "accounts.m.oauth2.token_url: must be an https:// URL (http:// only for a loopback address" in text


def test_token_url_or_provider_is_required(tmp_path: Path) -> None:
    text = error(tmp_path, "  m:\n    host: h\n    username: u\n    oauth2: {client_id: c}\n")
    assert "token_url is required unless provider (google or microsoft) is given" in text


def test_oauth2_client_secret_must_be_a_reference(tmp_path: Path) -> None:
    text = error(
        tmp_path,
        "  m:\n    host: h\n    username: u\n    oauth2: {provider: google, client_id: c, client_secret: s3}\n",
    )
    assert "accounts.m.oauth2.client_secret: inline secrets are not allowed" in text and "s3" not in text


def test_password_and_oauth2_exclude_each_other(tmp_path: Path) -> None:
    text = error(
        tmp_path,
        "  m:\n    host: h\n    username: u\n    password: {env: P}\n    oauth2: {provider: google, client_id: c}\n",
    )
    assert "accounts.m.password: not used with oauth2, which logs in with OAuth2 tokens" in text


def test_authuser_separator_needs_authuser(tmp_path: Path) -> None:
    text = error(tmp_path, "  m:\n    host: h\n    username: u\n    password: {env: P}\n    authuser_separator: '*'\n")
    assert "accounts.m.authuser_separator: only used with authuser" in text


def test_no_refresh_token_says_to_authorize(tmp_path: Path) -> None:
    config = load(tmp_path, "  m:\n    host: h\n    username: u\n    oauth2: {provider: google, client_id: c}\n")
    client = config.accounts["m"].oauth2
    assert client is not None
    with pytest.raises(AuthenticationFailure, match=r"run `mailmirror oauth2 authorize m`"):
        oauth2.current_refresh_token(client)


def test_stored_refresh_token_wins_until_the_configured_one_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RT", "rt-configured-1")
    config = load(
        tmp_path,
        "  m:\n    host: h\n    username: u\n    oauth2: {provider: google, client_id: c, refresh_token: {env: RT}}\n",
    )
    client = config.accounts["m"].oauth2
    assert client is not None
    assert oauth2.current_refresh_token(client) == "rt-configured-1"
    oauth2.store_refresh_token(client, "rt-rotated-2")
    assert oauth2.current_refresh_token(client) == "rt-rotated-2"
    monkeypatch.setenv("RT", "rt-configured-3")  # the admin put a new one in the config
    assert oauth2.current_refresh_token(client) == "rt-configured-3"


CAPS = frozenset({"IMAP4REV1", "AUTH=PLAIN", "AUTH=LOGIN", "AUTH=SCRAM-SHA-1", "AUTH=SCRAM-SHA-256", "AUTH=XOAUTH2"})


@pytest.mark.parametrize(
    ("account", "capabilities", "expected"),
    [
        ("    password: {env: P}\n", CAPS, "SCRAM-SHA-256"),
        ("    password: {env: P}\n", CAPS - {"AUTH=SCRAM-SHA-256"}, "SCRAM-SHA-1"),
        ("    password: {env: P}\n", frozenset({"AUTH=PLAIN"}), "PLAIN"),
        ("    password: {env: P}\n", frozenset({"IMAP4REV1"}), "LOGIN"),
        ("    password: {env: P}\n    authuser: admin\n", CAPS, "PLAIN"),
        ("    password: {env: P}\n    authuser: admin\n    authuser_separator: '*'\n", frozenset(), "LOGIN"),
        ("    password: {env: P}\n    auth: login\n", CAPS, "LOGIN"),
        ("    oauth2: {provider: microsoft, client_id: c}\n", CAPS, "XOAUTH2"),
        ("    oauth2: {provider: google, client_id: c}\n", CAPS | {"AUTH=OAUTHBEARER"}, "OAUTHBEARER"),
        ("    oauth2_token: {env: T}\n", frozenset({"AUTH=XOAUTH2"}), "XOAUTH2"),
    ],
)
def test_auto_chooses_the_strongest_mechanism(
    tmp_path: Path, account: str, capabilities: frozenset[str], expected: str
) -> None:
    config = load(tmp_path, "  m:\n    host: h\n    username: u\n" + account)
    assert auth.choose_mechanism(config.accounts["m"], capabilities) == expected
