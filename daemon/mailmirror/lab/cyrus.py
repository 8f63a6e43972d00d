"""Throwaway private Cyrus IMAP 3.6 servers on 127.0.0.1 for the test lab (interface as
:class:`mailmirror.lab.dovecot.DovecotServer`; see :mod:`mailmirror.lab.servers`).

The programs come from the unpacked Debian packages (``scripts/lab-servers``); nothing in ``/etc`` is
read or written.  Cyrus is started as ``master -C <root>/imapd.conf -M <root>/cyrus.conf -D`` and every
path it uses is in ``root``::

    imapd.conf        the generated configuration (configdirectory, partition, TLS, SASL, namespace)
    cyrus.conf        the master's services: imap (plain + STARTTLS) and imaps (implicit TLS)
    auth/users.db     SQLite table ``users(username, password)``: plain-text passwords, read by Cyrus SASL's
                      ``sql`` auxprop plugin (``sasl_pwcheck_method: auxprop``) on every login
    config/           Cyrus' databases (mailboxes.db, ...); ``config/log/<user>/`` (create it) makes
                      Cyrus write a protocol telemetry log of that user's sessions
    partition/        the mail
    run/              sockets and master.pid
    tls/              server certificate and key
    master.stderr     what the master writes to stderr (Cyrus logs everything else to syslog only)

Modes: ``separator="/"`` is ``altnamespace: yes`` + ``unixhierarchysep: yes`` (no prefix, folders beside
INBOX); ``separator="."`` is ``altnamespace: no`` + ``unixhierarchysep: no`` (folders under ``INBOX.``).
Users are mailboxes the admin ``cyrusadmin`` creates (``user/NAME`` or ``user.NAME``) right after their
password row is written.  Everything else is Cyrus' default, in particular ``munge8bit: yes``: 8-bit
bytes in headers of an APPENDed message are replaced (the message is stored altered).

As root (CI), Cyrus drops to the unprivileged ``mailmirror-lab`` user (``cyrus_user``), like the Dovecot
lab servers.  By hand, for debugging::

    python -m mailmirror.lab.cyrus /tmp/cyrus-lab --separator /   # starts it, prints ports and a user
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import sqlite3
from pathlib import Path

from mailmirror.lab.dovecot import (
    LAB_SYSTEM_USER,
    LabCA,
    LabError,
    LabUser,
    _check_traversable,
    _ensure_system_user,
)
from mailmirror.lab.servers import ProcessLabServer, lab_library_path, lab_program, read_tail, serve_until_interrupted

__all__ = ["CYRUS_ADMIN", "CyrusServer"]

#: The admin user that creates users' mailboxes (an ordinary SASL user listed in ``admins``).
CYRUS_ADMIN = "cyrusadmin"

_MAX_SOCKET_DIR_LEN = 90


class CyrusServer(ProcessLabServer):
    """A private Cyrus IMAP 3.6 server (see the module docstring)."""

    kind = "cyrus-slash"
    label = "cyrus"
    username_pattern = re.compile(r"^[A-Za-z0-9_-]+$")  # no "." (a hierarchy separator in one of the modes)

    def __init__(self, root: Path, name: str = "cyrus", *, separator: str = "/", ca: LabCA | None = None) -> None:
        if separator not in ("/", "."):
            raise ValueError(f"Cyrus lab servers use separator '/' or '.', not {separator!r}")
        super().__init__(root, name, separator=separator, prefix="" if separator == "/" else "INBOX.", ca=ca)
        self.imapd_conf = self.root / "imapd.conf"
        self.cyrus_conf = self.root / "cyrus.conf"
        self.auth_dir = self.root / "auth"
        self.users_db = self.auth_dir / "users.db"
        self.config_dir = self.root / "config"
        self.partition_dir = self.root / "partition"
        self.run_dir = self.root / "run"
        self.stderr_path = self.root / "master.stderr"
        self.pid_path = self.run_dir / "master.pid"
        self.marker_path = self.cyrus_conf
        self._pending_mailboxes: list[str] = []
        self._admin = LabUser(CYRUS_ADMIN, secrets.token_urlsafe(12))
        self._uid_gid: tuple[int, int] = (os.getuid(), os.getgid())

    @property
    def admin(self) -> LabUser:
        return self._admin

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<CyrusServer {self.name} sep={self.separator!r} {self.host}:{self.port}/{self.tls_port} {state}>"

    # ------------------------------------------------------------------ setup

    def _prepare(self) -> None:
        if len(str(self.run_dir)) > _MAX_SOCKET_DIR_LEN:
            raise LabError(f"Cyrus lab root {self.root} is too long for UNIX socket paths: use a shorter one")
        for directory in (self.root, self.auth_dir, self.config_dir, self.partition_dir, self.run_dir, self.tls_dir):
            directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._uid_gid = _ensure_system_user()
            self.root.chmod(0o755)
            _check_traversable(self.root, *self._uid_gid)
        cert, key = self.tls_dir / "cert.pem", self.tls_dir / "key.pem"
        if not (cert.exists() and key.exists()):
            self.ca.issue(self.tls_dir, ["127.0.0.1", "localhost"])
        with contextlib.closing(sqlite3.connect(self.users_db)) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS users (username TEXT PRIMARY KEY, password TEXT NOT NULL)")
            db.execute("INSERT OR REPLACE INTO users VALUES (?, ?)", (self._admin.username, self._admin.password))
        uid, gid = self._uid_gid
        for path in (self.auth_dir, self.users_db, self.config_dir, self.partition_dir, self.run_dir, key):
            os.chown(path, uid, gid)
        for path in (self.auth_dir, self.config_dir, self.partition_dir, self.run_dir):
            path.chmod(0o700)
        self.users_db.chmod(0o600)
        self.imapd_conf.write_text(self._imapd_conf(cert, key))
        self.cyrus_conf.write_text(self._cyrus_conf())

    def _imapd_conf(self, cert: Path, key: Path) -> str:
        user = LAB_SYSTEM_USER if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
        hierarchy = "yes" if self.separator == "/" else "no"
        return f"""\
