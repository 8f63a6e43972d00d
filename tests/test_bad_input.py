"""The bad-input catalogue: every input that used to end in a traceback, a hang, a wrong exit code or an
unclear message, with variations of each class. Each case runs the real CLI in a subprocess and checks
the exit code, the key words of the message, that there is no traceback, and that no secret leaks.

Config-only cases need no server. Cases that connect use the session's Dovecot pair (real servers) or,
for servers that misbehave (garbage greeting, silence, a certificate for another name), tiny socket
servers started here. Timeouts in the configs are short (1-2 s): the whole catalogue stays fast.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailmirror.config.config_file import load_config
from mailmirror.engine.mapping import FolderMapping
from mailmirror.engine.outcome import LogProgress
from mailmirror.engine.pair_pass import PairPass
from mailmirror.lab.dovecot import DovecotServer, LabCA, LabUser, SeedMessage, free_port, seed
from mailmirror.state.store import StateStore
from tests.support import ROOT, Mirror, RunningDaemon, require_checkout_readable_by_others, simple_message

SECRET = "S3cr3t-catalogue-9f2c"  # the password of every account in config-only cases
TIMEOUT = "2s"


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input. ``src``/``dst``/``pair``/``top`` change the generated config (a value of None removes
    the key); ``raw`` replaces the whole file; ``args`` is the command line, ``{config}`` the file."""

    id: str
    code: int
    words: tuple[str, ...]
    args: tuple[str, ...] = ("-c", "{config}", "config", "validate")
    server: str = "none"  # none (a closed port), dovecot, or a fake server's behaviour
    src: dict[str, str | None] = field(default_factory=dict)
    dst: dict[str, str | None] = field(default_factory=dict)
    pair: str = ""
    top: str = ""
    raw: str | None = None
    config_path: str | None = None  # instead of the generated file: e.g. "{dir}" (a directory)
    env: dict[str, str] = field(default_factory=dict)
    setup: str | None = None  # a named preparation step, see PREPARE


def config_case(id: str, code: int, *words: str, **kwargs: object) -> Case:
    return Case(id, code, tuple(words), **kwargs)  # type: ignore[arg-type]


def sync_case(id: str, code: int, *words: str, **kwargs: object) -> Case:
    kwargs.setdefault("args", ("sync", "-c", "{config}"))
    return Case(id, code, tuple(words), **kwargs)  # type: ignore[arg-type]


def check_case(id: str, code: int, *words: str, **kwargs: object) -> Case:
    kwargs.setdefault("args", ("check", "-c", "{config}"))
    return Case(id, code, tuple(words), **kwargs)  # type: ignore[arg-type]


