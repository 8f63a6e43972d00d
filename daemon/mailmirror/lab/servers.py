"""What the lab's server kinds have in common: Dovecot (:mod:`mailmirror.lab.dovecot`), Cyrus IMAP
(:mod:`mailmirror.lab.cyrus`) and Courier-IMAP (:mod:`mailmirror.lab.courier`).

Cyrus and Courier are not installed as Debian packages (they conflict with dovecot-imapd and pull in an
MTA): ``scripts/lab-servers`` (run by ``scripts/bootstrap --test``) unpacks their programs into
:data:`LAB_SERVERS_DIR` (``MAILMIRROR_LAB_SERVERS`` overrides it); their libraries are ordinary packages.

Every kind offers the same interface (:class:`LabServer`): a private instance on 127.0.0.1 with a plain
port that offers STARTTLS and an implicit-TLS port, a certificate from a :class:`~mailmirror.lab.dovecot.LabCA`,
``add_user()`` / ``connect()`` / ``folder_name()`` / ``start()`` / ``stop()`` / ``restart()``.
:func:`make_lab_server` builds one by kind name (:data:`LAB_KINDS`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from imapclient import IMAPClient

from mailmirror.lab.dovecot import (
    DovecotServer,
    LabCA,
    LabError,
    LabServerBase,
    LabUser,
    _exit_cleanly_on_sigterm,
    _is_zombie,
    _proc_cmdline,
    track_running,
)

__all__ = [
    "LAB_KINDS",
    "LAB_SERVERS_DIR",
    "LabServer",
    "ProcessLabServer",
    "lab_kind_available",
    "lab_kind_missing",
    "make_lab_server",
]

#: Where ``scripts/lab-servers`` unpacked the Cyrus and Courier packages (a ``root/`` tree below it).
LAB_SERVERS_DIR = Path(os.environ.get("MAILMIRROR_LAB_SERVERS", "/var/cache/mailmirror/lab-servers"))

#: Server kinds of the lab: name -> (description, separator, prefix).
LAB_KINDS: Mapping[str, tuple[str, str, str]] = {
    "dovecot": ("Dovecot 2.3", "/", ""),
    "cyrus-slash": ("Cyrus IMAP 3.6, altnamespace + unixhierarchysep", "/", ""),
    "cyrus-dot": ("Cyrus IMAP 3.6, traditional namespace", ".", "INBOX."),
    "courier": ("Courier-IMAP 5.0", ".", "INBOX."),
}


class LabServer(Protocol):
    """The interface every lab server kind offers (what tests and the demo use)."""

    host: str
    name: str
    port: int
    tls_port: int
    separator: str
    prefix: str
    root: Path
    start_seconds: float | None

    @property
    def ca_path(self) -> Path: ...

    @property
    def running(self) -> bool: ...

    @property
    def users(self) -> tuple[LabUser, ...]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def restart(self) -> None: ...

    def add_user(self, username: str | None = None, password: str | None = None) -> LabUser: ...

    def connect(self, user: LabUser, *, tls: str = "none", timeout: float = 30) -> IMAPClient: ...

    def folder_name(self, logical: str) -> str: ...


def lab_program(relative: str) -> Path:
    """A program unpacked by scripts/lab-servers, e.g. ``usr/lib/cyrus/bin/master``."""
    return LAB_SERVERS_DIR / "root" / relative


def lab_library_path() -> str:
    """LD_LIBRARY_PATH for the unpacked programs (their own libraries live in the cache too)."""
    root = LAB_SERVERS_DIR / "root"
    return f"{root / 'usr/lib/x86_64-linux-gnu'}:{root / 'usr/lib'}"


_KIND_PROGRAMS: Mapping[str, str] = {
    "cyrus-slash": "usr/lib/cyrus/bin/master",
    "cyrus-dot": "usr/lib/cyrus/bin/master",
    "courier": "usr/bin/imapd",
}


def lab_kind_missing(kind: str) -> str | None:
    """Why ``kind`` cannot run here (with the fix), or None when it can."""
    if kind not in LAB_KINDS:
        raise ValueError(f"unknown lab server kind {kind!r} (known: {', '.join(LAB_KINDS)})")
    if kind == "dovecot":
        from mailmirror.lab.dovecot import DOVECOT_BINARY, dovecot_available

        return (
            None
            if dovecot_available()
            else f"Dovecot is not installed ({DOVECOT_BINARY} missing; apt-get install dovecot-imapd)"
        )
    program = lab_program(_KIND_PROGRAMS[kind])
    if not (program.is_file() and os.access(program, os.X_OK)):
        return f"{LAB_KINDS[kind][0]} is not unpacked ({program} missing; run scripts/bootstrap --test)"
    return None


def lab_kind_available(kind: str) -> bool:
    return lab_kind_missing(kind) is None


def make_lab_server(kind: str, root: Path, name: str, *, ca: LabCA | None = None) -> LabServer:
    """A (not yet started) lab server of ``kind`` (see :data:`LAB_KINDS`) living in ``root``."""
    if kind == "dovecot":
        return DovecotServer(root, name, ca=ca)
    if kind in ("cyrus-slash", "cyrus-dot"):
        from mailmirror.lab.cyrus import CyrusServer

        return CyrusServer(root, name, separator="/" if kind == "cyrus-slash" else ".", ca=ca)
    if kind == "courier":
        from mailmirror.lab.courier import CourierServer

        return CourierServer(root, name, ca=ca)
    raise ValueError(f"unknown lab server kind {kind!r} (known: {', '.join(LAB_KINDS)})")


# ------------------------------------------------------------------------------- process handling


def stop_process_group(proc: subprocess.Popen[bytes], what: str, timeout: float = 5.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session``), SIGKILL what is
    left after ``timeout``, and wait until no member of the group is alive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + timeout
    while group_members(proc.pid):
        if time.monotonic() > deadline:
            raise LabError(f"{what}: processes {group_members(proc.pid)} survived SIGKILL")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.02)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and not _is_zombie(int(entry.name)):
            found.append(int(entry.name))
    return found


def kill_stale_group(pidfile: Path, marker: bytes) -> None:
    """A previous process may have died without stopping its server (SIGKILL): when ``pidfile`` names a
    live process whose command line contains ``marker``, kill its whole process group."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().split()[0])
        if marker in _proc_cmdline(pid):
            os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while group_members(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        pidfile.unlink()


def wait_for_greeting(
    proc: subprocess.Popen[bytes],
    host: str,
    ports: tuple[int, int],
    what: str,
    timeout: float,
    diagnostics: Callable[[], str],
) -> None:
    """Wait until the plain port greets with ``* OK`` and the TLS port accepts connections; else a LabError
    that ends with ``diagnostics()`` (what the server wrote by then)."""
    import socket

    deadline = time.monotonic() + timeout
    last_error: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"{what} exited with status {proc.returncode} while starting\n{diagnostics()}")
        try:
            with socket.create_connection((host, ports[0]), timeout=2) as sock:
                greeting = sock.recv(512)
            if greeting.startswith(b"* OK"):
                with socket.create_connection((host, ports[1]), timeout=2):
                    return
            last_error = f"unexpected greeting {greeting!r}"
        except OSError as exc:
            last_error = exc
        time.sleep(0.01)
    raise LabError(f"{what} did not greet on {host}:{ports[0]} within {timeout:.0f}s ({last_error})\n{diagnostics()}")


