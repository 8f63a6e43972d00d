"""Locks: one process at a time per pair (PairLock), one writer at a time per destination mailbox
(DestinationLock, below).

Two daemons, or a daemon and a manual `sync`, never work on the same pair.

The lock is an flock(2) on a file per pair beside the state database (``state.db.locks/PAIR.lock``):
the kernel releases it when its holder dies, even by kill -9, so a crash never leaves a stale lock. The
file holds the holder's pid and start time, for the message to whoever finds it taken. flock locks
belong to an open file, so two threads of one process exclude each other too.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from mailmirror.config.mailboxes import MailboxIdentity
from mailmirror.errors import ConfigError, LockedError


class PairLock:
    def __init__(self, state_path: Path, pair: str) -> None:
        self.path = state_path.parent / f"{state_path.name}.locks" / f"{pair}.lock"
        self.pair = pair
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockedError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"pair '{self.pair}' is being synced by {holder}; this pass does not start (try again later)"
            ) from None
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"mailmirror pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- one writer per destination mailbox -------------------------------------------------------------------

log = logging.getLogger(__name__)

_SYSTEM_LOCK_DIR = Path("/run/mailmirror")
_registry_guard = threading.Lock()
_in_process: dict[str, threading.Lock] = {}


def default_lock_dir() -> Path:
    """Where destination locks live when daemon.lock_dir is not set: one directory for every config and
    state database of the machine (per user, when no shared one can be had).

    /run/mailmirror when it exists (the systemd units create it: RuntimeDirectory=), whoever we are: a
    user who cannot create a lock file there still locks an existing one (read-only is enough for flock)
    and is refused otherwise (DestinationLock), never sent elsewhere, where the daemon would not see the
    lock. When it does not exist: itself for root; else $XDG_RUNTIME_DIR/mailmirror; else
    /tmp/mailmirror-UID.
    """
    if _SYSTEM_LOCK_DIR.is_dir() or os.geteuid() == 0:
        return _SYSTEM_LOCK_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute():
        return Path(runtime) / "mailmirror"
    return Path(tempfile.gettempdir()) / f"mailmirror-{os.getuid()}"


def _prepare_lock_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o755 if directory == _SYSTEM_LOCK_DIR else 0o700)
        info = directory.lstat()
    except OSError as error:
        raise ConfigError(
            f"lock directory {directory}: cannot use it ({error.strerror or error}); set daemon.lock_dir to a "
            "directory every mailmirror of this machine can write"
        ) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"lock directory {directory} is not a directory; set daemon.lock_dir elsewhere")
    shared_tmp = directory != _SYSTEM_LOCK_DIR and directory.is_relative_to(tempfile.gettempdir())
    if shared_tmp and info.st_uid != os.getuid():
        raise ConfigError(
            f"lock directory {directory} belongs to another user (uid {info.st_uid}); set daemon.lock_dir to a "
            "directory of your own"
        )


class DestinationLock:
    """One writer per destination mailbox, whatever the config file or state database.

    Keyed by the destination's normalised identity (mailboxes.py) in a directory shared by all configs
    (daemon.lock_dir). Passes of one process into the same mailbox wait for each other (in turn, so that
    each plans after the other's copies are there and adopts them by fingerprint); another process
    holding it makes the pass end at once with LockedError (exit 75; the daemon retries later). flock:
    released by the kernel when the holder dies, even by kill -9.
    """

    def __init__(self, directory: Path, identity: MailboxIdentity, account: str, holder: str) -> None:
        self.directory = directory
        self.identity = identity
        self.account = account
        self.holder = holder  # who we are, for the message to the next one: pair and state database
        self.path = directory / f"{identity.key}.lock"
        with _registry_guard:
            self._local = _in_process.setdefault(str(self.path), threading.Lock())
        self._fd: int | None = None

    def acquire(self, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Wait for this process's other passes into the mailbox, then take the machine-wide lock or raise
        LockedError naming the holder. False: a stop was requested while waiting."""
        if not self._local.acquire(blocking=False):
            log.info("%s: waiting for another pass writing into %s (one writer at a time)", self.holder, self.identity)
            while not self._local.acquire(timeout=0.5):
                if stopping():
                    return False
        try:
            self._fd = self._lock_file()
        except BaseException:
            self._local.release()
            raise
        return True

    def _lock_file(self) -> int:
        _prepare_lock_dir(self.directory)
        try:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
                writable = True
            except PermissionError:  # created by another user (root ran `sync`): locking needs no write access
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
                writable = False
        except OSError as error:
            raise ConfigError(
                f"destination lock {self.path}: cannot open it ({error.strerror or error}); {self.directory} is "
                "where every mailmirror of this machine (the daemon too) locks its destination mailboxes, so this "
                "pass does not lock elsewhere: run as the user of the daemon (e.g. sudo -u mailmirror), or set "
                "daemon.lock_dir to a directory every mailmirror of this machine can write (the same in every config)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"destination mailbox {self.identity} (account '{self.account}') is being written by {holder}; "
                "this pass does not start (one writer per destination mailbox; try again later)",
                account=self.account,
            ) from None
        if writable:
            since = datetime.now(UTC).isoformat(timespec="seconds")
            text = f"mailmirror pid {os.getpid()} on {socket.gethostname()} since {since} ({self.holder})\n"
            # only a note for the next one: a full file system must neither fail the pass nor leave the
            # descriptor (and so the lock) open
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, text.encode(), 0)
        return fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._local.release()