CONFIG_CASES = [
    # Durations, sizes and numbers: bounded, never an OverflowError.
    config_case(
        "backoff-overflow", 78, "transfer.backoff", "at most", pair="transfer: {backoff: 999999999999999999999w}"
    ),
    config_case("every-overflow", 78, "schedule.every", "at most", pair="schedule: {every: 2000000000d}"),
    config_case("every-3000000d", 78, "schedule.every", "at most", pair="schedule: {every: 3000000d}"),
    config_case("every-400d", 78, "schedule.every", "at most 366d", pair="schedule: {every: 400d}"),
    config_case(
        "every-huge-seconds", 78, "schedule.every", "at most", pair="schedule: {every: 99999999999999999999999}"
    ),
    config_case("every-zero", 78, "schedule.every", "longer than 0s", pair="schedule: {every: 0s}"),
    config_case("every-negative", 78, "schedule.every", "duration", pair="schedule: {every: -5m}"),
    config_case("backoff-1h", 78, "transfer.backoff", "at most 5m", pair="transfer: {backoff: 1h}"),
    config_case("timeout-2h", 78, "accounts.src.timeout", "at most 1h", src={"timeout": "2h"}),
    config_case("timeout-words", 78, "accounts.src.timeout", "a duration like", src={"timeout": "soon"}),
    config_case("jitter-30d", 78, "schedule.jitter", "at most 1w", pair="schedule: {jitter: 30d}"),
    config_case("max-age-overflow", 78, "messages.max_age", "at most", pair="messages: {max_age: 9999999999w}"),
    config_case("stop-timeout-big", 78, "daemon.stop_timeout", "at most 1h", top="daemon: {stop_timeout: 30d}"),
    config_case("max-size-10TB", 78, "messages.max_size", "at most 4294967295", pair="messages: {max_size: 10TB}"),
    config_case("size-overflow", 78, "transfer.memory", "at most", pair="transfer: {memory: 99999999999999TiB}"),
    config_case("size-unit", 78, "transfer.batch_size", "a size like", pair="transfer: {batch_size: 1PB}"),
    config_case(
        "parallel-yes",
        78,
        "daemon.max_parallel_passes",
        "must be a number",
        "true",
        top="daemon: {max_parallel_passes: yes}",
    ),
    config_case("workers-on", 78, "transfer.workers", "must be a number", pair="transfer: {workers: on}"),
    config_case("port-yes", 78, "accounts.src.port", "must be a number", src={"port": "yes"}),
    config_case("rate-inf", 78, "max_messages_per_second", "finite", src={"max_messages_per_second": ".inf"}),
    config_case("rate-nan", 78, "max_messages_per_second", src={"max_messages_per_second": ".nan"}),
    config_case(
        "connections-huge", 78, "accounts.src.max_connections", "at most", src={"max_connections": "1000000000"}
    ),
    config_case(
        "listen-port-70000",
        78,
        "metrics.listen",
        "port 70000",
        "0 to 65535",
        top='metrics: {listen: "127.0.0.1:70000"}',
    ),
    config_case("listen-no-port", 78, "metrics.listen", "host:port", top='metrics: {listen: "localhost"}'),
    # Cron expressions.
    config_case("cron-feb-31", 78, "schedule.cron", "never fires", pair='schedule: {cron: "0 0 31 2 *"}'),
    config_case("cron-apr-31", 78, "schedule.cron", "never fires", pair='schedule: {cron: "0 3 31 4,6 *"}'),
    config_case("cron-minute-61", 78, "schedule.cron", "minute", pair='schedule: {cron: "61 * * * *"}'),
    config_case("cron-weekday-8", 78, "schedule.cron", "day of week", pair='schedule: {cron: "0 0 * * 8"}'),
    config_case("cron-step-0", 78, "schedule.cron", "step", pair='schedule: {cron: "*/0 * * * *"}'),
    config_case(
        "timezone-long", 78, "schedule.timezone", "unknown time zone", pair=f"schedule: {{timezone: {'x' * 300}}}"
    ),
    config_case("tls-ca-name-too-long", 78, "accounts.src.tls_ca", "too long", src={"tls_ca": "/tmp/" + "y" * 300}),
    config_case("yaml-python-tag", 78, "YAML", raw="accounts: !!python/object/apply:os.system [true]\n"),
    config_case("cron-six-fields", 78, "schedule.cron", "5 fields", pair='schedule: {cron: "0 0 * * * *"}'),
    # YAML.
    config_case("tab-indent", 78, "tab character at line", "spaces", raw="accounts:\n\tsrc:\n\t\thost: x\n"),
    config_case(
        "tab-in-mapping", 78, "tab character at line 3", "spaces", raw="accounts:\n  src:\n\thost: x\npairs: {}\n"
    ),
    config_case("yaml-unclosed", 78, "YAML syntax error", raw="accounts: [unclosed\n"),
    config_case("yaml-empty", 78, "empty", raw=""),
    config_case("yaml-list", 78, "top level must be a mapping", raw="- a\n- b\n"),
    config_case("yaml-not-utf8", 78, "not UTF-8", raw="accounts: {a: \udcff}\n"),
    config_case("yaml-duplicate-key", 78, "duplicate key", top="log: {level: info}\nlog: {level: debug}"),
    config_case("unknown-key", 78, "pairs.test.foldrs", "did you mean", pair="foldrs: {exclude: [Junk]}"),
    # Config file paths.
    config_case("config-missing", 78, "no such file", config_path="{dir}/nope.yaml"),
    config_case("config-directory", 78, "is a directory", config_path="{dir}"),
    config_case("config-fifo", 78, "named pipe", config_path="{dir}/fifo", setup="fifo"),
    config_case("config-device", 78, "device", config_path="/dev/null"),
    sync_case("sync-config-directory", 78, "is a directory", config_path="{dir}"),
    # Secrets in the config file: never echoed.
    config_case("inline-password", 78, "inline secrets are not allowed", src={"password": SECRET}),
    config_case(
        "password-in-env-name", 78, "name of an environment variable", src={"password": f"{{env: '{SECRET}!'}}"}
    ),
    config_case("password-command-string", 78, "list of arguments", src={"password": f"{{command: 'echo {SECRET}'}}"}),
    config_case("password-two-kinds", 78, "exactly one of", src={"password": "{env: A, file: b}"}),
    # TLS settings that can be judged without connecting.
    config_case(
        "tls-ca-empty", 78, "accounts.src.tls_ca", "no usable CA certificate", src={"tls_ca": "{dir}/empty.pem"}
    ),
    config_case(
        "tls-ca-garbage",
        78,
        "accounts.src.tls_ca",
        "no usable CA certificate",
        "PEM",
        src={"tls_ca": "{dir}/garbage.pem"},
    ),
    config_case("tls-ca-missing", 78, "accounts.src.tls_ca", "no such file", src={"tls_ca": "{dir}/none.pem"}),
    config_case("tls-ca-directory", 78, "accounts.src.tls_ca", "not a regular file", src={"tls_ca": "{dir}"}),
    config_case("tls-ca-with-none", 78, "accounts.src.tls_ca", "no effect", src={"tls": "none", "tls_ca": "{lab_ca}"}),
    check_case(
        "check-tls-ca-garbage",
        78,
        "accounts.src.tls_ca",
        "no usable CA certificate",
        src={"tls_ca": "{dir}/garbage.pem"},
    ),
    sync_case(
        "sync-tls-ca-empty", 78, "accounts.src.tls_ca", "no usable CA certificate", src={"tls_ca": "{dir}/empty.pem"}
    ),
    # Accounts and pairs.
    config_case("unknown-account", 78, "unknown account 'nosuch'", raw=None, pair="", dst={}, setup="unknown-account"),
    config_case("username-empty", 78, "accounts.src.username", "must not be empty", src={"username": "''"}),
    # The command line: global options after the subcommand too.
    Case("sync-dash-c-after", 78, ("pairs.test.foldrs",), args=("sync", "-c", "{config}"), pair="foldrs: {}"),
    Case(
        "check-v-c-after",
        78,
        ("metrics.listen",),
        args=("check", "-v", "--config", "{config}"),
        top='metrics: {listen: "x"}',
    ),
    Case("validate-c-after-ok", 0, ("valid",), args=("config", "validate", "-c", "{config}")),
    Case("config-group-c", 0, ("valid",), args=("config", "-c", "{config}", "validate")),
    Case("status-c-after", 0, ("never",), args=("status", "-q", "-c", "{config}")),
    Case("unknown-option", 64, ("No such option",), args=("sync", "--frobnicate", "-c", "{config}")),
    Case("unknown-pair", 64, ("unknown pair 'nosuch'",), args=("sync", "nosuch", "-c", "{config}")),
    Case("c-without-file", 64, ("requires an argument",), args=("sync", "-c")),
    Case("demo-bad-workdir", 64, ("--workdir", "cannot create it"), args=("demo", "--workdir", "/proc/no/such")),
    Case("demo-no-messages", 64, ("--messages",), args=("demo", "--messages", "0")),
    Case("parallel-zero", 64, ("--parallel",), args=("sync", "-j", "0", "-c", "{config}")),
    Case("no-command", 64, ("Usage",), args=()),
    Case(
        "env-config-directory", 78, ("is a directory",), args=("config", "validate"), env={"MAILMIRROR_CONFIG": "/tmp"}
    ),
    # State database problems, before any connection.
    sync_case("state-corrupt", 74, "not a mailmirror state database", "move it aside", setup="corrupt-state"),
    sync_case("state-is-directory", 78, "state.path", "is a directory", setup="state-directory"),
    sync_case("state-parent-is-file", 78, "state database", "is a file, not a directory", setup="state-parent-file"),
    sync_case("state-is-fifo", 78, "not a regular file", setup="state-fifo"),
    sync_case("state-newer-schema", 78, "newer than this mailmirror", setup="newer-schema"),
    Case(
        "status-state-corrupt",
        74,
        ("not a mailmirror state database",),
        args=("status", "-c", "{config}"),
        setup="corrupt-state",
    ),
    # Runtime checks that `run` makes at start.
    Case("run-cron-never", 78, ("never fires",), args=("run", "-c", "{config}"), pair='schedule: {cron: "0 0 31 2 *"}'),
    Case("run-every-huge", 78, ("at most",), args=("run", "-c", "{config}"), pair="schedule: {every: 3000000d}"),
]