# Generated by mailmirror.lab.cyrus for the lab server {self.name!r}. Rewritten on every start.
servername: mmlab-{self.name}
configdirectory: {self.config_dir}
defaultpartition: default
partition-default: {self.partition_dir}
cyrus_user: {user}
admins: {CYRUS_ADMIN}
altnamespace: {hierarchy}
unixhierarchysep: {hierarchy}
virtdomains: off
allowplaintext: yes
# Plain-text passwords from a private SQLite table (Cyrus SASL's sql auxprop plugin): real password
# checks, users added while the server runs.
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sql
sasl_sql_engine: sqlite3
sasl_sql_database: {self.users_db}
sasl_sql_select: SELECT password FROM users WHERE username = '%u'
sasl_mech_list: PLAIN LOGIN
tls_server_cert: {cert}
tls_server_key: {key}
idlesocket: {self.run_dir}/idle
notifysocket: {self.run_dir}/notify
lmtpsocket: {self.run_dir}/lmtp
mboxname_lockpath: {self.run_dir}/lock
proc_path: {self.run_dir}/proc
syslog_prefix: mmlab-{self.name}
failedloginpause: 0
"""

    def _cyrus_conf(self) -> str:
        imapd = lab_program("usr/lib/cyrus/bin/imapd")
        return f"""\
# Generated by mailmirror.lab.cyrus for the lab server {self.name!r}. Rewritten on every start.
START {{
}}
SERVICES {{
  imap  cmd="{imapd} -C {self.imapd_conf}" listen="{self.host}:{self.port}" prefork=1
  imaps cmd="{imapd} -s -C {self.imapd_conf}" listen="{self.host}:{self.tls_port}" prefork=0
}}
EVENTS {{
}}
DAEMON {{
}}
"""

    # ------------------------------------------------------------------ lifecycle

    def _command(self) -> list[str]:
        master = lab_program("usr/lib/cyrus/bin/master")
        return [str(master), "-C", str(self.imapd_conf), "-M", str(self.cyrus_conf), "-p", str(self.pid_path), "-D"]

    def _environment(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": lab_library_path()}

    def _started(self) -> None:
        self._create_pending_mailboxes()

    def _diagnostics(self) -> str:
        text = read_tail(self.stderr_path)
        return text or "(Cyrus logs to syslog only; master.stderr is empty)"

    # ------------------------------------------------------------------ users

    def _reserved_usernames(self) -> tuple[str, ...]:
        return (CYRUS_ADMIN,)

    def _store_user(self, user: LabUser) -> None:
        """A password row, then its mailbox (created by the admin; at start() when stopped)."""
        self._prepare_dirs_for_users()
        with contextlib.closing(sqlite3.connect(self.users_db)) as db, db:
            db.execute("INSERT INTO users VALUES (?, ?)", (user.username, user.password))
        self._users[user.username] = user
        self._pending_mailboxes.append(user.username)
        if self.running:
            self._create_pending_mailboxes()

    def _prepare_dirs_for_users(self) -> None:
        if not self.users_db.exists():
            self._prepare()

    def _create_pending_mailboxes(self) -> None:
        if not self._pending_mailboxes:
            return
        with self.connect(self._admin) as admin:
            for username in self._pending_mailboxes:
                admin.create_folder(f"user{self.separator}{username}")
        self._pending_mailboxes.clear()


def _main() -> None:  # pragma: no cover - a debugging aid
    import argparse

    parser = argparse.ArgumentParser(description="Run a private Cyrus IMAP lab server until Ctrl-C.")
    parser.add_argument("root", type=Path, help="directory for its configuration, mail and TLS material")
    parser.add_argument("--separator", choices=["/", "."], default="/")
    args = parser.parse_args()
    with CyrusServer(args.root, "manual", separator=args.separator) as server:
        user = server.add_user("alice", "secret")
        admin = server.admin
        serve_until_interrupted(server, "Cyrus", f"user {user.username} / {user.password}; admin {admin.username} / "
                                f"{admin.password}", f"config in {server.root}; Ctrl-C stops it")  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    _main()
