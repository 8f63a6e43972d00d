"""Throwaway private Courier-IMAP 5.0 servers on 127.0.0.1 for the test lab (interface as
:class:`mailmirror.lab.dovecot.DovecotServer`; see :mod:`mailmirror.lab.servers`).

Courier's ``imapd`` (from the unpacked Debian package, ``scripts/lab-servers``) serves each logged-in
session; the pre-login part is :mod:`mailmirror.lab.courier_front`, because Courier's own chain
(couriertcpd -> imaplogin -> authdaemond) has its paths compiled in under /run/courier and /etc/courier.
Everything lives in ``root``::

    front.json        the front's configuration (ports, TLS files, imapd's environment)
    users.json        {"user": "password"}: plain-text passwords, re-read on every login
    mail/<user>/      home of each user, mail in ``Maildir/`` (Maildir++: folders are ``.INBOX.x``
                      directories... on disk ``Maildir/.Name``)
    tls/              server certificate and key
    front.stderr      the front's output (one line per login)
    imapd.log         what imapd writes to stderr (``INFO: LOGIN``/``LOGOUT`` lines, errors)

imapd's settings are Debian's /etc/courier/imapd defaults (``IMAP_CAPABILITY`` without AUTH=*,
keywords and ACLs on) except ``IMAP_EMPTYTRASH`` (Debian purges Trash messages older than 7 days at every
login: off here) and the shared-folder index (none).  Courier facts the suite relies on: separator ".",
personal namespace ``INBOX.``; SELECT answers no ``[UIDNEXT]``; no SPECIAL-USE, CONDSTORE, QRESYNC,
MOVE or LIST-STATUS; APPEND answers ``[APPENDUID]`` (UIDPLUS).

By hand, for debugging::

    python -m mailmirror.lab.courier /tmp/courier-lab   # starts it, prints ports and a user
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from imapclient import IMAPClient

from mailmirror.lab.dovecot import (
    LabCA,
    LabError,
    LabUser,
    _check_traversable,
    _ensure_system_user,
    _exit_cleanly_on_sigterm,
    connect_client,
    free_port,
    server_folder_name,
)
from mailmirror.lab.servers import (
    kill_stale_group,
    lab_kind_missing,
    lab_library_path,
    lab_program,
    read_tail,
    stop_process_group,
    track_running,
    wait_for_greeting,
)

__all__ = ["COURIER_CAPABILITY", "CourierServer"]

#: IMAP_CAPABILITY of Debian's /etc/courier/imapd (imapd adds ENABLE UTF8=ACCEPT after login).
COURIER_CAPABILITY = "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"

_START_TIMEOUT = 15.0
_USERNAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class CourierServer:
    """A private Courier-IMAP 5.0 server (see the module docstring)."""

    host: str = "127.0.0.1"
    separator: str = "."
    prefix: str = "INBOX."

    def __init__(self, root: Path, name: str = "courier", *, ca: LabCA | None = None) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"server name {name!r} must be letters, digits, '-' or '_'")
        self.root = Path(root).absolute()
        self.name = name
        self.port = free_port()
        self.tls_port = free_port()
        self.config_path = self.root / "front.json"
        self.users_path = self.root / "users.json"
        self.mail_root = self.root / "mail"
        self.tls_dir = self.root / "tls"
        self.stderr_path = self.root / "front.stderr"
        self.log_path = self.root / "imapd.log"
        self.pid_path = self.root / "front.pid"
        self._ca = ca
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._users: dict[str, LabUser] = {}
        self._uid_gid: tuple[int, int] = (os.getuid(), os.getgid())
        self.start_seconds: float | None = None

    @property
    def ca(self) -> LabCA:
        if self._ca is None:
            self._ca = LabCA(self.tls_dir / "ca")
        return self._ca

    @property
    def ca_path(self) -> Path:
        return self.ca.cert_path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def users(self) -> tuple[LabUser, ...]:
        return tuple(self._users.values())

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<CourierServer {self.name} {self.host}:{self.port}/{self.tls_port} {state}>"

    # ------------------------------------------------------------------ setup

    def _prepare(self) -> None:
        for directory in (self.root, self.mail_root, self.tls_dir):
            directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._uid_gid = _ensure_system_user()
            self.root.chmod(0o755)
            _check_traversable(self.root, *self._uid_gid)
            os.chown(self.mail_root, *self._uid_gid)
        cert, key = self.tls_dir / "cert.pem", self.tls_dir / "key.pem"
        if not (cert.exists() and key.exists()):
            self.ca.issue(self.tls_dir, ["127.0.0.1", "localhost"])
        if not self.users_path.exists():
            self._write_users()
        environment = {
            "PATH": "/usr/bin:/bin",
            "LD_LIBRARY_PATH": lab_library_path(),
            "IMAP_CAPABILITY": COURIER_CAPABILITY,
            "IMAP_KEYWORDS": "1",
            "IMAP_ACL": "1",
            "IMAP_IDLE_TIMEOUT": "60",
            "IMAP_MAILBOX_SANITY_CHECK": "1",
            "IMAP_DISABLETHREADSORT": "0",
            "IMAP_CHECK_ALL_FOLDERS": "0",
            "IMAP_OBSOLETE_CLIENT": "0",
            "IMAP_USELOCKS": "1",
            "IMAP_ENHANCEDIDLE": "0",
            "IMAP_TRASHFOLDERNAME": "Trash",
            "IMAP_EMPTYTRASH": "",  # Debian: Trash:7 (purged at every login)
            "IMAP_MOVE_EXPUNGE_TO_TRASH": "0",
            "IMAP_SHAREDINDEXFILE": str(self.root / "shared-index"),
            "SENDMAIL": "/bin/false",
            "HEADERFROM": "X-IMAP-Sender",
        }
        config = {
            "host": self.host,
            "port": self.port,
            "tls_port": self.tls_port,
            "cert": str(cert),
            "key": str(key),
            "users": str(self.users_path),
            "mail_root": str(self.mail_root),
            "imapd": str(lab_program("usr/bin/imapd")),
            "capability": COURIER_CAPABILITY,
            "environment": environment,
            "uid": self._uid_gid[0],
            "gid": self._uid_gid[1],
            "log": str(self.log_path),
            "pidfile": str(self.pid_path),
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def _write_users(self) -> None:
        tmp = self.users_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({u.username: u.password for u in self._users.values()}))
        tmp.chmod(0o600)
        tmp.replace(self.users_path)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            began = time.monotonic()
            missing = lab_kind_missing("courier")
            if missing:
                raise LabError(missing)
            self._prepare()
            kill_stale_group(self.pid_path, os.fsencode(str(self.config_path)))
            _exit_cleanly_on_sigterm()
            with self.stderr_path.open("ab") as err:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "mailmirror.lab.courier_front", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                    start_new_session=True,
                    close_fds=True,
                )
            try:
                wait_for_greeting(self._proc, self.host, (self.port, self.tls_port), f"courier {self.name}",
                                  _START_TIMEOUT, read_tail(self.stderr_path))  # fmt: skip
            except LabError:
                self._terminate()
                raise
            track_running(self, True)
            self.start_seconds = time.monotonic() - began

    def stop(self) -> None:
        with self._lock:
            self._terminate()
            track_running(self, False)

    def _terminate(self) -> None:
        if self._proc is not None:
            stop_process_group(self._proc, f"courier {self.name}")
            self._proc = None

    def restart(self) -> None:
        with self._lock:
            self.stop()
            self.start()

    def __enter__(self) -> CourierServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ users

    def add_user(self, username: str | None = None, password: str | None = None) -> LabUser:
        """Add a user with an empty Maildir (usable immediately: the front reads users.json per login)."""
        if username is None:
            username = "u" + secrets.token_hex(6)
        if password is None:
            password = secrets.token_urlsafe(12)
        if not _USERNAME_RE.match(username):
            raise ValueError(f"unsupported lab username {username!r} (letters, digits, _ and - only)")
        if not password or any(ch in password for ch in "\r\n\0"):
            raise ValueError("lab passwords must be non-empty and contain no line breaks")
        with self._lock:
            if username in self._users:
                raise ValueError(f"lab user {username!r} already exists on {self.name}")
            if not self.config_path.exists():
                self._prepare()
            home = self.mail_root / username
            for directory in (home, home / "Maildir", *(home / "Maildir" / sub for sub in ("cur", "new", "tmp"))):
                directory.mkdir(mode=0o700)
                os.chown(directory, *self._uid_gid)
            user = LabUser(username, password)
            self._users[username] = user
            self._write_users()
            return user

    # ------------------------------------------------------------------ clients

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def connect(self, user: LabUser, *, tls: str = "none", timeout: float = 30) -> IMAPClient:
        """A logged-in IMAPClient (``normalise_times`` off), as :meth:`DovecotServer.connect`."""
        return connect_client(self.host, self.port, self.tls_port, self.ssl_context(), user, tls=tls, timeout=timeout)

    def folder_name(self, logical: str) -> str:
        return server_folder_name(logical, self.separator, self.prefix)


def _main() -> None:  # pragma: no cover - a debugging aid
    import argparse

    parser = argparse.ArgumentParser(description="Run a private Courier-IMAP lab server until Ctrl-C.")
    parser.add_argument("root", type=Path, help="directory for its configuration, mail and TLS material")
    args = parser.parse_args()
    with CourierServer(args.root, "manual") as server:
        user = server.add_user("alice", "secret")
        print(f"Courier on {server.host}: plain+STARTTLS {server.port}, TLS {server.tls_port}; CA {server.ca_path}")
        print(f"user {user.username} / {user.password}; config in {server.root}; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while server.running:
                time.sleep(1)


if __name__ == "__main__":  # pragma: no cover
    _main()
