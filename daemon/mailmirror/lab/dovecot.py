"""Throwaway private Dovecot servers on 127.0.0.1 for the demo, the test suite and the benchmarks.

Every :class:`DovecotServer` lives entirely inside its own ``root`` directory: configuration, base_dir
(sockets, ``master.pid``), state_dir, log, TLS material, the passwd-file and the Maildirs.  Nothing in
``/etc`` is read or written: Dovecot is started as ``dovecot -F -c <root>/dovecot.conf`` and that
configuration includes nothing else.

Layout of ``root``::

    dovecot.conf      the generated configuration
    users/<user>      passwd-file of each user (passdb + userdb, ``{PLAIN}`` password, userdb fields)
    passwd            all users in one passwd-file (for humans; fallback passdb for unknown users)
    dovecot.log       everything Dovecot logs (master, login, auth, imap)
    dovecot.stderr    stdout/stderr of the master (fatal configuration errors end up here)
    run/              base_dir
    state/            state_dir
    tls/              server certificate + key (and the CA when none was given)
    mail/<user>/      home of each user, mail in ``Maildir/``

Running as root (what CI does), Dovecot refuses to touch mail as root, so the mail, login and internal
processes run as the unprivileged system user ``mailmirror-lab`` (created with ``useradd --system`` when
missing).  That user must be able to traverse every directory above ``root``: use a directory made with
``tempfile.mkdtemp()`` (not pytest's ``tmp_path``, whose parents are ``0700``).  Not running as root,
everything runs as the current user.

Dovecot facts these servers rely on (Dovecot 2.3.19):

* A passwd-file is re-read when its mtime or size changes, but stat()ed at most once per second
  (``last_sync_time == ioloop_time``), so a user appended to a shared file just after another login
  may be unknown for up to a second.  Hence one passwd-file per user (``users/<name>``, a passwd-file
  path with ``%u``): a new file is always read fresh, and :meth:`DovecotServer.add_user` users can log
  in immediately, also while the server runs.  ``passwd`` lists every user (and rejects unknown ones).
* ``imap_capability`` set to an explicit list replaces what Dovecot advertises before and after login
  (``STARTTLS`` and ``AUTH=`` are still added by the login process).  Dropping a capability only hides
  it: Dovecot still honours the commands and still sends the response codes (``ENABLE QRESYNC``,
  ``UID MOVE``, ``UID EXPUNGE`` work, APPEND still answers ``[APPENDUID ...]``, SELECT reports
  HIGHESTMODSEQ).  Code under test must decide from what is advertised.
* APPENDed messages with bare LF line endings come back from FETCH BODY[] with CRLF (RFC822.SIZE
  counts the CRLF form); CRLF messages come back byte for byte.
* ``quota_max_mail_size`` (quota plugin) refuses bigger APPENDs with
  ``NO [LIMIT] Mail size is larger than the maximum size allowed by server configuration``.  Dovecot 2.3
  does not implement APPENDLIMIT (RFC 7889): it is neither advertised nor accepted as a STATUS item.
* INTERNALDATE is kept to the second; the timezone offset is not stored (it is returned in the server's
  local time), so compare instants, not offsets.
* A failed LOGIN answers ``NO [AUTHENTICATIONFAILED] Authentication failed.`` after up to 0.5 s even
  with ``auth_failure_delay = 0`` (failures are flushed by a 500 ms timer).
* Folder names: with separator "/" (``LAYOUT=fs``) names may contain "." but may not start with "~" and
  "mAildir" is reserved; with the Maildir++ layout (separator ".") names may not contain "/".

``DovecotServer(..., auth_lab=True)`` adds what the authentication tests need (off by default, so other
servers are unchanged): ``auth_mechanisms = plain login xoauth2 oauthbearer scram-sha-1 scram-sha-256``;
a master-user passdb (``masters``, ``master = yes``, ``pass = yes``, ``auth_master_user_separator = *``)
filled by :meth:`DovecotServer.add_master_user`; and an ``oauth2`` passdb limited to
``mechanisms = xoauth2 oauthbearer`` (without that filter it also takes a JWT as a LOGIN password)
validating JWTs locally (``introspection_mode = local``, ``username_attribute = email``) with keys at
``oauth2-keys/<azp or "default">/<ALG>/<kid or "default">`` (:meth:`DovecotServer.add_oauth2_key`:
HS* keys base64 on one line, RS*/ES* PEM public keys).  Tokens need header ``typ: JWT`` and claims
``sub``, ``exp`` and ``email``; a refused token gets a ``+ <base64 JSON>`` challenge that the client
answers (empty line for XOAUTH2, ``AQ==`` for OAUTHBEARER) before ``NO [AUTHENTICATIONFAILED]``.  Keys are
cached until ``doveadm reload``, and the first login right after a reload may fail with an internal
error: add keys and master users before :meth:`start`.

For speed the servers use ``mail_fsync = never``: fine for throwaway mail, not a durability benchmark.
The usual tools work against an instance: ``doveadm -c <root>/dovecot.conf mailbox list -u <user>``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import grp
import hashlib
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from imapclient import IMAPClient

__all__ = [
    "DOVECOT_BINARY",
    "DOVECOT_DEFAULT_CAPABILITIES",
    "LAB_SYSTEM_USER",
    "SPECIAL_USE_MAILBOXES",
    "DovecotServer",
    "LabCA",
    "LabError",
    "LabServerBase",
    "LabUser",
    "SeedMessage",
    "dovecot_available",
    "free_port",
    "seed",
    "seed_mailbox",
    "server_folder_name",
]

#: The Dovecot master binary (override with ``MAILMIRROR_DOVECOT`` for unusual installs).
DOVECOT_BINARY = Path(os.environ.get("MAILMIRROR_DOVECOT", "/usr/sbin/dovecot"))

#: Unprivileged system user the mail/login/auth processes run as when we are root.
LAB_SYSTEM_USER = "mailmirror-lab"

#: What Dovecot 2.3.19 advertises after login with this configuration and ``imap_capability`` unset.
#: ``drop_capabilities`` is applied to this list (tests/test_lab.py checks it still matches the server).
DOVECOT_DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "SORT", "SORT=DISPLAY",
    "THREAD=REFERENCES", "THREAD=REFS", "THREAD=ORDEREDSUBJECT", "MULTIAPPEND", "URL-PARTIAL", "CATENATE",
    "UNSELECT", "CHILDREN", "NAMESPACE", "UIDPLUS", "LIST-EXTENDED", "I18NLEVEL=1", "CONDSTORE", "QRESYNC",
    "ESEARCH", "ESORT", "SEARCHRES", "WITHIN", "CONTEXT=SEARCH", "LIST-STATUS", "BINARY", "MOVE",
    "SNIPPET=FUZZY", "PREVIEW=FUZZY", "PREVIEW", "STATUS=SIZE", "SAVEDATE", "LITERAL+", "NOTIFY",
    "SPECIAL-USE",
)  # fmt: skip

#: Mailboxes that carry a SPECIAL-USE attribute when they exist (``auto = no``: never created by Dovecot).
SPECIAL_USE_MAILBOXES: Mapping[str, str] = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
_LOG_TAIL_LINES = 40
# sockaddr_un.sun_path is 108 bytes; Dovecot's longest socket name under base_dir is ~25 characters.
_MAX_BASE_DIR_LEN = 80
_USERNAME_RE = re.compile(r"^[A-Za-z0-9._@-]+$")  # Dovecot's default auth_username_chars
_APPENDUID_RE = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)


class LabError(RuntimeError):
    """A lab server could not be set up, started or stopped."""


@dataclass(frozen=True)
class LabUser:
    username: str
    password: str


# --------------------------------------------------------------------------------------------- helpers

_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (and not handed out before by this process)."""
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise LabError("could not find a free TCP port on 127.0.0.1")


