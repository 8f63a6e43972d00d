"""The rows of the state database as the rest of mailmirror sees them: plain frozen dataclasses.

No SQLite here: the planner (engine/planner.py) works on these records without loading the database
layer (state/store.py reads and writes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class FolderState:
    """A synced folder: both UIDVALIDITYs and the source's change markers seen at its last pass."""

    pair: str
    src_folder: str
    dst_folder: str
    src_uidvalidity: int
    dst_uidvalidity: int
    src_uidnext: int | None = None
    src_messages: int | None = None
    src_highestmodseq: int | None = None
    dst_uidnext: int | None = None


@dataclass(frozen=True)
class SyncedMessage:
    """A row of the UID map and journal: ``pending`` before its APPEND is sent, ``done`` once confirmed."""

    src_uid: int
    dst_uid: int | None
    status: str  # 'pending' | 'done'
    fingerprint: str
    size: int
    flags: frozenset[str]
    dst_uid_floor: int | None = None


@dataclass(frozen=True)
class LateWriteWatch:
    """An append of a lost connection, copied again: its late copy is looked for until ``deadline``."""

    id: int
    src_uid: int
    fingerprint: str
    dst_uid_floor: int
    deadline: datetime


@dataclass(frozen=True)
class Failure:
    """A message the destination refused, with the server's reason."""

    src_folder: str
    src_uid: int
    reason: str
    attempts: int


@dataclass(frozen=True)
class VerifyRecord:
    """A `mailmirror verify` result as the state keeps it (counts and one line; never message contents)."""

    clean: bool
    folders: int
    src_messages: int
    dst_messages: int
    differences: int
    extra: int
    skipped: int
    summary: str
    error: str | None