NETWORK_CASES = [
    check_case("closed-port", 69, "account 'src'", "connection refused"),
    check_case(
        "unresolvable-host", 69, "account 'src'", "cannot resolve host name", src={"host": "no-such-host.invalid"}
    ),
    check_case("silent-server", 69, "account 'src'", "no answer within 2s", server="silent"),
    check_case(
        "garbage-greeting", 69, "account 'src'", "greeting is not IMAP", "check host and port", server="garbage"
    ),
    check_case("bye-greeting", 69, "account 'src'", "refused the connection at once", "Too many", server="bye"),
    check_case("http-server", 69, "account 'src'", "greeting is not IMAP", "HTTP/1.1", server="http"),
    check_case("closes-at-once", 69, "account 'src'", "closed the connection before its greeting", server="close"),
    check_case(
        "secret-file-dev-zero",
        78,
        "accounts.src.password",
        "not a regular file",
        server="imap-plain",
        src={"password": "{file: /dev/zero}"},
    ),
    check_case(
        "secret-file-fifo",
        78,
        "accounts.src.password",
        "not a regular file",
        server="imap-plain",
        src={"password": "{file: {dir}/fifo}"},
        setup="fifo",
    ),
    check_case("starttls-refused", 69, "account 'src'", "refused STARTTLS", "tls: implicit", server="starttls-no"),
    check_case("huge-greeting", 69, "account 'src'", "greeting is not IMAP", server="huge-greeting"),
    check_case("mute-after-greeting", 69, "account 'src'", "no answer within 2s", server="mute"),
    check_case("closes-at-login", 69, "account 'src'", "connection lost during login", server="close-at-login"),
    check_case("bad-to-login", 77, "account 'src'", "Invalid arguments", server="bad-login"),
    sync_case("sync-garbage-greeting", 69, "account 'src'", "greeting is not IMAP", server="garbage"),
    check_case("no-starttls", 69, "does not offer STARTTLS", "tls: implicit", server="imap-nostarttls"),
    check_case("login-refused", 77, "account 'src'", "refused", server="imap-plain", src={"tls": "none"}),
    check_case(
        "tls-name-mismatch",
        69,
        "not valid for the host name '127.0.0.1'",
        "mail.example.org",
        server="tls-wrong-name",
        src={"tls": "implicit", "tls_ca": "{lab_ca}"},
    ),
    check_case(
        "tls-implicit-on-plain-port", 69, "plain text", "tls: starttls", server="dovecot", src={"tls": "implicit"}
    ),
    check_case(
        "tls-starttls-on-implicit-port",
        69,
        "TLS from the first byte",
        "tls: implicit",
        server="dovecot",
        src={"port": "{dovecot_tls_port}"},
    ),
    check_case(
        "tls-none-on-implicit-port",
        69,
        "TLS from the first byte",
        "tls: implicit",
        server="dovecot",
        src={"tls": "none", "tls_ca": None, "port": "{dovecot_tls_port}"},
    ),
    check_case("tls-no-ca", 69, "could not be verified", "tls_ca", server="dovecot", src={"tls_ca": None}),
    check_case("tls-other-ca", 69, "could not be verified", "tls_ca", server="dovecot", src={"tls_ca": "{other_ca}"}),
    sync_case(
        "sync-tls-implicit-on-plain", 69, "plain text", "tls: starttls", server="dovecot", src={"tls": "implicit"}
    ),
    # Secrets read at login.
    check_case(
        "secret-file-missing",
        78,
        "accounts.src.password",
        "cannot be read",
        server="dovecot",
        src={"password": "{file: {dir}/none}"},
    ),
    check_case(
        "secret-file-empty",
        78,
        "accounts.src.password",
        "is empty",
        server="dovecot",
        src={"password": "{file: {dir}/empty.pem}"},
    ),
    check_case(
        "secret-env-unset",
        78,
        "accounts.src.password",
        "MAILMIRROR_NO_SUCH_VAR",
        "is not set",
        server="dovecot",
        src={"password": "{env: MAILMIRROR_NO_SUCH_VAR}"},
    ),
    check_case(
        "secret-command-fails",
        78,
        "accounts.src.password",
        "exit status 3",
        server="dovecot",
        src={"password": "{command: [sh, -c, 'echo oops >&2; exit 3']}"},
    ),
    check_case(
        "secret-command-missing",
        78,
        "accounts.src.password",
        "not found",
        server="dovecot",
        src={"password": "{command: [no-such-program-xyz]}"},
    ),
    check_case(
        "secret-command-hangs",
        78,
        "did not finish within 1s",
        "killed",
        server="dovecot",
        src={"password": "{command: [sleep, '60']}"},
        env={"MAILMIRROR_SECRET_COMMAND_TIMEOUT": "1"},
    ),
    check_case(
        "secret-command-keeps-pipe",
        0,
        "ok",
        args=("check", "src", "-c", "{config}"),
        server="dovecot",
        src={"password": "{command: [sh, -c, 'cat {dir}/src.password; sleep 60 &']}"},
    ),
    check_case(
        "secret-not-utf8",
        78,
        "accounts.src.password",
        "not UTF-8",
        server="dovecot",
        src={"password": "{file: {dir}/latin1}"},
    ),
    check_case(
        "wrong-password", 77, "account 'src'", "refused", server="dovecot", src={"password": "{file: {dir}/wrong}"}
    ),
]