def dovecot_available() -> bool:
    """True when the Dovecot binary this module starts is installed and executable."""
    return DOVECOT_BINARY.is_file() and os.access(DOVECOT_BINARY, os.X_OK)


def _run(argv: Sequence[str | Path], what: str) -> None:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"{what} failed (exit {proc.returncode}): {' '.join(map(str, argv))}\n{proc.stderr}")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_system_user_lock = threading.Lock()


def _ensure_system_user() -> tuple[int, int]:
    """Create ``mailmirror-lab`` (root only) if missing; return its uid and gid."""
    with _system_user_lock:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(LAB_SYSTEM_USER)
            return entry.pw_uid, entry.pw_gid
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        proc = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", LAB_SYSTEM_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        # 9 = "username already in use": another process won the race, which is fine.
        if proc.returncode not in (0, 9):
            raise LabError(f"useradd {LAB_SYSTEM_USER} failed (exit {proc.returncode}): {proc.stderr}")
        entry = pwd.getpwnam(LAB_SYSTEM_USER)
        return entry.pw_uid, entry.pw_gid


def _check_traversable(path: Path, uid: int, gid: int) -> None:
    """Raise a clear error when ``uid`` cannot reach ``path`` (some parent lacks the x bit for it)."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise LabError(
                f"the unprivileged user {LAB_SYSTEM_USER!r} that Dovecot's mail processes run as cannot "
                f"reach {path}: {parent} has mode {st.st_mode & 0o777:04o}. Put lab servers under a "
                "directory every user may traverse, e.g. tempfile.mkdtemp() chmod-ed 0755 "
                "(pytest's tmp_path lives below a 0700 directory)."
            )


# -------------------------------------------------------------------------------------------------- CA


class LabCA:
    """A throwaway certificate authority made with the ``openssl`` command line tool.

    Reuses the CA already present in ``directory`` (so a session, or several servers, can share one).
    Also provides RFC 7919 ``ffdhe2048`` DH parameters (Dovecot 2.3 wants ``ssl_dh``; generating the
    standard group is instant, unlike ``openssl dhparam``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).absolute()
        self.cert_path = self.directory / "ca.pem"
        self.key_path = self.directory / "ca.key"
        self.dh_path = self.directory / "dh.pem"
        self.directory.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.directory / ".lock"):
            if not (self.cert_path.exists() and self.key_path.exists()):
                self._create()
            if not self.dh_path.exists():
                tmp = self.directory / f"dh.pem.tmp{os.getpid()}"
                _run(
                    ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt",
                     "dh_param:ffdhe2048", "-out", tmp],
                    "openssl genpkey (DH parameters)",
                )  # fmt: skip
                tmp.replace(self.dh_path)

    def _create(self) -> None:
        cnf = self.directory / "ca.cnf"
        cnf.write_text(
            "[req]\ndistinguished_name = dn\nprompt = no\n"
            "[dn]\nCN = mailmirror lab CA\nO = mailmirror test lab\n"
            "[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n"
            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n"
        )
        key_tmp = self.directory / "ca.key.tmp"
        cert_tmp = self.directory / "ca.pem.tmp"
        _run(
            ["openssl", "req", "-x509", "-config", cnf, "-extensions", "v3_ca", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc", "-keyout", key_tmp, "-out", cert_tmp,
             "-days", "3650", "-set_serial", "0x" + secrets.token_hex(16)],
            "openssl req (lab CA)",
        )  # fmt: skip
        key_tmp.chmod(0o600)
        key_tmp.replace(self.key_path)
        cert_tmp.replace(self.cert_path)

    def issue(self, directory: Path, names: Sequence[str]) -> tuple[Path, Path]:
        """Issue a server certificate for ``names`` (IP addresses and/or DNS names; the first is the CN).

        Writes ``cert.pem`` and ``key.pem`` (mode 0600) into ``directory`` and returns their paths.
        """
        if not names:
            raise ValueError("issue() needs at least one name")
        directory = Path(directory).absolute()
        directory.mkdir(parents=True, exist_ok=True)
        sans = []
        for name in names:
            try:
                ipaddress.ip_address(name)
                sans.append(f"IP:{name}")
            except ValueError:
                sans.append(f"DNS:{name}")
        cnf = directory / "cert.cnf"
        cnf.write_text(
            f"[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {names[0]}\n"
            "[v3_srv]\nbasicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n"
            f"subjectAltName = {', '.join(sans)}\n"
            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid, issuer\n"
        )
        cert_path, key_path, csr_path = directory / "cert.pem", directory / "key.pem", directory / "cert.csr"
        _run(
            ["openssl", "req", "-new", "-config", cnf, "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-noenc", "-keyout", key_path, "-out", csr_path],
            "openssl req (server key)",
        )  # fmt: skip
        key_path.chmod(0o600)
        _run(
            ["openssl", "x509", "-req", "-in", csr_path, "-CA", self.cert_path, "-CAkey", self.key_path,
             "-set_serial", "0x" + secrets.token_hex(16), "-days", "825", "-extfile", cnf,
             "-extensions", "v3_srv", "-out", cert_path],
            "openssl x509 (sign server certificate)",
        )  # fmt: skip
        csr_path.unlink()
        return cert_path, key_path

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA (hostname checking on)."""
        return ssl.create_default_context(cafile=str(self.cert_path))


# ---------------------------------------------------------------------------------------------- server

_running_lock = threading.Lock()
_running: set[LabServerBase] = set()


def track_running(server: LabServerBase, running: bool) -> None:
    """Remember started lab servers (every kind), so that they are stopped when Python exits (atexit)
    even if nobody called stop()."""
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


def _sigterm_to_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _exit_cleanly_on_sigterm() -> None:
    """With the default disposition, SIGTERM (``timeout``, ``kill``, CI cancellation) ends Python
    without running ``finally`` blocks or atexit hooks, leaking every running server.  Turn it into
    SystemExit instead -- only when nobody installed a handler, and only from the main thread."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_exit)


