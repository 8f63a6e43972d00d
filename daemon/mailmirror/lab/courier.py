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

import json
import os
import sys
from pathlib import Path

from mailmirror.lab.dovecot import LabCA, LabUser, _check_traversable, _ensure_system_user
from mailmirror.lab.servers import ProcessLabServer, lab_library_path, lab_program, serve_until_interrupted

__all__ = ["COURIER_CAPABILITY", "CourierServer"]

#: IMAP_CAPABILITY of Debian's /etc/courier/imapd (imapd adds ENABLE UTF8=ACCEPT after login).
COURIER_CAPABILITY = "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"


class CourierServer(ProcessLabServer):
    """A private Courier-IMAP 5.0 server (see the module docstring)."""

    kind = "courier"
    label = "courier"

    def __init__(self, root: Path, name: str = "courier", *, ca: LabCA | None = None) -> None:
        super().__init__(root, name, separator=".", prefix="INBOX.", ca=ca)
        self.config_path = self.root / "front.json"
        self.users_path = self.root / "users.json"
        self.mail_root = self.root / "mail"
        self.stderr_path = self.root / "front.stderr"
        self.log_path = self.root / "imapd.log"
        self.pid_path = self.root / "front.pid"
        self.marker_path = self.config_path
        self._uid_gid: tuple[int, int] = (os.getuid(), os.getgid())

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

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "mailmirror.lab.courier_front", str(self.config_path)]

    def _environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    # ------------------------------------------------------------------ users

    def _store_user(self, user: LabUser) -> None:
        """An empty Maildir, then the password (usable immediately: the front reads users.json per login)."""
        if not self.config_path.exists():
            self._prepare()
        home = self.mail_root / user.username
        for directory in (home, home / "Maildir", *(home / "Maildir" / sub for sub in ("cur", "new", "tmp"))):
            directory.mkdir(mode=0o700)
            os.chown(directory, *self._uid_gid)
        self._users[user.username] = user
        self._write_users()


def _main() -> None:  # pragma: no cover - a debugging aid
    import argparse

    parser = argparse.ArgumentParser(description="Run a private Courier-IMAP lab server until Ctrl-C.")
    parser.add_argument("root", type=Path, help="directory for its configuration, mail and TLS material")
    args = parser.parse_args()
    with CourierServer(args.root, "manual") as server:
        user = server.add_user("alice", "secret")
        serve_until_interrupted(
            server, "Courier", f"user {user.username} / {user.password}; config in {server.root}; Ctrl-C stops it"
        )


if __name__ == "__main__":  # pragma: no cover
    _main()