CASES = CONFIG_CASES + NETWORK_CASES


# --------------------------------------------------------------------------------------------------
# Fake servers
# --------------------------------------------------------------------------------------------------

GREETINGS = {
    "garbage": bytes(range(256)) * 12 + b"\r\n",
    "bye": b"* BYE Too many connections from your address\r\n",
    "http": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    "close": b"",
    "huge-greeting": b"* OK " + b"x" * 1_100_000,
}


class FakeServer:
    """A socket server on 127.0.0.1 that misbehaves in one way; ``lines`` records what clients sent."""

    def __init__(self, behaviour: str, tls: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.lines: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                connection, _address = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError), connection:
            connection.settimeout(20)
            if self.behaviour in GREETINGS:
                connection.sendall(GREETINGS[self.behaviour])
                return
            if self.behaviour == "silent":
                self.closing.wait(20)
                return
            if self.tls is not None:
                connection = self.tls.wrap_socket(connection, server_side=True)
            self._imap(connection)

    def _imap(self, connection: socket.socket) -> None:
        capabilities = b"IMAP4rev1 AUTH=PLAIN" + (b" STARTTLS" if self.behaviour == "starttls-no" else b"")
        connection.sendall(b"* OK fake server ready\r\n")
        reader = connection.makefile("rb")
        for line in reader:
            self.lines.append(line)
            tag, _space, rest = line.strip().partition(b" ")
            command = rest.split(b" ", 1)[0].upper()
            if self.behaviour == "mute":  # greets, then never answers
                continue
            if command == b"CAPABILITY":
                connection.sendall(b"* CAPABILITY " + capabilities + b"\r\n" + tag + b" OK done\r\n")
            elif command == b"STARTTLS":
                connection.sendall(tag + b" NO [UNAVAILABLE] TLS is not configured on this server\r\n")
            elif command in (b"LOGIN", b"AUTHENTICATE") and self.behaviour == "close-at-login":
                return
            elif command in (b"LOGIN", b"AUTHENTICATE") and self.behaviour == "bad-login":
                connection.sendall(tag + b" BAD Error in IMAP command LOGIN: Invalid arguments.\r\n")
            elif command in (b"LOGIN", b"AUTHENTICATE"):
                connection.sendall(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
            elif command == b"LOGOUT":
                connection.sendall(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                return
            else:
                connection.sendall(tag + b" BAD unknown command\r\n")


@pytest.fixture(scope="module")
def fake_servers(lab_ca: LabCA) -> Iterator[dict[str, FakeServer]]:
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-fake-"))
    cert, key = lab_ca.issue(directory, ["mail.example.org"])
    wrong_name = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    wrong_name.load_cert_chain(cert, key)
    servers = {
        name: FakeServer(name)
        for name in (*GREETINGS, "silent", "imap-plain", "mute", "close-at-login", "bad-login", "starttls-no")
    }
    servers["imap-nostarttls"] = servers["imap-plain"]
    servers["tls-wrong-name"] = FakeServer("imap-plain", tls=wrong_name)
    yield servers
    for server in servers.values():
        server.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return LabCA(tmp_path_factory.mktemp("other-ca")).cert_path


# --------------------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------------------


def account_lines(values: dict[str, str | None]) -> str:
    return "".join(f"    {key}: {value}\n" for key, value in values.items() if value is not None)


def config_text(case: Case, base_src: dict[str, str | None], base_dst: dict[str, str | None]) -> str:
    pair_lines = "".join(f"    {line}\n" for line in case.pair.splitlines() if line)
    return (
        "state: {path: {dir}/state.db}\n"
        + ('metrics: {listen: "127.0.0.1:0"}\n' if "metrics" not in case.top else "")
        + (case.top + "\n" if case.top else "")
        + "accounts:\n  src:\n"
        + account_lines({**base_src, **case.src})
        + "  dst:\n"
        + account_lines({**base_dst, **case.dst})
        + "pairs:\n  test:\n    source: src\n    destination: dst\n"
        + pair_lines
    )


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _prepare_unknown_account(directory: Path, config: Path) -> None:
    config.write_text(config.read_text().replace("destination: dst", "destination: nosuch"))


def _prepare_corrupt_state(directory: Path, config: Path) -> None:
    (directory / "state.db").write_bytes(b"this is not an SQLite database, just some text " * 100)


def _prepare_state_directory(directory: Path, config: Path) -> None:
    (directory / "state.db").mkdir()


def _prepare_state_parent_file(directory: Path, config: Path) -> None:
    (directory / "afile").write_text("x")
    config.write_text(config.read_text().replace(f"{directory}/state.db", f"{directory}/afile/state.db"))


def _prepare_newer_schema(directory: Path, config: Path) -> None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(directory / "state.db")) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (999)")
        db.commit()


def _prepare_fifo(directory: Path, config: Path) -> None:
    os.mkfifo(directory / "fifo")


def _prepare_state_fifo(directory: Path, config: Path) -> None:
    os.mkfifo(directory / "state.db")


PREPARE: dict[str, Callable[[Path, Path], None]] = {
    "unknown-account": _prepare_unknown_account,
    "corrupt-state": _prepare_corrupt_state,
    "state-directory": _prepare_state_directory,
    "state-parent-file": _prepare_state_parent_file,
    "newer-schema": _prepare_newer_schema,
    "fifo": _prepare_fifo,
    "state-fifo": _prepare_state_fifo,
}


def run_cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "daemon"), **(env or {})}
    environment.pop("MAILMIRROR_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "mailmirror", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def assert_clean_outcome(case: Case, result: subprocess.CompletedProcess[str], secrets: list[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == case.code, f"exit {result.returncode}, expected {case.code}:\n{output}"
    assert "Traceback" not in output, output
    assert "mailmirror: internal error" not in output and "this is a bug" not in output.lower(), output
    flowing = " ".join(output.split())  # rich wraps long messages
    for word in case.words:
        assert word in flowing, f"{word!r} not in:\n{output}"
    for secret in secrets:
        assert secret not in output, f"a secret leaked:\n{output}"


def make_case_dir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-bad-"))
    (directory / "secret").write_text(SECRET + "\n")
    (directory / "wrong").write_text(SECRET + "-wrong\n")
    (directory / "empty.pem").write_text("")
    garbage = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    (directory / "garbage.pem").write_text(garbage)
    (directory / "latin1").write_bytes("pässwörd".encode("latin-1"))
    return directory


@pytest.fixture
def case_dir() -> Iterator[Path]:
    directory = make_case_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def closed_account(directory: Path, port: int) -> dict[str, str | None]:
    return {
        "host": "127.0.0.1",
        "port": str(port),
        "tls": "starttls",
        "username": "alice",
        "password": f"{{file: {directory}/secret}}",
        "timeout": TIMEOUT,
    }


@dataclass
class Prepared:
    """A case written to disk, ready to run: its command line, environment and the secrets to look for."""

    case: Case
    directory: Path
    args: list[str]
    secrets: list[str]


Outcomes = dict[str, tuple[subprocess.CompletedProcess[str], list[str]]]


def run_all(prepared: list[Prepared]) -> Outcomes:
    """Run the cases side by side (each is mostly interpreter start-up, or a short wait for a timeout)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {item.case.id: (pool.submit(run_cli, item.args, item.case.env), item.secrets) for item in prepared}
        return {name: (future.result(), secrets) for name, (future, secrets) in futures.items()}


def prepare(
    case: Case,
    src: dict[str, str | None],
    dst: dict[str, str | None],
    values: dict[str, str],
    secrets: list[str],
    directory: Path,
) -> Prepared:
    values = {"dir": str(directory), **values}
    config = directory / "mailmirror.yaml"
    if case.raw is not None:
        config.write_bytes(case.raw.encode("utf-8", "surrogateescape"))
    else:
        config.write_text(fill(config_text(case, src, dst), values))
    if case.setup:
        PREPARE[case.setup](directory, config)
    path = fill(case.config_path, values) if case.config_path else str(config)
    return Prepared(case, directory, [arg.replace("{config}", path) for arg in case.args], secrets)


def run_case(
    case: Case,
    directory: Path,
    src: dict[str, str | None],
    dst: dict[str, str | None],
    values: dict[str, str],
    secrets: list[str],
) -> None:
    """One case, here and now (for tests that look at more than the output)."""
    item = prepare(case, src, dst, values, secrets, directory)
    assert_clean_outcome(case, run_cli(item.args, case.env), secrets)


@pytest.fixture(scope="module")
def config_outcomes(lab_ca: LabCA) -> Iterator[Outcomes]:
    prepared = []
    for case in CONFIG_CASES:
        directory = make_case_dir()
        # Two mailboxes (two ports): a pair into its own mailbox is a config error of its own.
        src, dst = closed_account(directory, free_port()), closed_account(directory, free_port())
        prepared.append(prepare(case, src, dst, {"lab_ca": str(lab_ca.cert_path)}, [SECRET], directory))
    yield run_all(prepared)
    for item in prepared:
        shutil.rmtree(item.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def network_outcomes(
    source_server: DovecotServer, fake_servers: dict[str, FakeServer], other_ca: Path, lab_ca: LabCA
) -> Iterator[Outcomes]:
    prepared = []
    for case in NETWORK_CASES:
        directory = make_case_dir()
        src = closed_account(directory, free_port())
        dst = closed_account(directory, free_port())
        values = {"lab_ca": str(lab_ca.cert_path), "other_ca": str(other_ca)}
        secrets = [SECRET]
        if case.server == "dovecot":
            user = source_server.add_user()
            (directory / "src.password").write_text(user.password + "\n")
            src.update(port=str(source_server.port), tls_ca=str(source_server.ca_path), username=user.username)
            src["password"] = f"{{file: {directory}/src.password}}"
            values["dovecot_tls_port"] = str(source_server.tls_port)
            secrets.append(user.password)
        elif case.server in fake_servers:
            src["port"] = str(fake_servers[case.server].port)
            src["tls"] = "starttls" if case.server in ("imap-nostarttls", "starttls-no") else "none"
        prepared.append(prepare(case, src, dst, values, secrets, directory))
    yield run_all(prepared)
    for item in prepared:
        shutil.rmtree(item.directory, ignore_errors=True)


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[case.id for case in CONFIG_CASES])
def test_bad_config_gets_its_exit_code_and_a_clear_message_without_secrets(
    case: Case, config_outcomes: Outcomes
) -> None:
    result, secrets = config_outcomes[case.id]
    assert_clean_outcome(case, result, secrets)


@pytest.mark.parametrize("case", NETWORK_CASES, ids=[case.id for case in NETWORK_CASES])
def test_network_failure_gets_its_exit_code_and_a_clear_message_without_secrets(
    case: Case, network_outcomes: Outcomes
) -> None:
    result, secrets = network_outcomes[case.id]
    assert_clean_outcome(case, result, secrets)


# --------------------------------------------------------------------------------------------------
# Cases that need more than one command: the wire form of LOGIN, a full disk, an IDLE watcher
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("username", ["al ice", 'quo"te', "back\\slash"])
def test_login_quotes_the_user_name(username: str, case_dir: Path, fake_servers: dict[str, FakeServer]) -> None:
    server = fake_servers["imap-plain"]
    before = len(server.lines)
    account = closed_account(case_dir, server.port) | {"tls": "none", "username": f"'{username}'", "auth": "login"}
    case = check_case(f"login-{username}", 77, "refused", "account 'src'")
    run_case(case, case_dir, account, closed_account(case_dir, free_port()), {}, [SECRET])
    sent = [line for line in server.lines[before:] if b" LOGIN " in line.upper()]
    quoted = username.replace("\\", "\\\\").replace('"', '\\"')
    assert sent and sent[-1].split(b" ", 2)[2].startswith(f'"{quoted}" '.encode()), sent


def test_login_with_a_space_in_the_user_name_is_refused_only_for_the_password(
    source_server: DovecotServer, case_dir: Path
) -> None:
    """Against Dovecot: a user name with a space reaches the server as one string (an unknown user: 77
    with the server's own 'Authentication failed', not a BAD parse error)."""
    account = closed_account(case_dir, source_server.port) | {
        "tls_ca": str(source_server.ca_path),
        "username": "'no such user'",
    }
    case = check_case("login-space-dovecot", 77, "AUTHENTICATIONFAILED", "'no such user'")
    run_case(case, case_dir, account, closed_account(case_dir, free_port()), {}, [SECRET])


def _mount_tmpfs(directory: Path, size: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root")
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?)")


@pytest.fixture
def small_disk(case_dir: Path) -> Iterator[Path]:
    directory = case_dir / "small"
    _mount_tmpfs(directory, "4m")
    yield directory
    subprocess.run(["umount", "-l", str(directory)], check=False)


def _fill(directory: Path) -> None:
    with contextlib.suppress(OSError), (directory / "filler").open("wb") as filler:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()


def test_state_database_on_a_full_disk_at_open(small_disk: Path, case_dir: Path) -> None:
    _fill(small_disk)
    case = sync_case("state-full-disk-open", 74, "disk (or quota) is full", "no mail was lost")
    src, dst = closed_account(case_dir, free_port()), closed_account(case_dir, free_port())
    text = fill(config_text(case, src, dst), {"dir": str(case_dir)})
    (case_dir / "mailmirror.yaml").write_text(text.replace(f"{case_dir}/state.db", f"{small_disk}/state.db"))
    result = run_cli(["sync", "-c", str(case_dir / "mailmirror.yaml")])
    assert_clean_outcome(case, result, [SECRET])


def test_state_database_on_a_full_disk_when_it_exists(small_disk: Path, case_dir: Path, mirror: Mirror) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(20)])
    setup = mirror.setup()
    text = setup.config_path.read_text().replace(f"{setup.directory}/state.db", f"{small_disk}/state.db")
    setup.config_path.write_text(text)
    opened = run_cli(["status", "-c", str(setup.config_path)])  # creates the database while there is room
    assert opened.returncode == 0, opened.stdout + opened.stderr
    _fill(small_disk)
    result = setup.run("sync")
    case = sync_case("state-full-disk-pass", 74, "disk (or quota) is full", "no mail was lost")
    assert_clean_outcome(case, result, [mirror.src_user.password, mirror.dst_user.password])


