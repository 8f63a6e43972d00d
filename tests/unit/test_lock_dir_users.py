"""The machine's lock directory and users other than the daemon's (review h12, finding 4).

A non-root user who cannot create files in /run/mailmirror (the daemon's, mode 0755) must still lock there
(an existing lock file opened read-only is enough for flock), or fail with a clear message (exit 78) —
never lock somewhere else and write the same destination as the daemon at the same time. The system
directory is a stand-in here (locks._SYSTEM_LOCK_DIR), the other user is `nobody` (setpriv).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailmirror.config.mailboxes import mailbox_identity
from mailmirror.state.locks import DestinationLock
from tests.support import require_checkout_readable_by_others

SETPRIV = shutil.which("setpriv")
pytestmark = pytest.mark.skipif(
    SETPRIV is None or os.geteuid() != 0, reason="needs root and setpriv to run as another user"
)

CHILD = """
import sys
from pathlib import Path
from mailmirror.state import locks
from mailmirror.errors import MailmirrorError
from mailmirror.config.mailboxes import mailbox_identity
locks._SYSTEM_LOCK_DIR = Path(sys.argv[1])
directory = locks.default_lock_dir()
print("dir", directory)
lock = locks.DestinationLock(directory, mailbox_identity("mail.example.org", 993, "alice"), "dst", "pair 'manual'")
try:
    lock.acquire()
except MailmirrorError as error:
    print("error", error.exit_code, error)
else:
    print("locked")
"""


@pytest.fixture
def system_dir() -> Iterator[Path]:
    """A root-owned directory mode 0755, like the one RuntimeDirectory= makes (in a traversable place)."""
    parent = Path(tempfile.mkdtemp(prefix="mailmirror-run-"))
    parent.chmod(0o755)
    directory = parent / "mailmirror"
    directory.mkdir(mode=0o755)
    yield directory
    shutil.rmtree(parent)


def _as_nobody(system: Path) -> list[str]:
    assert SETPRIV is not None
    require_checkout_readable_by_others()
    command = [SETPRIV, "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", CHILD, str(system)]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout.splitlines()


def test_another_user_locks_in_the_daemons_directory_and_finds_the_daemons_lock(system_dir: Path) -> None:
    daemon = DestinationLock(system_dir, mailbox_identity("mail.example.org", 993, "alice"), "dst", "pair 'daemon'")
    assert daemon.acquire()  # the daemon (root here) holds the lock, the file exists
    try:
        lines = _as_nobody(system_dir)
    finally:
        daemon.release()
    assert lines[0] == f"dir {system_dir}"
    assert lines[1].startswith("error 75 ") and "pair 'daemon'" in lines[1], lines


def test_another_user_who_cannot_create_the_lock_file_gets_a_clear_error_not_another_directory(
    system_dir: Path,
) -> None:
    lines = _as_nobody(system_dir)
    assert lines[0] == f"dir {system_dir}", lines
    assert lines[1].startswith("error 78 "), lines
    assert str(system_dir) in lines[1] and "daemon.lock_dir" in lines[1], lines
    assert not any(system_dir.iterdir())


def test_once_the_lock_file_exists_another_user_can_take_it(system_dir: Path) -> None:
    daemon = DestinationLock(system_dir, mailbox_identity("mail.example.org", 993, "alice"), "dst", "pair 'daemon'")
    assert daemon.acquire()
    daemon.release()
    assert _as_nobody(system_dir)[1:] == ["locked"]
