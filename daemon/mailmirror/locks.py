"""One process at a time per pair: two daemons, or a daemon and a manual `sync`, never work on the same pair.

The lock is an flock(2) on a file per pair beside the state database (``state.db.locks/PAIR.lock``):
the kernel releases it when its holder dies, even by kill -9, so a crash never leaves a stale lock. The
file holds the holder's pid and start time, for the message to whoever finds it taken. flock locks
belong to an open file, so two threads of one process exclude each other too.
"""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from mailmirror.errors import LockedError


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