def test_state_database_fills_the_disk_during_a_pass(small_disk: Path, mirror: Mirror) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(300)])
    setup = mirror.setup(pair_options="transfer: {batch_messages: 5, workers: 1}")
    text = setup.config_path.read_text().replace(f"{setup.directory}/state.db", f"{small_disk}/state.db")
    setup.config_path.write_text(text)
    opened = run_cli(["status", "-c", str(setup.config_path)])  # creates the database while there is room
    assert opened.returncode == 0, opened.stdout + opened.stderr
    _fill(small_disk)
    filler = small_disk / "filler"
    os.truncate(filler, max(0, filler.stat().st_size - 96 * 1024))  # room to open, not for the whole pass
    result = setup.run("sync")
    case = sync_case("state-full-disk-pass", 74, "disk (or quota) is full", "no mail was lost")
    assert_clean_outcome(case, result, [mirror.src_user.password, mirror.dst_user.password])
    assert "copied" in result.stdout  # the pass had begun: the disk filled up under it
    filler.unlink()  # space again: the next pass finishes the job, nothing lost, nothing twice
    again = setup.run("sync")
    assert again.returncode == 0, again.stdout + again.stderr
    verified = setup.run("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_idle_on_a_missing_folder_warns_and_the_daemon_goes_on(mirror: Mirror) -> None:
    setup = mirror.setup(pair_options="schedule: {idle: [NoSuchFolder, INBOX]}")
    daemon = RunningDaemon(setup.config_path)
    try:
        daemon.wait_for_log("NoSuchFolder', which the source account 'src' does not have")
        daemon.wait_for_log("watching INBOX with IDLE")
    finally:
        code = daemon.stop()
    text = daemon.text()
    assert "Traceback" not in text and "Exception in thread" not in text, text
    assert "fix schedule.idle" in text
    assert code == 0, text
    for secret in (mirror.src_user.password, mirror.dst_user.password):
        assert secret not in text


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) + 3 + 1 + 2 + 1 >= 60
    assert len({case.id for case in CASES}) == len(CASES)