def _proc_cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith("Z")


class LabServerBase:
    """What every lab server kind shares (Dovecot here, Cyrus and Courier in :mod:`mailmirror.lab.cyrus`
    and :mod:`mailmirror.lab.courier`): a private instance in ``root`` on 127.0.0.1 with a plain port that
    offers STARTTLS and an implicit-TLS port (chosen here, kept by :meth:`restart`), a certificate from
    ``ca`` (a CA private to the server when None), its users, logged-in clients, and ``with`` support.

    A kind implements :meth:`start` and :meth:`stop` (its server process is ``_proc``) and ``add_user``.
    """

    host: str = "127.0.0.1"

    def __init__(self, root: Path, name: str, *, separator: str, prefix: str, ca: LabCA | None) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"server name {name!r} must be letters, digits, '-' or '_'")
        self.root = Path(root).absolute()
        self.name = name
        self.separator = separator
        self.prefix = prefix
        self.port = free_port()
        self.tls_port = free_port()
        self.tls_dir = self.root / "tls"
        self._ca = ca
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._users: dict[str, LabUser] = {}
        self.start_seconds: float | None = None  # how long the last start() took

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

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop and start again on the same ports, keeping users and mail."""
        with self._lock:
            self.stop()
            self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def connect(self, user: LabUser, *, tls: str = "none", timeout: float = 30) -> IMAPClient:
        """A logged-in IMAPClient (TLS verified against :attr:`ca_path`, hostname 127.0.0.1).

        ``normalise_times`` is switched off so INTERNALDATEs come back timezone-aware.
        """
        return connect_client(self.host, self.port, self.tls_port, self.ssl_context(), user, tls=tls, timeout=timeout)

    def folder_name(self, logical: str) -> str:
        """Server name of a "/"-separated logical folder name (see :func:`server_folder_name`)."""
        return server_folder_name(logical, self.separator, self.prefix)


class DovecotServer(LabServerBase):
    """A private Dovecot 2.3 IMAP server on 127.0.0.1 (see the module docstring).

    ``port`` speaks plain IMAP and offers STARTTLS; ``tls_port`` is implicit TLS.  Both are chosen in
    the constructor and kept by :meth:`restart`.  The server certificate is valid for ``127.0.0.1`` and
    ``localhost`` and signed by ``ca`` (a CA private to this server is made when ``ca`` is None).

    ``separator``/``prefix`` define the personal namespace (``inbox = yes``); ``separator="."`` with
    ``prefix="INBOX."`` imitates Cyrus/Courier (Maildir++ on disk).  With any other separator the mail
    is stored with ``LAYOUT=fs`` so folder names may contain dots.
    """

    host: str = "127.0.0.1"

    def __init__(
        self,
        root: Path,
        name: str = "imap",
        *,
        separator: str = "/",
        prefix: str = "",
        drop_capabilities: Sequence[str] = (),
        ca: LabCA | None = None,
        special_use: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        auth_lab: bool = False,
    ) -> None:
        if len(separator) != 1 or separator.isalnum() or separator in ' "\\\r\n':
            raise ValueError(f"unsupported hierarchy separator {separator!r}")
        if prefix and not prefix.endswith(separator):
            raise ValueError(f"namespace prefix {prefix!r} must end with the separator {separator!r}")
        known = {c.upper(): c for c in DOVECOT_DEFAULT_CAPABILITIES}
        unknown = [c for c in drop_capabilities if c.upper() not in known]
        if unknown:
            raise ValueError(
                f"cannot drop {', '.join(unknown)}: not advertised by Dovecot "
                f"(known: {' '.join(DOVECOT_DEFAULT_CAPABILITIES)})"
            )
        super().__init__(root, name, separator=separator, prefix=prefix, ca=ca)
        self.drop_capabilities: tuple[str, ...] = tuple(c.upper() for c in drop_capabilities)
        # folder name (as on the server) -> special-use attribute; default: SPECIAL_USE_MAILBOXES
        self.special_use: dict[str, str] = dict(SPECIAL_USE_MAILBOXES if special_use is None else special_use)
        self.config_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self.stderr_path = self.root / "dovecot.stderr"
        self.passwd_path = self.root / "passwd"
        self.users_dir = self.root / "users"
        self.mail_root = self.root / "mail"
        self.state_dir = self.root / "state"
        self.auth_lab = auth_lab
        self.oauth2_keys_dir = self.root / "oauth2-keys"
        self.masters_path = self.root / "masters"
        self._base_dir: Path | None = None
        self._uid_gid: tuple[int, int] | None = None
        self._started_once = False

    # ------------------------------------------------------------------ properties

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What the server advertises after login (the default list minus ``drop_capabilities``)."""
        return tuple(c for c in DOVECOT_DEFAULT_CAPABILITIES if c.upper() not in self.drop_capabilities)

    @property
    def instance_name(self) -> str:
        """Dovecot ``instance_name``: process titles are ``dovecot-<instance_name>/<service>``."""
        return f"mmlab-{self.name}-{self.port}"

    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            base = self.root / "run"
            if len(str(base)) > _MAX_BASE_DIR_LEN:
                # UNIX socket paths are limited to 108 bytes: use a short directory, the same one every
                # time for this root (so a stale master from a killed run is found and stopped).
                digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
                base = Path(tempfile.gettempdir()) / f"mmlab-run-{digest}"
            self._base_dir = base
        return self._base_dir

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DovecotServer {self.name} {self.host}:{self.port}/{self.tls_port} {state} root={self.root}>"

    # ------------------------------------------------------------------ setup

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.mail_root, self.state_dir, self.tls_dir):
            d.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            uid, gid = _ensure_system_user()
            self._uid_gid = (uid, gid)
            self.root.chmod(0o755)
            _check_traversable(self.root, uid, gid)
            for d in (self.mail_root, self.state_dir):
                os.chown(d, uid, gid)
                d.chmod(0o750)
        else:
            self._uid_gid = (os.getuid(), os.getgid())
        cert, key = self.tls_dir / "cert.pem", self.tls_dir / "key.pem"
        if not (cert.exists() and key.exists()):
            self.ca.issue(self.tls_dir, ["127.0.0.1", "localhost"])
        self.users_dir.mkdir(exist_ok=True)
        self.passwd_path.touch()
        for path in (self.users_dir, self.passwd_path, *self.users_dir.iterdir()):
            self._secure(path)
        if self.auth_lab:
            self._prepare_auth_lab()
        self.config_path.write_text(self._config_text(cert, key))

    def _secure(self, path: Path) -> None:
        """Credentials: readable by Dovecot's auth process (group of the lab user when root), nobody else."""
        directory = path.is_dir()
        if os.geteuid() == 0 and self._uid_gid is not None:
            os.chown(path, 0, self._uid_gid[1])
            path.chmod(0o750 if directory else 0o640)
        else:
            path.chmod(0o700 if directory else 0o600)

    def _config_text(self, cert: Path, key: Path) -> str:
        if os.geteuid() == 0:
            user = group = LAB_SYSTEM_USER
        else:
            user = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
        # "." -> Maildir++ (Courier layout).  Otherwise fs layout: the on-disk hierarchy uses directories,
        # so names may contain '.'; DIRNAME keeps cur/new/tmp out of the way of folders called "new".
        mail_location = "maildir:~/Maildir" if self.separator == "." else "maildir:~/Maildir:LAYOUT=fs:DIRNAME=mAildir"
        capability = ""
        if self.drop_capabilities:
            capability = f"imap_capability = {' '.join(self.capabilities)}\n"
        special = "".join(
            f"  mailbox {_dovecot_quoted(box)} {{\n    special_use = {use}\n    auto = no\n  }}\n"
            for box, use in self.special_use.items()
        )
        return f"""\
# Generated by mailmirror.lab.dovecot for the lab server {self.name!r}. Do not edit: rewritten on every start.
# Self-contained: no !include, nothing from /etc.
protocols = imap
listen = {self.host}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
instance_name = {self.instance_name}
log_path = {self.log_path}
log_timestamp = "%Y-%m-%d %H:%M:%S "
auth_verbose = yes
shutdown_clients = yes
version_ignore = yes

default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
mail_uid = {user}
mail_gid = {group}
first_valid_uid = 1
first_valid_gid = 1

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_dh = <{self.ca.dh_path}

disable_plaintext_auth = no
auth_mechanisms = {self._auth_mechanisms()}
auth_username_format = %u
auth_failure_delay = 0
{self._auth_lab_passdbs()}
# One passwd-file per user: Dovecot stats a passwd-file at most once per second, so a user appended to
# a shared file right after another login could stay invisible for up to a second.  A new per-user
# file is always read fresh.  Unknown users (no file: internal failure) fall through to the
# aggregated passwd file, which answers "unknown user" -> NO [AUTHENTICATIONFAILED].
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.users_dir}/%u
  result_internalfail = continue
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_path}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.users_dir}/%u
  default_fields = home={self.mail_root}/%u
}}

mail_location = {mail_location}
mail_fsync = never
mail_plugins = quota
plugin {{
  # quota with no limit: only per-user quota_max_mail_size (userdb field) is enforced
  quota = count:User quota
  quota_vsizes = yes
}}

namespace inbox {{
  inbox = yes
  separator = {self.separator}
  prefix = {self.prefix}
{special}}}

protocol imap {{
  mail_max_userip_connections = 1000
  {capability}}}

service imap-login {{
  chroot =
  service_count = 0
  client_limit = 1000
  process_limit = 16
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.tls_port}
    ssl = yes
  }}
}}
service imap {{
  process_limit = 1024
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service auth-worker {{
  user = $default_internal_user
}}
"""

    # ------------------------------------------------------------------ auth lab (OAuth2, master users, SCRAM)

    def _auth_mechanisms(self) -> str:
        if not self.auth_lab:
            return "plain login"
        return "plain login xoauth2 oauthbearer scram-sha-1 scram-sha-256"

    def _auth_lab_passdbs(self) -> str:
        """With ``auth_lab``: master users (``user*admin`` or SASL PLAIN authzid) and JWTs validated locally.

        The oauth2 passdb is limited to the OAuth2 mechanisms: without that filter it would also accept a
        JWT as a LOGIN password.  ``pass = yes`` makes a master login also check the target user exists.
        """
        if not self.auth_lab:
            return ""
        return f"""\
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.masters_path}
  master = yes
  pass = yes
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.root / "dovecot-oauth2.conf.ext"}
}}
"""

    def _prepare_auth_lab(self) -> None:
        self.oauth2_keys_dir.mkdir(exist_ok=True)
        self.masters_path.touch()
        (self.root / "dovecot-oauth2.conf.ext").write_text(
            "introspection_mode = local\n"
            f"local_validation_key_dict = fs:posix:prefix={self.oauth2_keys_dir}/\n"
            "username_attribute = email\n"
        )
        for path in (self.masters_path, self.root / "dovecot-oauth2.conf.ext", *self.oauth2_keys_dir.rglob("*")):
            self._secure(path)
        self._secure(self.oauth2_keys_dir)

    def add_master_user(self, username: str | None = None, password: str | None = None) -> LabUser:
        """A master (admin) user who may log in as any user (``auth_lab`` servers only).

        Add master users before :meth:`start`: Dovecot stats the shared masters file at most once a second,
        so one added while the server runs may stay unknown for up to a second."""
        if not self.auth_lab:
            raise LabError("master users need a server made with auth_lab=True")
        username = username or "admin" + secrets.token_hex(4)
        password = password or secrets.token_urlsafe(12)
        if not _USERNAME_RE.match(username) or any(ch in password for ch in ":\r\n\0"):
            raise ValueError("unsupported master user name or password")
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            with self.masters_path.open("a") as fh:
                fh.write(f"{username}:{{PLAIN}}{password}\n")
            self._secure(self.masters_path)
        return LabUser(username, password)

    def add_oauth2_key(self, algorithm: str, key: str, *, kid: str = "default", azp: str = "default") -> None:
        """Trust a JWT signing key: HS* keys as raw secrets (stored base64), RS*/ES* keys as PEM public keys.

        Dovecot caches keys: call :meth:`reload` after adding one to a running server.
        """
        if not self.auth_lab:
            raise LabError("OAuth2 keys need a server made with auth_lab=True")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", kid + azp) or not re.fullmatch(r"(HS|RS|ES|PS)(256|384|512)", algorithm):
            raise ValueError("unsupported kid, azp or algorithm")
        value = base64.b64encode(key.encode()).decode() if algorithm.startswith("HS") else key
        with self._lock:
            directory = self.oauth2_keys_dir / azp / algorithm
            directory.mkdir(parents=True, exist_ok=True)
            (directory / kid).write_text(value if value.endswith("\n") else value + "\n")
            for path in (self.oauth2_keys_dir, self.oauth2_keys_dir / azp, directory, directory / kid):
                self._secure(path)

    def reload(self) -> None:
        """``doveadm reload``: the auth process forgets cached keys (and re-reads its configuration)."""
        self._prepare()
        _run([shutil.which("doveadm") or "/usr/bin/doveadm", "-c", self.config_path, "reload"], "doveadm reload")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Write the configuration and start Dovecot; return once the plain port greets."""
        with self._lock:
            if self.running:
                return
            began = time.monotonic()
            if not dovecot_available():
                raise LabError(f"Dovecot is not installed: {DOVECOT_BINARY} is missing or not executable "
                               "(Debian/Ubuntu: apt-get install dovecot-imapd)")  # fmt: skip
            self._prepare()
            self._kill_stale_master()
            _exit_cleanly_on_sigterm()
            attempts = 1 if self._started_once else 4
            for attempt in range(attempts):
                try:
                    self._spawn_and_wait()
                    break
                except LabError as exc:
                    if attempt + 1 < attempts and "Address already in use" in str(exc):
                        # Another program grabbed a port between free_port() and bind(): pick new ones.
                        self.port, self.tls_port = free_port(), free_port()
                        self.config_path.write_text(
                            self._config_text(self.tls_dir / "cert.pem", self.tls_dir / "key.pem")
                        )
                        continue
                    raise
            self._started_once = True
            self.start_seconds = time.monotonic() - began
            track_running(self, True)

    def _spawn_and_wait(self) -> None:
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                [str(DOVECOT_BINARY), "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # own process group: stop() signals the whole instance at once
                close_fds=True,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                self._reap_leftovers()
                raise LabError(f"dovecot {self.name} exited with status {code} while starting\n"
                               + self._diagnostics(log_offset))  # fmt: skip
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as sock:
                    greeting = sock.recv(512)
                if greeting.startswith(b"* OK"):
                    with socket.create_connection((self.host, self.tls_port), timeout=2):
                        pass
                    return
                last_error = LabError(f"unexpected greeting {greeting!r}")
            except OSError as exc:
                last_error = exc
            time.sleep(0.01)
        self._terminate()
        raise LabError(
            f"dovecot {self.name} did not greet on {self.host}:{self.port} within {_START_TIMEOUT:.0f}s "
            f"(last error: {last_error})\n" + self._diagnostics(log_offset)
        )

    def _diagnostics(self, log_offset: int) -> str:
        parts = []
        for label, path, offset in (("stderr", self.stderr_path, 0), ("log", self.log_path, log_offset)):
            try:
                data = path.read_bytes()[offset:]
            except OSError:
                continue
            lines = data.decode("utf-8", "replace").splitlines()[-_LOG_TAIL_LINES:]
            if lines:
                parts.append(f"--- tail of {path} ({label}) ---\n" + "\n".join(lines))
        return "\n".join(parts) or "(Dovecot wrote nothing to its log)"

    def stop(self) -> None:
        """Stop the server and every process it started.  Idempotent."""
        with self._lock:
            self._terminate()
            track_running(self, False)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is not None:
            # While the master is not reaped (even as a zombie) its pid, hence our process group id,
            # cannot be reused, so signalling the group is safe.  SIGTERM to the whole group stops every
            # process at once (~20 ms); SIGTERM to the master alone takes > 1 s.
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                self._wait_for_master(proc)
            self._proc = None
        self._reap_leftovers()

    def _wait_for_master(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + _STOP_TIMEOUT
        children_gone_since: float | None = None
        while proc.poll() is None:
            now = time.monotonic()
            if now > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            if any(pid != proc.pid for pid in self.pids()):
                children_gone_since = None
            elif children_gone_since is None:
                children_gone_since = now
            elif now - children_gone_since > 0.1:
                # Every child is gone but the master sometimes idles in its shutdown wait for a
                # second: nothing is left for it to do but to remove master.pid, so end it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                with contextlib.suppress(OSError):
                    (self.base_dir / "master.pid").unlink()
                break
            time.sleep(0.01)

    def _reap_leftovers(self) -> None:
        """Wait for (and at last SIGKILL) any process of this instance still alive."""
        deadline = time.monotonic() + _STOP_TIMEOUT
        sig = signal.SIGTERM
        while True:
            pids = self.pids()
            if not pids:
                return
            if time.monotonic() > deadline:
                if sig == signal.SIGKILL:
                    raise LabError(f"dovecot {self.name}: processes {pids} survived SIGKILL")
                sig, deadline = signal.SIGKILL, time.monotonic() + _STOP_TIMEOUT
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            time.sleep(0.02)

    def pids(self) -> list[int]:
        """Live processes of this instance: the master (its command line names our config file) and
        its children (process title ``dovecot-<instance_name>/...``)."""
        conf = os.fsencode(str(self.config_path))
        title = f"dovecot-{self.instance_name}/".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            cmdline = _proc_cmdline(pid)
            if not cmdline:
                continue
            if (cmdline.startswith(title) or conf in cmdline.split(b"\0")) and not _is_zombie(pid):
                found.append(pid)
        return found

    def _kill_stale_master(self) -> None:
        """A previous process may have died without stopping its server (SIGKILL): clean up."""
        pidfile = self.base_dir / "master.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().split()[0])
            if os.fsencode(str(self.config_path)) in _proc_cmdline(pid).split(b"\0"):
                # Our masters lead their own process group: this takes their children along.
                os.killpg(pid, signal.SIGKILL)
                deadline = time.monotonic() + _STOP_TIMEOUT
                while _proc_cmdline(pid) and not _is_zombie(pid) and time.monotonic() < deadline:
                    time.sleep(0.01)
                # Until init reaps the zombie, Dovecot would still find the pid alive.
                pidfile.unlink()
        self._reap_leftovers()

    # ------------------------------------------------------------------ users

    def add_user(
        self, username: str | None = None, password: str | None = None, *, max_mail_size: int | None = None
    ) -> LabUser:
        """Add a user (usable immediately, also while running: Dovecot re-reads the passwd-file).

        ``max_mail_size`` (bytes) makes Dovecot refuse bigger APPENDs (quota_max_mail_size).
        """
        if username is None:
            username = "u" + secrets.token_hex(6)
        if password is None:
            password = secrets.token_urlsafe(12)
        if not _USERNAME_RE.match(username):
            raise ValueError(f"unsupported lab username {username!r} (letters, digits and ._@- only)")
        if any(ch in password for ch in ":\r\n\0") or not password:
            raise ValueError("lab passwords must be non-empty and contain no ':' or line breaks")
        if max_mail_size is not None and max_mail_size <= 0:
            raise ValueError("max_mail_size must be a positive number of bytes")
        extra = f"userdb_quota_max_mail_size={max_mail_size}" if max_mail_size is not None else ""
        # user:password:uid:gid:gecos:home:shell:extra_fields
        line = f"{username}:{{PLAIN}}{password}::::::{extra}\n"
        with self._lock:
            user_file = self.users_dir / username
            if username in self._users or user_file.exists():
                raise ValueError(f"lab user {username!r} already exists on {self.name}")
            self.users_dir.mkdir(parents=True, exist_ok=True)
            # The per-user file is what Dovecot reads (see the config); write it atomically.
            tmp = self.users_dir / f".{username}.tmp"
            tmp.write_text(line)
            self._secure(tmp)
            tmp.replace(user_file)
            # The aggregated list: for humans, and the fallback passdb that rejects unknown users.
            with self.passwd_path.open("a") as fh:
                fh.write(line)
            self._secure(self.passwd_path)
            user = LabUser(username, password)
            self._users[username] = user
            return user


def connect_client(
    host: str, port: int, tls_port: int, context: ssl.SSLContext, user: LabUser, *, tls: str, timeout: float
) -> IMAPClient:
    """A logged-in IMAPClient to a lab server of any kind (``normalise_times`` off: dates timezone-aware)."""
    if tls not in ("none", "starttls", "implicit"):
        raise ValueError(f"tls must be 'none', 'starttls' or 'implicit', not {tls!r}")
    if tls == "implicit":
        client = IMAPClient(host, tls_port, ssl=True, ssl_context=context, timeout=timeout)
    else:
        client = IMAPClient(host, port, ssl=False, timeout=timeout)
    try:
        if tls == "starttls":
            client.starttls(context)
        client.login(user.username, user.password)
    except BaseException:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise
    client.normalise_times = False
    return client


# ------------------------------------------------------------------------------------------- seeding


@dataclass(frozen=True)
class SeedMessage:
    raw: bytes
    flags: tuple[str, ...] = ()
    internaldate: datetime | None = None  # timezone-aware


def _dovecot_quoted(name: str) -> str:
    """A mailbox name in dovecot.conf: bare when it is one word, else in double quotes."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_folder_name(logical: str, separator: str, prefix: str) -> str:
    """Map a "/"-separated folder name (as in :func:`mailmirror.lab.corpus.sample_mailbox`) to the name on
    a server with the given hierarchy ``separator`` and personal namespace ``prefix``.

    ``"Archive/2024"`` becomes ``"INBOX.Archive.2024"`` on a Cyrus-style server; INBOX stays INBOX.
    """
    if logical.upper() == "INBOX":
        return "INBOX"
    parts = logical.split("/")
    for part in parts:
        if not part or (separator != "/" and separator in part):
            raise ValueError(f"folder {logical!r} cannot be expressed with separator {separator!r}")
    return prefix + separator.join(parts)


