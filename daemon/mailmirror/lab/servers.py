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

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from imapclient import IMAPClient

from mailmirror.lab.dovecot import DovecotServer, LabCA, LabError, LabUser, _is_zombie, _proc_cmdline

__all__ = [
    "LAB_KINDS",
    "LAB_SERVERS_DIR",
    "LabServer",
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

_running_lock = threading.Lock()
_running: set[LabServer] = set()


def track_running(server: LabServer, running: bool) -> None:
    """Remember started Cyrus/Courier servers, so that they are stopped when Python exits (atexit) even
    if nobody called stop() -- as mailmirror.lab.dovecot does for Dovecot."""
    with _running_lock:
        if running:
            _running.add(server)
        else:
            _running.discard(server)


@atexit.register
def _stop_all_running() -> None:
    with _running_lock:
        servers = list(_running)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


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
    proc: subprocess.Popen[bytes], host: str, ports: tuple[int, int], what: str, timeout: float, diagnostics: str
) -> None:
    """Wait until the plain port greets with ``* OK`` and the TLS port accepts connections."""
    import socket

    deadline = time.monotonic() + timeout
    last_error: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"{what} exited with status {proc.returncode} while starting\n{diagnostics}")
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
    raise LabError(f"{what} did not greet on {host}:{ports[0]} within {timeout:.0f}s ({last_error})\n{diagnostics}")


def read_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- tail of {path} ---\n{tail}" if tail else ""