def test_help_says_global_options_go_after_the_command_too() -> None:
    result = run_cli(["--help"])
    assert result.returncode == 0
    assert re.search(r"-c/--config, -v and -q work before or after the command", " ".join(result.stdout.split()))
    for command in ("sync", "check", "verify", "plan", "status", "run"):
        sub = run_cli([command, "--help"])
        assert "--config" in sub.stdout and "--verbose" in sub.stdout and "--quiet" in sub.stdout, command


def test_deletion_guard_summary_says_what_happened(mirror: Mirror) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(5)])
    setup = mirror.setup(pair_options="deletions: {destination: mirror}")
    first = setup.run("sync")
    assert first.returncode == 0, first.stdout + first.stderr
    mirror.src.select_folder("INBOX")
    mirror.src.delete_messages(mirror.src.search()[:3])
    mirror.src.expunge()
    second = setup.run("sync")
    case = sync_case(
        "deletion-guard", 75, "deletion guard refused", "every selected source message is on the destination"
    )
    assert_clean_outcome(case, second, [mirror.src_user.password, mirror.dst_user.password])
    assert "some source messages are not on the destination" not in second.stdout


class _DeleteWhenStarted(LogProgress):
    """Deletes the source folder as soon as its copies begin: a folder removed by someone else mid-pass."""

    def __init__(self, server: DovecotServer, user: LabUser, folder: str) -> None:
        self.server, self.user, self.folder = server, user, folder

    def folder_started(self, pair: str, mapping: FolderMapping, messages: int, size: int) -> None:
        if mapping.source == self.folder and messages:
            with self.server.connect(self.user) as client:
                client.delete_folder(self.folder)