def _appenduid(response: Any) -> int | None:
    data = response if isinstance(response, bytes) else str(response).encode()
    m = _APPENDUID_RE.search(data)
    return int(m.group(2)) if m else None


def seed(client: IMAPClient, folder: str, messages: Iterable[SeedMessage]) -> list[int]:
    """Create ``folder`` (and subscribe it) if missing, APPEND every message with its flags and
    INTERNALDATE, and return the UIDs in order.

    UIDs come from APPENDUID (UIDPLUS).  When the server does not return it, the new UIDs are found by
    SEARCHing the range above the UIDNEXT seen before appending (the folder is then left selected).
    """
    if folder.upper() != "INBOX" and not client.folder_exists(folder):
        client.create_folder(folder)
        client.subscribe_folder(folder)
    uidnext_before: int | None = None
    uids: list[int | None] = []
    for message in messages:
        if message.internaldate is not None and message.internaldate.tzinfo is None:
            raise ValueError("SeedMessage.internaldate must be timezone-aware")
        if uidnext_before is None:
            uidnext_before = int(client.folder_status(folder, [b"UIDNEXT"])[b"UIDNEXT"])
        flags = tuple(f for f in message.flags if f.lower() != "\\recent")
        response = client.append(folder, message.raw, flags=flags, msg_time=message.internaldate)
        uids.append(_appenduid(response))
    if any(uid is None for uid in uids):
        client.select_folder(folder, readonly=True)
        found = sorted(int(u) for u in client.search(["UID", f"{uidnext_before}:*"]))
        found = [u for u in found if uidnext_before is not None and u >= uidnext_before]
        if len(found) != len(uids):
            raise LabError(f"seed({folder!r}): appended {len(uids)} messages but found {len(found)} new UIDs")
        return found
    return [u for u in uids if u is not None]


def seed_mailbox(client: IMAPClient, mailbox: Mapping[str, Iterable[SeedMessage]]) -> dict[str, list[int]]:
    """Seed a whole mailbox (logical "/"-separated folder names, as from ``corpus.sample_mailbox``)
    into the account of ``client``, translating names with the server's personal NAMESPACE.

    Returns UIDs per *logical* folder name.
    """
    personal = client.namespace().personal
    prefix, separator = ("", "/")
    if personal:
        raw_prefix, raw_sep = personal[0]
        prefix = raw_prefix.decode() if isinstance(raw_prefix, bytes) else str(raw_prefix)
        if raw_sep is not None:
            separator = raw_sep.decode() if isinstance(raw_sep, bytes) else str(raw_sep)
    result: dict[str, list[int]] = {}
    for logical, messages in mailbox.items():
        result[logical] = seed(client, server_folder_name(logical, separator, prefix), messages)
    return result
