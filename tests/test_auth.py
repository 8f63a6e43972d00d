"""Real-world logins against a lab Dovecot set up for them (auth_lab): OAuth2 with tokens mailmirror gets
from a local token endpoint (JWTs the oauth2 passdb validates), admin logins in both forms, SCRAM, and
auth: auto. The last test scans everything these tests wrote for the secrets they used."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailmirror.config.config_file import load_config
from mailmirror.errors import AuthenticationFailure
from mailmirror.imap import oauth2
from mailmirror.imap.session import Session
from mailmirror.lab.dovecot import DovecotServer, LabCA, LabUser
from tests.oauth_issuer import Issuer, SigningKeys, running_issuer
from tests.support import ROOT, RunningDaemon, account_yaml, simple_message

pytestmark = pytest.mark.dovecot


@dataclass
class Evidence:
    """What these tests wrote (logs, outputs, files) and the secrets they used: scanned by the last test."""

    secrets: set[str] = field(default_factory=set)
    texts: list[str] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)


class _Recorder(logging.Handler):
    def __init__(self, evidence: Evidence) -> None:
        super().__init__(logging.DEBUG)
        self.evidence = evidence

    def emit(self, record: logging.LogRecord) -> None:
        self.evidence.texts.append(self.format(record))


@pytest.fixture(scope="module")
def evidence() -> Iterator[Evidence]:
    collected = Evidence()
    recorder = _Recorder(collected)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    try:
        yield collected
    finally:
        root.removeHandler(recorder)
        root.setLevel(previous)


@pytest.fixture(scope="module")
def keys() -> SigningKeys:
    return SigningKeys()


@pytest.fixture(scope="module")
def auth_lab(dovecot: None, lab_dir: Path, lab_ca: LabCA, keys: SigningKeys) -> Iterator[tuple[DovecotServer, LabUser]]:
    server = DovecotServer(lab_dir / "auth", "auth", ca=lab_ca, auth_lab=True)
    # Keys and the master user before the start: Dovecot caches keys until `doveadm reload`, and stats
    # the masters passwd-file at most once a second.
    server.add_oauth2_key("HS256", keys.hs256_secret)
    server.add_oauth2_key("RS256", keys.rs256_public_pem, kid=keys.rs256_kid)
    admin = server.add_master_user()
    server.start()
    try:
        yield server, admin
    finally:
        server.stop()


@pytest.fixture
def auth_server(auth_lab: tuple[DovecotServer, LabUser]) -> DovecotServer:
    return auth_lab[0]


@pytest.fixture
def admin(auth_lab: tuple[DovecotServer, LabUser], evidence: Evidence) -> LabUser:
    evidence.secrets.add(auth_lab[1].password)
    return auth_lab[1]


@pytest.fixture(autouse=True)
def _fresh_token_cache() -> Iterator[None]:
    oauth2.TOKENS.clear()
    yield
    oauth2.TOKENS.clear()


@pytest.fixture
def issuer(keys: SigningKeys, evidence: Evidence) -> Iterator[Issuer]:
    for running in running_issuer(keys):
        yield running
        evidence.secrets.update(running.issued)
        evidence.secrets.add(running.client_secret)


@pytest.fixture
def user(auth_server: DovecotServer, evidence: Evidence) -> LabUser:
    made = auth_server.add_user()
    evidence.secrets.add(made.password)
    return made


@pytest.fixture
def workdir(evidence: Evidence) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-auth-"))
    evidence.directories.append(directory)
    return directory


def oauth2_account_yaml(
    name: str, server: DovecotServer, user: LabUser, issuer: Issuer, directory: Path, *, auth: str = "auto"
) -> str:
    (directory / f"{name}.client_secret").write_text(issuer.client_secret + "\n")
    (directory / f"{name}.refresh_token").write_text(issuer.grant(user.username) + "\n")
    return (
        f"  {name}:\n"
        f"    host: 127.0.0.1\n    port: {server.port}\n    tls: starttls\n    tls_ca: {server.ca_path}\n"
        f"    username: {user.username}\n    auth: {auth}\n"
        f"    oauth2:\n"
        f"      token_url: {issuer.token_url}\n"
        f"      device_authorization_url: {issuer.device_url}\n"
        f"      client_id: {issuer.client_id}\n"
        f"      client_secret: {{file: {directory / f'{name}.client_secret'}}}\n"
        f"      refresh_token: {{file: {directory / f'{name}.refresh_token'}}}\n"
        f"      timeout: 2s\n"
    )


def write_config(directory: Path, accounts: str, pairs: str = "") -> Path:
    path = directory / "mailmirror.yaml"
    path.write_text(
        f"state: {{path: {directory / 'state.db'}}}\n"
        'metrics: {listen: "127.0.0.1:0"}\n'
        "accounts:\n"
        + accounts
        + ("" if pairs else "  unused: {host: 127.0.0.1, username: nobody, password: {env: MAILMIRROR_UNUSED}}\n")
        + "pairs:\n"
        + (pairs or "  p:\n    source: a\n    destination: unused\n")
    )
    return path


def run_cli(config: Path, evidence: Evidence, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250", "PYTHONPATH": str(ROOT / "daemon")}
    done = subprocess.run(
        [sys.executable, "-m", "mailmirror", "-v", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    evidence.texts += [done.stdout, done.stderr]
    return done


def open_session(config: Path, account: str = "a") -> Session:
    loaded = load_config(config)
    return Session.open(account, loaded.accounts[account])


# ----------------------------------------------------------------------------------------------- OAuth2


@pytest.mark.parametrize("algorithm", ["HS256", "RS256"])
@pytest.mark.parametrize("auth", ["xoauth2", "oauthbearer", "auto"])
def test_oauth2_login_with_tokens_from_the_token_endpoint(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path, algorithm: str, auth: str
) -> None:
    issuer.algorithm = algorithm
    config = write_config(workdir, oauth2_account_yaml("a", auth_server, user, issuer, workdir, auth=auth))
    with open_session(config) as first, open_session(config) as second:
        assert first.mechanism == {"xoauth2": "XOAUTH2", "oauthbearer": "OAUTHBEARER", "auto": "OAUTHBEARER"}[auth]
        assert first.list_folders() and second.list_folders()
    assert issuer.token_requests == 1  # the second connection used the cached token


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "expired"])
def test_ready_token_from_oauth2_token(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path, evidence: Evidence, valid: bool
) -> None:
    """A token printed by an outside command (the way before oauth2:) still works; refused, it is named."""
    issuer.exp_offset = 0 if valid else -3600 - 60
    (workdir / "a.token").write_text(issuer.access_token(user.username))
    account = (
        f"  a:\n    host: 127.0.0.1\n    port: {auth_server.port}\n    tls: starttls\n"
        f"    tls_ca: {auth_server.ca_path}\n"
        f"    username: {user.username}\n    oauth2_token: {{command: [cat, {workdir / 'a.token'}]}}\n"
    )
    done = run_cli(write_config(workdir, account), evidence, "check", "a")
    if valid:
        assert done.returncode == 0 and "ok (OAUTHBEARER)" in done.stdout, done.stderr
    else:
        assert done.returncode == 77
        assert "rejected the access token from oauth2_token as expired or invalid" in " ".join(done.stderr.split())


def test_access_token_refreshed_before_it_expires(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path
) -> None:
    issuer.lifetime = 600
    config = write_config(workdir, oauth2_account_yaml("a", auth_server, user, issuer, workdir))
    client = load_config(config).accounts["a"].oauth2
    assert client is not None
    now = [1000.0]
    cache = oauth2.TokenCache(clock=lambda: now[0])
    first = cache.access_token(client)
    now[0] += 600 * (1 - oauth2.REFRESH_AHEAD_SHARE) - 1
    assert cache.access_token(client) == first and issuer.token_requests == 1
    now[0] += 2  # inside the last quarter of its lifetime: refreshed, though still valid
    second = cache.access_token(client)
    assert second != first and issuer.token_requests == 2
    oauth2.TOKENS = cache
    try:
        with open_session(config) as session:
            assert session.mechanism == "OAUTHBEARER"
    finally:
        oauth2.TOKENS = oauth2.TokenCache()


def test_refused_token_is_replaced_once(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path
) -> None:
    """A token the server refuses though its expires_in said it was fine (revoked, or expired early):
    one refresh and a second try on the same connection."""
    config = write_config(workdir, oauth2_account_yaml("a", auth_server, user, issuer, workdir))
    issuer.bad_signature = True
    oauth2.TOKENS.access_token(load_config(config).accounts["a"].oauth2)  # type: ignore[arg-type]
    issuer.bad_signature = False
    with open_session(config) as session:
        assert session.list_folders()
    assert issuer.token_requests == 2


def test_token_refused_even_after_refresh_is_named(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path, evidence: Evidence
) -> None:
    issuer.exp_offset = -3600 - 60  # exp in the past, expires_in says an hour
    config = write_config(workdir, oauth2_account_yaml("a", auth_server, user, issuer, workdir))
    done = run_cli(config, evidence, "check", "a")
    assert done.returncode == 77, done.stderr
    assert f"account 'a' (127.0.0.1:{auth_server.port}): login as '{user.username}' with OAUTHBEARER refused" in (
        done.stderr
    )
    assert "rejected even a freshly issued access token as expired or invalid" in done.stderr
    assert '"status": "invalid_token"' in done.stderr or '"status": "401"' in done.stderr
    assert issuer.token_requests == 2


def test_mailbox_refused_with_a_valid_token_is_named(
    auth_server: DovecotServer, issuer: Issuer, workdir: Path, evidence: Evidence
) -> None:
    """The token checks out, but the server has no such mailbox: not a token problem, and it says so."""
    ghost = LabUser("ghost" + os.urandom(4).hex(), "unused")
    config = write_config(workdir, oauth2_account_yaml("a", auth_server, ghost, issuer, workdir))
    done = run_cli(config, evidence, "check", "a")
    assert done.returncode == 77, done.stderr
    assert (
        f"login as '{ghost.username}' with OAUTHBEARER: the server refused the mailbox login (the token was not "
        "the problem)"
    ) in " ".join(done.stderr.split())
    assert issuer.token_requests == 1


def test_rotated_refresh_token_is_stored_and_used(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path
) -> None:
    issuer.rotate = True
    config = write_config(workdir, oauth2_account_yaml("a", auth_server, user, issuer, workdir))
    with open_session(config):
        pass
    token_file = workdir / "oauth2" / "a.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    # The configured refresh token was revoked by the rotation: a new process must use the stored one.
    oauth2.TOKENS.clear()
    with open_session(config) as session:
        assert session.list_folders()
    assert issuer.token_requests == 2
    assert len(issuer.revoked) == 2  # both used refresh tokens were rotated away


def test_revoked_refresh_token_says_to_authorize_again(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path, evidence: Evidence
) -> None:
    config = write_config(workdir, oauth2_account_yaml("a", auth_server, user, issuer, workdir))
    issuer.revoke_all()
    done = run_cli(config, evidence, "check", "a")
    assert done.returncode == 77, done.stderr
    assert (
        f"account 'a': OAuth2 token endpoint {issuer.token_url} refused the refresh token (invalid_grant: "
        "refresh token revoked or unknown). The refresh token was revoked or expired: run `mailmirror oauth2 "
        "authorize a`" in done.stderr
    )


def test_wrong_client_secret_is_named(auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path) -> None:
    config = write_config(workdir, oauth2_account_yaml("a", auth_server, user, issuer, workdir))
    (workdir / "a.client_secret").write_text("not-the-secret\n")
    with pytest.raises(AuthenticationFailure, match=r"refused the refresh token \(invalid_client: .*client_secret"):
        open_session(config)


@pytest.mark.parametrize("problem", ["unreachable", "slow", "http 503", "not json"])
def test_token_endpoint_trouble_exits_69(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path, evidence: Evidence, problem: str
) -> None:
    accounts = oauth2_account_yaml("a", auth_server, user, issuer, workdir)
    if problem == "unreachable":
        issuer.stop()  # nothing listens there any more
    elif problem == "slow":
        issuer.delay = 3  # the account's oauth2.timeout is 2s
    elif problem == "http 503":
        issuer.fail_status = 503
    else:
        issuer.fail_status = 200
    done = run_cli(write_config(workdir, accounts), evidence, "check", "a")
    assert done.returncode == 69, done.stderr
    expected = {
        "unreachable": "cannot be reached (Connection refused) while refreshing the access token",
        "slow": "did not answer within 2s while refreshing the access token",
        "http 503": "answered HTTP 503 Service Unavailable while refreshing the access token",
        "not json": "gave an unusable answer (Token endpoint response is not a JSON object (HTTP 200).) while",
    }[problem]
    assert f"account 'a': OAuth2 token endpoint {issuer.token_url} {expected}" in done.stderr


def test_device_authorization_stores_the_first_refresh_token(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path, evidence: Evidence
) -> None:
    accounts = oauth2_account_yaml("a", auth_server, user, issuer, workdir).replace(
        f"      refresh_token: {{file: {workdir / 'a.refresh_token'}}}\n", ""
    )
    config = write_config(workdir, accounts)
    issuer.device_user = user.username
    issuer.device_pending_polls = 2
    done = run_cli(config, evidence, "check", "a")
    assert done.returncode == 77 and "no OAuth2 refresh token yet: run `mailmirror oauth2 authorize a`" in done.stderr
    done = run_cli(config, evidence, "oauth2", "authorize", "a")
    assert done.returncode == 0, done.stderr
    assert f"open {issuer.url}/verify" in done.stdout and "enter the code WDJB-MJHT" in done.stdout
    assert "Authorized: refresh token stored in" in done.stdout and "with OAUTHBEARER" in done.stdout
    assert issuer.device_polls == 3
    assert stat.S_IMODE((workdir / "oauth2" / "a.json").stat().st_mode) == 0o600
    done = run_cli(config, evidence, "check", "a")
    assert done.returncode == 0, done.stderr
    assert "ok (OAUTHBEARER)" in done.stdout


def test_device_authorization_denied(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path, evidence: Evidence
) -> None:
    config = write_config(workdir, oauth2_account_yaml("a", auth_server, user, issuer, workdir))
    issuer.device_outcome = "deny"
    done = run_cli(config, evidence, "oauth2", "authorize", "a")
    assert done.returncode == 77
    assert "account 'a': the authorization was denied at the provider's page" in done.stderr


def test_device_polling_slows_down_and_gives_up_when_the_code_expires(
    auth_server: DovecotServer, user: LabUser, issuer: Issuer, workdir: Path
) -> None:
    config = write_config(workdir, oauth2_account_yaml("a", auth_server, user, issuer, workdir))
    client = load_config(config).accounts["a"].oauth2
    assert client is not None
    issuer.device_user = user.username
    issuer.device_slow_down_polls, issuer.device_pending_polls = 1, 2
    waits: list[float] = []
    grant = oauth2.start_device_authorization(client)
    refresh_token, path = oauth2.poll_device_authorization(client, grant, sleep=waits.append)
    assert waits == [0.1, 5.1, 5.1]  # RFC 8628 §3.5: slow_down adds 5 seconds to the interval
    assert path == workdir / "oauth2" / "a.json" and refresh_token in path.read_text()
    now = [0.0]

    def tick(seconds: float) -> None:
        now[0] += seconds

    issuer.device_pending_polls = 10**6  # nobody approves
    issuer.device_interval = 10  # six polls within the code's 60 s
    grant = oauth2.start_device_authorization(client)
    with pytest.raises(AuthenticationFailure, match="the device code expired before it was approved"):
        oauth2.poll_device_authorization(client, grant, sleep=tick, clock=lambda: now[0])


def test_refresh_during_a_long_pass_loses_and_doubles_nothing(
    auth_server: DovecotServer,
    user: LabUser,
    issuer: Issuer,
    workdir: Path,
    dest_server: DovecotServer,
    evidence: Evidence,
) -> None:
    """Tokens live 2 s; the pass is slowed to several seconds and its source connections are cut in the
    middle (doveadm kick): the workers log in again with tokens refreshed meanwhile."""
    issuer.lifetime = 2
    folders = ["INBOX", "A", "B", "C"]
    client = auth_server.connect(user)
    for folder in folders:
        if folder != "INBOX":
            client.create_folder(folder)
        for index in range(6):
            client.append(folder, simple_message(index, tag=folder))
    client.logout()
    destination = dest_server.add_user()
    evidence.secrets.add(destination.password)
    accounts = oauth2_account_yaml("src", auth_server, user, issuer, workdir) + account_yaml(
        "dst", dest_server, destination, workdir
    )
    accounts = accounts.replace("      timeout: 2s\n", "      timeout: 2s\n    max_messages_per_second: 4\n", 1)
    pairs = "  p:\n    source: src\n    destination: dst\n    transfer: {workers: 2}\n"
    config = write_config(workdir, accounts, pairs)
    stop = threading.Event()

    def kick_when_tokens_expired() -> None:
        for _ in range(2):
            if stop.wait(2.5):
                return
            subprocess.run(
                ["doveadm", "-c", str(auth_server.config_path), "kick", user.username],
                capture_output=True,
                check=False,
            )

    kicker = threading.Thread(target=kick_when_tokens_expired)
    kicker.start()
    try:
        first = run_cli(config, evidence, "sync", "--no-progress")
    finally:
        stop.set()
        kicker.join()
    during_first_pass = issuer.token_requests
    second = run_cli(config, evidence, "sync", "--no-progress")  # whatever the cut left for later
    assert second.returncode == 0, first.stderr + second.stderr
    assert during_first_pass >= 2, "no token was refreshed during the pass"
    check = dest_server.connect(destination)
    try:
        for folder in folders:
            check.select_folder(folder, readonly=True)
            bodies = [d[b"BODY[]"] for d in check.fetch(check.search(), ["BODY.PEEK[]"]).values()]
            assert sorted(bodies) == sorted(simple_message(i, tag=folder) for i in range(6)), folder
    finally:
        check.logout()


def test_daemon_with_oauth2_pairs_serves_metrics(
    auth_server: DovecotServer,
    user: LabUser,
    issuer: Issuer,
    workdir: Path,
    dest_server: DovecotServer,
    evidence: Evidence,
    start_daemon: Callable[[Path], RunningDaemon],
) -> None:
    """One pair logs in with OAuth2, one with a revoked refresh token: the log and /metrics go to the scan."""
    issuer.rotate = True
    destination = dest_server.add_user()
    evidence.secrets.add(destination.password)
    other = auth_server.add_user()
    evidence.secrets.add(other.password)
    client = auth_server.connect(user)
    client.append("INBOX", simple_message(1, tag="daemon"))
    client.logout()
    accounts = (
        oauth2_account_yaml("src", auth_server, user, issuer, workdir)
        + oauth2_account_yaml("revoked", auth_server, other, issuer, workdir)
        + account_yaml("dst", dest_server, destination, workdir)
    )
    issuer.revoked.add((workdir / "revoked.refresh_token").read_text().strip())
    pairs = (
        "  good:\n    source: src\n    destination: dst\n    schedule: {every: 1h}\n"
        "  failing:\n    source: revoked\n    destination: dst\n    schedule: {every: 1h}\n"
    )
    daemon = start_daemon(write_config(workdir, accounts, pairs))
    try:
        daemon.wait_for_log("good: pass ok")
        daemon.wait_for_log("failing: pass failed")
        status, metrics = daemon.get("/metrics")
        assert status == 200 and 'mailmirror_authentication_failures_total{account="revoked"} 1' in metrics
        evidence.texts.append(metrics)
    finally:
        daemon.stop()
        evidence.texts.append(daemon.text())
    assert "invalid_grant" in daemon.text()


# ------------------------------------------------------------------------------------------ admin login


def admin_yaml(server: DovecotServer, target: str, admin: LabUser, directory: Path, extra: str = "") -> str:
    (directory / "admin.password").write_text(admin.password + "\n")
    return (
        f"  a:\n    host: 127.0.0.1\n    port: {server.port}\n    tls: starttls\n    tls_ca: {server.ca_path}\n"
        f"    username: {target}\n    authuser: {admin.username}\n"
        f"    password: {{file: {directory / 'admin.password'}}}\n" + extra
    )


@pytest.mark.parametrize(
    ("extra", "mechanism"),
    [
        ("", "PLAIN"),
        ("    authuser_separator: '*'\n", "PLAIN"),
        ("    authuser_separator: '*'\n    auth: login\n", "LOGIN"),
    ],
    ids=["sasl-authzid", "separator-auto", "separator-login"],
)
def test_admin_logs_in_on_behalf_of_a_user(
    auth_server: DovecotServer, admin: LabUser, user: LabUser, workdir: Path, extra: str, mechanism: str
) -> None:
    client = auth_server.connect(user)
    client.append("INBOX", simple_message(1, tag="mine"))
    client.logout()
    config = write_config(workdir, admin_yaml(auth_server, user.username, admin, workdir, extra))
    with open_session(config) as session:
        assert session.mechanism == mechanism
        assert session.status("INBOX").messages == 1  # the user's mailbox, not the admin's


@pytest.mark.parametrize("extra", ["", "    authuser_separator: '*'\n    auth: login\n"], ids=["sasl", "separator"])
def test_admin_for_a_missing_user_is_named(
    auth_server: DovecotServer, admin: LabUser, workdir: Path, evidence: Evidence, extra: str
) -> None:
    config = write_config(workdir, admin_yaml(auth_server, "nosuchuser", admin, workdir, extra))
    done = run_cli(config, evidence, "check", "a")
    assert done.returncode == 77, done.stderr
    mechanism = "PLAIN" if not extra else "LOGIN"
    assert (
        f"account 'a' (127.0.0.1:{auth_server.port}): admin '{admin.username}' may not log in as 'nosuchuser' "
        f"({mechanism}): the server answered [AUTHORIZATIONFAILED]"
    ) in done.stderr
    assert "Check that user 'nosuchuser' exists on this server" in " ".join(done.stderr.split())


# ----------------------------------------------------------------------------------------- SCRAM, auto


@pytest.mark.parametrize("auth", ["auto", "scram-sha-256", "scram-sha-1", "plain", "login"])
def test_password_mechanisms(auth_server: DovecotServer, user: LabUser, workdir: Path, auth: str) -> None:
    (workdir / "pw").write_text(user.password)
    account = (
        f"  a:\n    host: 127.0.0.1\n    port: {auth_server.port}\n    tls: starttls\n"
        f"    tls_ca: {auth_server.ca_path}\n"
        f"    username: {user.username}\n    password: {{file: {workdir / 'pw'}}}\n    auth: {auth}\n"
    )
    with open_session(write_config(workdir, account)) as session:
        assert session.mechanism == ("SCRAM-SHA-256" if auth == "auto" else auth.upper())


def test_auto_on_a_server_without_scram_uses_plain(
    source_server: DovecotServer, src_user: LabUser, workdir: Path, evidence: Evidence
) -> None:
    evidence.secrets.add(src_user.password)
    config = write_config(workdir, account_yaml("a", source_server, src_user, workdir))
    done = run_cli(config, evidence, "check", "a")
    assert done.returncode == 0, done.stderr
    assert "ok (PLAIN)" in done.stdout


def test_wrong_password_names_mechanism_and_answer(
    auth_server: DovecotServer, user: LabUser, workdir: Path, evidence: Evidence
) -> None:
    (workdir / "pw").write_text("wrong-password")
    account = (
        f"  a:\n    host: 127.0.0.1\n    port: {auth_server.port}\n    tls: starttls\n"
        f"    tls_ca: {auth_server.ca_path}\n"
        f"    username: {user.username}\n    password: {{file: {workdir / 'pw'}}}\n"
    )
    done = run_cli(write_config(workdir, account), evidence, "check", "a")
    assert done.returncode == 77
    assert (
        f"account 'a' (127.0.0.1:{auth_server.port}): login as '{user.username}' with PLAIN refused: "
        "[AUTHENTICATIONFAILED] Authentication failed. (after SCRAM-SHA-256 was refused as well)"
    ) in " ".join(done.stderr.split())


def test_auto_falls_back_from_scram_for_a_hashed_password(
    auth_server: DovecotServer, workdir: Path, evidence: Evidence
) -> None:
    """Dovecot offers SCRAM to every user, but cannot check it against a crypt hash: auto then uses PLAIN."""
    password = "hashed-" + os.urandom(6).hex()
    evidence.secrets.add(password)
    hashed = subprocess.run(
        ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password], capture_output=True, text=True, check=True
    ).stdout.strip()
    name = "hashed" + os.urandom(4).hex()
    user_file = auth_server.users_dir / name
    user_file.write_text(f"{name}:{hashed}::::::\n")
    auth_server._secure(user_file)
    (workdir / "pw").write_text(password)
    account = (
        f"  a:\n    host: 127.0.0.1\n    port: {auth_server.port}\n    tls: starttls\n"
        f"    tls_ca: {auth_server.ca_path}\n"
        f"    username: {name}\n    password: {{file: {workdir / 'pw'}}}\n"
    )
    with open_session(write_config(workdir, account)) as session:
        assert session.mechanism == "PLAIN"


# ---------------------------------------------------------------------------------------- secret scan


def test_zz_no_secret_in_any_log_metric_state_or_token_file(evidence: Evidence) -> None:
    """Runs last in this module: every log line, CLI output, state DB and token file these tests wrote."""
    assert evidence.secrets and evidence.texts and evidence.directories
    haystacks: list[tuple[str, bytes]] = [("log/output", text.encode()) for text in evidence.texts]
    for directory in evidence.directories:
        for path in directory.rglob("*"):
            if (
                not path.is_file()
                or path.suffix in (".password", ".client_secret", ".refresh_token", ".token")
                or path.name == "pw"
            ):
                continue  # the secret files the tests handed to mailmirror
            haystacks.append((str(path), path.read_bytes()))
            if path.suffix == ".db":
                with contextlib.closing(sqlite3.connect(path)) as db:
                    dump = "\n".join(db.iterdump())
                haystacks.append((f"{path} (dump)", dump.encode()))
    stored_refresh_tokens = {
        path: path.read_text() for directory in evidence.directories for path in directory.glob("oauth2/*.json")
    }
    for where, data in haystacks:
        for secret in evidence.secrets:
            if secret.encode() in data and Path(where) in stored_refresh_tokens and secret.startswith("rt-"):
                continue  # the token file's purpose: the current refresh token, mode 0600
            leaked = secret.encode() in data  # (not in the assert: pytest would print the secret)
            assert not leaked, f"a secret ({secret[:6]}...) appears in {where}"
