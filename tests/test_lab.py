"""The lab itself: private Dovecot servers (mailmirror.lab.dovecot) and the sample corpus (mailmirror.lab.corpus).

Facts about Dovecot 2.3.19 pinned down here (the rest of the suite relies on them):

* Messages APPENDed with bare LF line endings are stored as given but FETCH BODY[]/BINARY[] return
  them with CRLF (RFC822.SIZE counts the CRLF form).  Mixed endings are normalised the same way.
  CRLF messages come back byte for byte.
* INTERNALDATE keeps the instant to the second, not the timezone offset (returned in server time).
* ``\\Recent`` shows up in FLAGS for freshly appended messages; it is not ours to compare.
* A message bigger than the user's quota_max_mail_size is refused with
  ``NO [LIMIT] Mail size is larger than the maximum size allowed by server configuration``;
  APPENDLIMIT is not implemented (not advertised, not a STATUS item).
* A failed LOGIN answers ``NO [AUTHENTICATIONFAILED] Authentication failed.`` after at most ~0.5 s
  (auth_failure_delay = 0; Dovecot flushes failures on a 500 ms timer).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from mailmirror.lab import corpus
from mailmirror.lab.dovecot import (
    DOVECOT_DEFAULT_CAPABILITIES,
    SPECIAL_USE_MAILBOXES,
    DovecotServer,
    LabCA,
    LabError,
    LabUser,
    SeedMessage,
    seed,
    seed_mailbox,
    server_folder_name,
)

MakeServer = Callable[..., DovecotServer]

LIMIT_TEXT = "[LIMIT] Mail size is larger than the maximum size allowed by server configuration"


def caps(client: IMAPClient) -> set[str]:
    return {c.decode().upper() for c in client.capabilities()}


def strip_recent(flags: tuple[bytes, ...]) -> set[str]:
    return {f.decode() for f in flags} - {"\\Recent"}


# ----------------------------------------------------------------------------------------- logins


@pytest.mark.parametrize("tls", ["none", "starttls", "implicit"])
def test_login_each_transport(source_server: DovecotServer, src_user: LabUser, tls: str) -> None:
    client = source_server.connect(src_user, tls=tls)
    try:
        sock = client.socket()
        assert isinstance(sock, ssl.SSLSocket) == (tls != "none")
        if tls != "none":
            assert isinstance(sock, ssl.SSLSocket)
            cert = sock.getpeercert()
            assert cert is not None
            assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
            assert ("DNS", "localhost") in cert["subjectAltName"]
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    finally:
        client.logout()


def test_starttls_advertised_and_auth_plain_login(source_server: DovecotServer) -> None:
    client = IMAPClient(source_server.host, source_server.port, ssl=False, timeout=10)
    try:
        assert {"STARTTLS", "AUTH=PLAIN", "AUTH=LOGIN"} <= caps(client)
        assert "LOGINDISABLED" not in caps(client)
    finally:
        client.shutdown()


def test_certificate_also_valid_for_localhost(source_server: DovecotServer, src_user: LabUser) -> None:
    client = IMAPClient("localhost", source_server.tls_port, ssl=True, ssl_context=source_server.ssl_context(),
                        timeout=10)  # fmt: skip
    try:
        client.login(src_user.username, src_user.password)
    finally:
        client.logout()


def test_tls_without_the_lab_ca_fails_verification(source_server: DovecotServer) -> None:
    system_trust = ssl.create_default_context()  # system CAs only: must not accept the lab certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(source_server.host, source_server.tls_port, ssl=True, ssl_context=system_trust, timeout=10)
    client = IMAPClient(source_server.host, source_server.port, ssl=False, timeout=10)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(ssl.create_default_context())
    finally:
        with contextlib.suppress(Exception):  # the TLS handshake failed half way: the link is dead
            client.shutdown()


def test_tls_with_a_foreign_ca_fails(source_server: DovecotServer, tmp_path: Path) -> None:
    other = LabCA(tmp_path / "other-ca")
    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(source_server.host, source_server.tls_port, ssl=True, ssl_context=other.ssl_context(),
                   timeout=10)  # fmt: skip


def test_wrong_password_is_refused_quickly(source_server: DovecotServer, src_user: LabUser) -> None:
    client = IMAPClient(source_server.host, source_server.port, ssl=False, timeout=10)
    try:
        started = time.monotonic()
        with pytest.raises(LoginError, match=r"\[AUTHENTICATIONFAILED\] Authentication failed\."):
            client.login(src_user.username, src_user.password + "x")
        assert time.monotonic() - started < 1.5
    finally:
        client.shutdown()


def test_unknown_user_is_an_authentication_failure(source_server: DovecotServer) -> None:
    # Not "[UNAVAILABLE]": the missing per-user passwd-file falls through to the aggregated one.
    client = IMAPClient(source_server.host, source_server.port, ssl=False, timeout=10)
    try:
        with pytest.raises(LoginError, match=r"\[AUTHENTICATIONFAILED\] Authentication failed\."):
            client.login("nobody-here", "whatever")
    finally:
        client.shutdown()


def test_users_added_while_running_log_in_at_once(source_server: DovecotServer) -> None:
    # Several additions within the same second: Dovecot re-reads the passwd-file on size change too.
    users = [source_server.add_user() for _ in range(3)]
    named = source_server.add_user("Mixed.Case-tag@example.org", 'pa ss!"w\\rd{PLAIN}')
    for user in [*users, named]:
        client = source_server.connect(user)
        client.logout()
    with pytest.raises(ValueError, match="already exists"):
        source_server.add_user(named.username)


# ---------------------------------------------------------------------------------- capabilities


def test_default_capabilities_are_the_documented_list(src_client: IMAPClient) -> None:
    # mailmirror.lab.dovecot computes drop_capabilities from this list: if Dovecot changes, update the list.
    assert caps(src_client) == {c.upper() for c in DOVECOT_DEFAULT_CAPABILITIES}
    assert not any(c.startswith("APPENDLIMIT") for c in caps(src_client))


def test_dropped_capabilities_are_not_advertised_before_or_after_login(make_server: MakeServer) -> None:
    server = make_server(drop_capabilities=("CONDSTORE", "QRESYNC", "UIDPLUS"))
    user = server.add_user()
    client = IMAPClient(server.host, server.port, ssl=False, timeout=10)
    try:
        assert not {"CONDSTORE", "QRESYNC", "UIDPLUS"} & caps(client)  # pre-login
        client.login(user.username, user.password)
        after = caps(client)
        assert not {"CONDSTORE", "QRESYNC", "UIDPLUS"} & after
        assert {"IDLE", "NAMESPACE", "MOVE", "LIST-STATUS", "SPECIAL-USE", "MULTIAPPEND"} <= after
        assert after == {c.upper() for c in server.capabilities}
        # Seeding copes without APPENDUID (falls back to SEARCH); note Dovecot still sends it anyway.
        uids = seed(client, "INBOX", [SeedMessage(b"Subject: a\r\n\r\nx\r\n"), SeedMessage(b"Subject: b\r\n\r\ny\r\n")])
        assert uids == [1, 2]
    finally:
        client.logout()


def test_unknown_capability_to_drop_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CONDSTOER"):
        DovecotServer(tmp_path, drop_capabilities=["CONDSTOER"])


# ------------------------------------------------------------------------------- namespace/layout


def test_special_use_mailboxes_exist_only_once_created(src_client: IMAPClient) -> None:
    assert [name for _, _, name in src_client.list_folders()] == ["INBOX"]
    for box in SPECIAL_USE_MAILBOXES:
        src_client.create_folder(box)
    listed = {name: {f.decode() for f in flags} for flags, _, name in src_client.list_folders()}
    for box, use in SPECIAL_USE_MAILBOXES.items():
        assert use in listed[box], listed
    assert src_client.namespace().personal == (("", "/"),)


def test_cyrus_style_layout(make_server: MakeServer) -> None:
    server = make_server(separator=".", prefix="INBOX.")
    user = server.add_user()
    client = server.connect(user)
    try:
        assert client.namespace().personal == (("INBOX.", "."),)
        client.create_folder("INBOX.Sent")
        client.create_folder("INBOX.Reçus.Été")
        listed = {name: {f.decode() for f in flags} for flags, _, name in client.list_folders()}
        assert {"INBOX", "INBOX.Sent", "INBOX.Reçus.Été"} <= set(listed)
        assert "\\Sent" in listed["INBOX.Sent"]
        assert all(sep == b"." for _, sep, _ in client.list_folders())
    finally:
        client.logout()
    assert server.folder_name("Archive/2024/Q1") == "INBOX.Archive.2024.Q1"
    assert server_folder_name("INBOX", ".", "INBOX.") == "INBOX"


def test_folder_names_with_dots_work_on_the_default_layout(src_client: IMAPClient) -> None:
    for name in ("v1.2 notes", "new", "cur", "a/tmp"):
        src_client.create_folder(name)
    names = {name for _, _, name in src_client.list_folders()}
    assert {"v1.2 notes", "new", "cur", "a/tmp"} <= names


# ------------------------------------------------------------------------------------------ seeding


def test_seed_keeps_bytes_flags_and_internaldate(src_client: IMAPClient) -> None:
    plus5 = timezone(timedelta(hours=5))
    messages = [
        SeedMessage(b"Subject: crlf\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n", ("\\Seen", "\\Flagged"),
                    datetime(2021, 5, 6, 7, 8, 9, tzinfo=plus5)),
        SeedMessage("Subject: Été\r\n\r\n8bit \u00e9\r\n".encode(), ("$Forwarded", "\\Answered"),
                    datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC)),
        SeedMessage(b"Subject: bare lf\n\nline 1\nline 2\n", (), datetime(2020, 2, 29, 12, 0, 0, tzinfo=UTC)),
    ]  # fmt: skip
    uids = seed(src_client, "Deep/Folder Name", messages)
    assert len(uids) == 3 and uids == sorted(uids)
    assert "Deep/Folder Name" in {name for _, _, name in src_client.list_sub_folders()}
    src_client.select_folder("Deep/Folder Name", readonly=True)
    fetched = src_client.fetch(uids, ["BODY.PEEK[]", "FLAGS", "INTERNALDATE", "RFC822.SIZE"])
    for uid, message in zip(uids, messages, strict=True):
        data = fetched[uid]
        assert strip_recent(data[b"FLAGS"]) == set(message.flags)
        got_date = data[b"INTERNALDATE"]
        assert got_date.tzinfo is not None
        assert got_date == message.internaldate  # same instant (the offset itself is not kept)
        expected = message.raw if b"\r\n" in message.raw else message.raw.replace(b"\n", b"\r\n")
        # Observed: the bare-LF message comes back with CRLF line endings; the others byte for byte.
        assert data[b"BODY[]"] == expected
        assert data[b"RFC822.SIZE"] == len(expected)


def test_seed_into_existing_folder_appends(src_client: IMAPClient) -> None:
    first = seed(src_client, "INBOX", [SeedMessage(b"Subject: 1\r\n\r\n1\r\n")])
    second = seed(src_client, "INBOX", [SeedMessage(b"Subject: 2\r\n\r\n2\r\n")])
    assert second[0] > first[0]
    with pytest.raises(ValueError, match="timezone-aware"):
        seed(src_client, "INBOX", [SeedMessage(b"Subject: 3\r\n\r\n3\r\n", (), datetime(2020, 1, 1))])


def test_max_mail_size_refuses_bigger_append(source_server: DovecotServer) -> None:
    user = source_server.add_user(max_mail_size=10_000)
    client = source_server.connect(user)
    try:
        assert not any(c.startswith("APPENDLIMIT") for c in caps(client))  # Dovecot 2.3: no RFC 7889
        client.append("INBOX", b"Subject: small\r\n\r\n" + b"x" * 9_000 + b"\r\n")
        with pytest.raises(IMAPClientError) as refused:
            client.append("INBOX", b"Subject: big\r\n\r\n" + b"y" * 20_000 + b"\r\n")
        # imaplib wraps the tagged NO: "append failed: [LIMIT] Mail size is larger than ... (0.001 + ...)"
        assert LIMIT_TEXT in str(refused.value)
        assert client.select_folder("INBOX")[b"EXISTS"] == 1
    finally:
        client.logout()
    # other users are unlimited (quota plugin loaded with no limit)
    other = source_server.add_user()
    client = source_server.connect(other)
    try:
        client.append("INBOX", b"Subject: big\r\n\r\n" + b"y" * 200_000 + b"\r\n")
    finally:
        client.logout()


def test_sample_mailbox_seeds_with_all_special_cases(src_client: IMAPClient) -> None:
    mailbox = corpus.sample_mailbox(seed=7, messages=120, big_message_bytes=2 * 1024 * 1024)
    uids = seed_mailbox(src_client, mailbox)
    assert set(uids) == set(corpus.SAMPLE_FOLDERS)
    names = {name for _, _, name in src_client.list_folders()}
    assert set(corpus.SAMPLE_FOLDERS) <= names
    for folder, messages in mailbox.items():
        info = src_client.select_folder(folder, readonly=True)
        assert info[b"EXISTS"] == len(messages) == len(uids[folder]), folder
    src_client.select_folder("INBOX", readonly=True)
    for case in ("bare-lf", "no-message-id", "duplicate-id-1", "duplicate-id-2"):
        assert len(src_client.search(["HEADER", "X-Corpus-Case", case])) == 1, case
    src_client.select_folder("Archive/2024", readonly=True)
    [big] = src_client.search(["HEADER", "X-Corpus-Case", "big"])
    size = src_client.fetch([big], ["RFC822.SIZE"])[big][b"RFC822.SIZE"]
    assert abs(size - 2 * 1024 * 1024) < 20_000


def test_sample_mailbox_on_cyrus_layout(make_server: MakeServer) -> None:
    server = make_server(separator=".", prefix="INBOX.")
    client = server.connect(server.add_user())
    try:
        mailbox = corpus.sample_mailbox(seed=3, messages=40, big_message_bytes=0)
        seed_mailbox(client, mailbox)
        names = {name for _, _, name in client.list_folders()}
        assert {server.folder_name(f) for f in corpus.SAMPLE_FOLDERS} <= names
        assert "INBOX.Reçus.Été" in names and "INBOX.Projects.Client Work" in names
    finally:
        client.logout()


# -------------------------------------------------------------------------------------- lifecycle


def _instance_processes(server: DovecotServer) -> list[int]:
    """Independent of DovecotServer.pids(): scan /proc for the config path or the process title."""
    conf = str(server.config_path).encode()
    title = f"dovecot-{server.instance_name}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if conf in cmdline or cmdline.startswith(title):
                found.append(int(entry.name))
    return found


def _port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_restart_keeps_mail_ports_and_users_and_stop_leaks_nothing(dovecot: None, lab_dir: Path, lab_ca: LabCA) -> None:
    server = DovecotServer(lab_dir / "lifecycle", "lifecycle", ca=lab_ca)
    try:
        server.start()
        assert server.start_seconds is not None and server.start_seconds < 3
        ports = (server.port, server.tls_port)
        user = server.add_user()
        client = server.connect(user)
        seed(client, "Kept", [SeedMessage(b"Subject: keep me\r\n\r\nx\r\n", ("\\Seen",))])
        server.restart()  # the open client gets disconnected
        assert (server.port, server.tls_port) == ports
        client = server.connect(user, tls="implicit")
        assert client.select_folder("Kept", readonly=True)[b"EXISTS"] == 1
        late = server.add_user()
        server.connect(late, tls="starttls").logout()
        assert _instance_processes(server)  # sanity check of the detection
        idle = server.connect(user)  # an imap process stays alive behind this client
        idle.select_folder("INBOX")
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3
        assert _instance_processes(server) == []
        assert server.pids() == []
        assert _port_closed(server.port) and _port_closed(server.tls_port)
        server.stop()  # idempotent
        with pytest.raises((OSError, IMAPClientError)):
            idle.noop()
    finally:
        server.stop()
    assert _instance_processes(server) == []


def test_start_failure_reports_the_log(dovecot: None, lab_dir: Path, lab_ca: LabCA) -> None:
    server = DovecotServer(lab_dir / "busy", "busy", ca=lab_ca)
    with server:
        pass
    squatter = socket.create_server(("127.0.0.1", server.port))
    try:
        with pytest.raises(LabError, match="Address already in use") as failed:
            server.start()  # restarts keep their ports, so this cannot move elsewhere
        assert str(server.log_path) in str(failed.value) or "stderr" in str(failed.value)
        assert _instance_processes(server) == []
    finally:
        squatter.close()
        server.stop()
    with server:
        assert server.running


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs Dovecot's mail processes as another user")
def test_unreachable_root_is_a_clear_error(dovecot: None, tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    server = DovecotServer(hidden / "server")
    with pytest.raises(LabError, match=r"cannot reach .* has mode 0700"):
        server.start()
    assert not server.running


def test_many_instances_at_once(dovecot: None, lab_dir: Path, lab_ca: LabCA) -> None:
    servers = [DovecotServer(lab_dir / f"many{i}", f"many{i}", ca=lab_ca) for i in range(4)]
    errors: list[BaseException] = []

    def start(server: DovecotServer) -> None:
        try:
            server.start()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        ports = {p for s in servers for p in (s.port, s.tls_port)}
        assert len(ports) == 2 * len(servers)
        for server in servers:
            user = server.add_user()
            server.connect(user).logout()
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert _instance_processes(server) == []


# ------------------------------------------------------------------------------ corpus (no server)


def test_sample_mailbox_is_deterministic_and_complete() -> None:
    a = corpus.sample_mailbox(seed=5, messages=60, big_message_bytes=300_000)
    b = corpus.sample_mailbox(seed=5, messages=60, big_message_bytes=300_000)
    c = corpus.sample_mailbox(seed=6, messages=60, big_message_bytes=300_000)
    assert corpus.fingerprint(a) == corpus.fingerprint(b) != corpus.fingerprint(c)
    assert list(a) == list(corpus.SAMPLE_FOLDERS)
    assert sum(len(v) for v in a.values()) == 60
    assert a["Empty Folder"] == []
    all_messages = [m for v in a.values() for m in v]
    parsed = [email.message_from_bytes(m.raw, policy=email.policy.compat32) for m in all_messages]
    by_case = {p["X-Corpus-Case"]: (m, p) for m, p in zip(all_messages, parsed, strict=True) if p["X-Corpus-Case"]}
    assert set(by_case) == {"big", "bare-lf", "8bit-header", "no-message-id", "duplicate-id-1", "duplicate-id-2"}
    big = by_case["big"][0]
    assert abs(len(big.raw) - 300_000) < 3_000
    assert sorted(len(m.raw) for m in all_messages)[-2] < 150_000  # only one big message
    assert b"\r" not in by_case["bare-lf"][0].raw
    assert "Été 2023".encode() in by_case["8bit-header"][0].raw.split(b"\r\n\r\n")[0]
    assert by_case["no-message-id"][1]["Message-ID"] is None
    d1, d2 = by_case["duplicate-id-1"], by_case["duplicate-id-2"]
    assert d1[1]["Message-ID"] == d2[1]["Message-ID"] and d1[0].raw != d2[0].raw
    ids = [p["Message-ID"] for p in parsed if p["Message-ID"]]
    assert len(ids) - len(set(ids)) == 1  # only the deliberate pair collides
    flags = [set(m.flags) for m in all_messages]
    assert sum("\\Seen" in f for f in flags) > len(flags) / 2
    assert any("\\Seen" not in f for f in flags)
    assert any("\\Flagged" in f for f in flags) and any("\\Answered" in f for f in flags)
    assert all(m.internaldate is not None and m.internaldate.tzinfo is not None for m in all_messages)
    assert all(m.internaldate is not None and m.internaldate < datetime.now(UTC) for m in all_messages)
    for m in all_messages:
        if m is not by_case["bare-lf"][0]:
            assert b"\n" not in m.raw.replace(b"\r\n", b""), "only the bare-LF case may have bare LF"
        assert max(len(line) for line in m.raw.split(b"\n")) <= 998
    assert any(p.is_multipart() and p.get_content_type() == "multipart/mixed" for p in parsed)
    summary = corpus.describe(a)
    assert summary.startswith("8 folders, 60 messages,") and "Отчёты" in summary


def test_benchmark_corpus_is_lazy_with_the_size_mix() -> None:
    big = corpus.corpus(seed=1, count=2000, folders=("INBOX", "Archive"))
    assert sum(len(f) for f in big.values()) == 2000
    sizes = [s for f in big.values() for s in f.sizes]
    small = sum(s <= 20 * 1024 for s in sizes) / len(sizes)
    medium = sum(50 * 1024 <= s <= 500 * 1024 for s in sizes) / len(sizes)
    huge = sum(s >= 1024 * 1024 for s in sizes) / len(sizes)
    assert 0.65 < small < 0.75 and 0.20 < medium < 0.30 and 0.03 < huge < 0.07
    inbox = big["INBOX"]
    first = inbox[0]
    assert first == inbox[0]  # regenerated identically
    assert abs(len(first.raw) - inbox.sizes[0]) / inbox.sizes[0] < 0.05
    assert "2000 messages" in corpus.describe(big)
    assert isinstance(corpus.generated_message(__import__("random").Random(1), 1, 4096), SeedMessage)