def test_a_folder_deleted_mid_pass_is_reported_as_such(mirror: Mirror) -> None:
    mirror.src.create_folder("Doomed")
    seed(mirror.src, "Doomed", [SeedMessage(simple_message(i)) for i in range(30)])
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(100 + i)) for i in range(3)])
    setup = mirror.setup(pair_options="transfer: {workers: 1}")
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    try:
        progress = _DeleteWhenStarted(mirror.source_server, mirror.src_user, "Doomed")
        report = PairPass("test", config.effective_pairs()["test"], config, store, progress).run()
    finally:
        store.close()
    doomed = next(folder for folder in report.folders if folder.source == "Doomed")
    assert doomed.error is not None and "was deleted on the server during the pass" in doomed.error, doomed.error
    inbox = next(folder for folder in report.folders if folder.source == "INBOX")
    assert inbox.error is None and inbox.copied == 3
    assert report.error is None


def test_an_unreadable_config_exits_78_like_a_missing_one(case_dir: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run the CLI as another user (root reads any file)")
    require_checkout_readable_by_others()
    config = case_dir / "mailmirror.yaml"
    src, dst = closed_account(case_dir, free_port()), closed_account(case_dir, free_port())
    config.write_text(fill(config_text(config_case("x", 0), src, dst), {"dir": str(case_dir)}))
    config.chmod(0o600)
    case_dir.chmod(0o755)
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    for args in (["config", "validate", "-c", str(config)], ["-c", str(config), "sync"]):
        as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        result = subprocess.run(
            [*as_nobody, sys.executable, "-m", "mailmirror", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
            check=False,
        )
        assert_clean_outcome(config_case("unreadable", 78, "permission denied", "owner and mode"), result, [SECRET])