def read_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- tail of {path} ---\n{tail}" if tail else ""


def serve_until_interrupted(server: LabServer, what: str, *details: str) -> None:
    """For running a started lab server by hand (``python -m mailmirror.lab.cyrus``): say where it listens,
    then wait until Ctrl-C or until it ends."""
    print(f"{what} on {server.host}: plain+STARTTLS {server.port}, TLS {server.tls_port}; CA {server.ca_path}")
    for line in details:
        print(line)
    with contextlib.suppress(KeyboardInterrupt):
        while server.running:
            time.sleep(1)


# ------------------------------------------------------------------------ Cyrus and Courier's lifecycle

#: How long a Cyrus or Courier lab server may take to greet after its start.
START_TIMEOUT = 15.0


class ProcessLabServer(LabServerBase):
    """A lab server run as one process group from the unpacked programs (Cyrus' master, Courier's front):
    start() writes the files (``_prepare``), ends what a killed earlier run left (the process named in
    ``pid_path``), starts ``_command()`` in a new session with its output in ``stderr_path`` and returns
    once both ports answer; stop() ends the whole group.  A kind sets ``kind``, ``label``, ``pid_path``,
    ``stderr_path``, ``marker_path`` (a file only its own process names on its command line) and
    implements ``_prepare``, ``_command``, ``_environment`` and ``_store_user``."""

    kind: str  # in LAB_KINDS: what lab_kind_missing checks
    label: str  # in messages: "cyrus", "courier"
    username_pattern = re.compile(r"^[A-Za-z0-9_-]+$")
    pid_path: Path
    stderr_path: Path
    marker_path: Path

    def start(self) -> None:
        """Write the configuration and start the server; return once the plain port greets."""
        with self._lock:
            if self.running:
                return
            began = time.monotonic()
            missing = lab_kind_missing(self.kind)
            if missing:
                raise LabError(missing)
            self._prepare()
            kill_stale_group(self.pid_path, os.fsencode(str(self.marker_path)))
            _exit_cleanly_on_sigterm()
            with self.stderr_path.open("ab") as err:
                self._proc = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    env=self._environment(),
                    start_new_session=True,
                    close_fds=True,
                )
            try:
                wait_for_greeting(self._proc, self.host, (self.port, self.tls_port), f"{self.label} {self.name}",
                                  START_TIMEOUT, self._diagnostics)  # fmt: skip
            except LabError:
                self._terminate()
                raise
            track_running(self, True)
            self._started()
            self.start_seconds = time.monotonic() - began

    def stop(self) -> None:
        with self._lock:
            self._terminate()
            track_running(self, False)

    def _terminate(self) -> None:
        if self._proc is not None:
            stop_process_group(self._proc, f"{self.label} {self.name}")
            self._proc = None

    def add_user(self, username: str | None = None, password: str | None = None) -> LabUser:
        """Add a user (a random name and password unless given); see the kind's ``_store_user``."""
        if username is None:
            username = "u" + secrets.token_hex(6)
        if password is None:
            password = secrets.token_urlsafe(12)
        if not self.username_pattern.match(username) or username in self._reserved_usernames():
            raise ValueError(f"unsupported lab username {username!r} (letters, digits, _ and - only)")
        if not password or any(ch in password for ch in "\r\n\0"):
            raise ValueError("lab passwords must be non-empty and contain no line breaks")
        with self._lock:
            if username in self._users:
                raise ValueError(f"lab user {username!r} already exists on {self.name}")
            user = LabUser(username, password)
            self._store_user(user)
            return user

    def _diagnostics(self) -> str:
        """What the server wrote, for an error message."""
        return read_tail(self.stderr_path)

    def _started(self) -> None:
        """What to do once the server greets (Cyrus: create the mailboxes of users added while stopped)."""

    def _reserved_usernames(self) -> tuple[str, ...]:
        return ()

    def _prepare(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        raise NotImplementedError

    def _store_user(self, user: LabUser) -> None:
        """Make ``user`` able to log in and add it to ``_users`` (called with the lock held)."""
        raise NotImplementedError
